"""Files and fine-tuning jobs as the hosted API shapes them: checking requests, the objects
returned, and which state allows which action. Their rows and SQL are registry/jobs.py's.

The web process only writes requests (a new job, a control word: pause/cancel/resume); the worker
process (worker.py) validates files, trains, and writes progress and events. Both go through short
SQLite transactions, so neither can corrupt the other. Errors are TuneryErrors (NotFound,
ConfigError with the request parameter as its field, StateError, TooLarge); serve/errors.py
turns them into HTTP answers.
"""

import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..config import PREFERENCE_OBJECTIVES, TrainConfig, auto_lr
from ..errors import ConfigError, NotFound, StateError, TooLarge, validated
from ..metrics import BUILTIN
from ..home import tunery_home
from ..registry import jobs as rows
from ..registry.db import connect, transaction
from ..run_folder import RunFolder

FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")
JOB_ID = re.compile(r"^ftjob-[0-9a-f]{24}$")
UPLOAD_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def files_dir() -> Path:
    d = tunery_home() / "files"
    d.mkdir(parents=True, exist_ok=True)
    return d


# -- files ---------------------------------------------------------------------------------------

def save_file(filename: str, purpose: str, source, max_bytes: int) -> dict:
    """Stream an upload to disk (refusing past max_bytes), then record it."""
    name = re.sub(r"[\x00-\x1f\x7f/\\]", "_", Path((filename or "upload").replace("\x00", "_")).name)[:255] or "upload"
    suffix = Path(name).suffix.lower()
    if purpose == "fine-tune" and suffix not in UPLOAD_SUFFIXES:
        suffix = ".jsonl"  # the hosted API's format; the data doctor reports a file that isn't
    elif not re.fullmatch(r"\.[a-z0-9]{1,10}", suffix):
        suffix = ""  # the client's name is kept in the record; on disk, only a short plain suffix
    file_id = "file-" + secrets.token_hex(12)
    dest = files_dir() / f"{file_id}{suffix}"
    tmp = dest.with_name(f".{dest.name}.part")
    size = 0
    with open(tmp, "wb") as out:
        while chunk := source.read(1 << 20):
            size += len(chunk)
            if size > max_bytes:
                out.close()
                tmp.unlink(missing_ok=True)
                raise TooLarge(f"file is larger than the server's limit of {max_bytes} bytes", "file")
            out.write(chunk)
    tmp.rename(dest)
    row = {"id": file_id, "filename": name, "purpose": purpose, "bytes": size,
           "path": str(dest), "created_at": int(time.time())}
    with connect() as conn, transaction(conn):
        rows.insert_file(conn, row)
    return file_object(row)


def file_object(row) -> dict:
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
            "filename": row["filename"], "purpose": row["purpose"], "status": "processed", "status_details": None}


def get_file_row(file_id: str) -> dict:
    if not FILE_ID.match(file_id or ""):
        raise NotFound(f"No such File object: {file_id}")
    with connect() as conn:
        row = rows.get_file(conn, file_id)
    if row is None:
        raise NotFound(f"No such File object: {file_id}")
    return row


def list_files(purpose: str | None = None) -> list[dict]:
    with connect() as conn:
        return [file_object(r) for r in rows.list_files(conn, purpose)]


def delete_file(file_id: str) -> dict:
    row = get_file_row(file_id)
    with connect() as conn, transaction(conn):
        rows.delete_file(conn, file_id)
    Path(row["path"]).unlink(missing_ok=True)
    return {"id": file_id, "object": "file", "deleted": True}


# -- jobs ----------------------------------------------------------------------------------------

class _Strict(BaseModel):
    # No coercion (`true` is not 1, "3" is not 3) and no unknown keys: a typo is a 400, not a default.
    model_config = ConfigDict(extra="forbid", strict=True)


PositiveInt = Annotated[int, Field(ge=1)]


class Hyperparameters(_Strict):
    n_epochs: Literal["auto"] | Annotated[int, Field(ge=1, le=100)] = "auto"
    batch_size: Literal["auto"] | Annotated[int, Field(ge=1, le=256)] = "auto"
    learning_rate_multiplier: Literal["auto"] | Annotated[float, Field(gt=0, le=1000)] = "auto"


class DpoHyperparameters(Hyperparameters):
    beta: Literal["auto"] | Annotated[float, Field(gt=0, le=10)] = "auto"


class TuneryOptions(_Strict):
    """tunery's own recipe fields a client may set, within limits a shared server can carry. Not
    here, so refused: the data, output and resume paths (the server picks them), the model (the
    request's own `model`), lineage, and `module:function` metrics (code: a local feature only)."""

    method: Literal["full", "lora", "dora", "qlora"] | None = None
    objective: Literal["sft", "dpo", "simpo"] | None = None  # method.type "dpo" sets dpo; simpo only here
    beta: Annotated[float, Field(gt=0, le=10)] | None = None
    simpo_gamma: Annotated[float, Field(ge=0, le=10)] | None = None
    max_steps: Annotated[int, Field(ge=1, le=100_000)] | None = None
    lr: Annotated[float, Field(gt=0, lt=1)] | None = None
    grad_accum: Annotated[int, Field(ge=1, le=64)] | None = None
    max_length: Annotated[int, Field(ge=8, le=32_768)] | None = None
    val_split: Annotated[float, Field(ge=0, lt=1)] | None = None
    val_max: Annotated[int, Field(ge=0, le=100_000)] | None = None
    lora_r: Annotated[int, Field(ge=1, le=256)] | None = None
    lora_alpha: Annotated[int, Field(ge=1, le=1024)] | None = None
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] | None = None
    target_modules: Literal["all-linear"] | Annotated[list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.]{1,64}$")]],
                                                      Field(min_length=1, max_length=32)] | None = None
    schedule: Literal["cosine", "linear", "constant"] | None = None
    warmup: Annotated[float, Field(ge=0, lt=1)] | None = None
    weight_decay: Annotated[float, Field(ge=0, le=1)] | None = None
    max_grad_norm: Annotated[float, Field(gt=0, le=100)] | None = None
    eval_every: PositiveInt | None = None
    save_every: PositiveInt | None = None
    keep_checkpoints: Annotated[int, Field(ge=1, le=10)] | None = None
    early_stopping: Annotated[int, Field(ge=1, le=100)] | None = None
    select: Literal["best", "last"] | None = None
    best_by: Literal["val_loss", "metric"] | None = None
    eval_generate_every: PositiveInt | None = None
    eval_metric: Literal[tuple(BUILTIN)] | None = None  # built-in names only: never code
    eval_samples: Annotated[int, Field(ge=1, le=1000)] | None = None
    eval_max_new_tokens: Annotated[int, Field(ge=1, le=4096)] | None = None
    mask: Literal["assistant", "last", "all"] | None = None
    format: Literal["auto", "chat", "completion", "alpaca", "sharegpt", "text", "preference"] | None = None
    overlong: Literal["drop", "truncate", "error"] | None = None
    precision: Literal["auto", "fp32", "bf16"] | None = None
    gradient_checkpointing: bool | None = None
    group_by_length: bool | None = None
    share_prefix: bool | Literal["auto"] | None = None
    template: Annotated[str, Field(pattern=FILE_ID.pattern)] | None = None  # an uploaded template file's id
    # Processes training the job together on the server's machine (torch.distributed), at most one per core:
    # extra_body={"tunery": {"nproc": 2}}
    nproc: Annotated[int, Field(ge=1, le=os.cpu_count() or 1)] | None = None
    strategy: Literal["auto", "ddp", "fsdp"] | None = None


class Supervised(_Strict):
    hyperparameters: Hyperparameters | None = None


class Dpo(_Strict):
    hyperparameters: DpoHyperparameters | None = None


class Method(_Strict):
    """The hosted API's `method`: supervised, or dpo on preference pairs (the reinforcement method is not here)."""

    type: Literal["supervised", "dpo"] = "supervised"
    supervised: Supervised | None = None
    dpo: Dpo | None = None
    tunery: TuneryOptions | None = None


class JobRequest(_Strict):
    """POST /v1/fine_tuning/jobs: the hosted API's fields, plus `tunery` (also under `method`)."""

    model: Annotated[str, Field(min_length=1, max_length=200)]
    training_file: Annotated[str, Field(min_length=1, max_length=64)]
    validation_file: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    hyperparameters: Hyperparameters | None = None
    suffix: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,40}$")] | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    method: Method | None = None
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = None
    integrations: list | None = None  # accepted for client compatibility; none is run
    tunery: TuneryOptions | None = None

    def tuned(self) -> dict:
        """The recipe fields set through `tunery` (or `method.tunery`)."""
        method = self.method.tunery if self.method and self.method.tunery else None
        return {**(self.tunery.model_dump(exclude_none=True) if self.tunery else {}),
                **(method.model_dump(exclude_none=True) if method else {})}

    def hyper(self) -> Hyperparameters:
        """The hyperparameters of the request's method (dpo's carry beta), else the top-level ones."""
        block = getattr(self.method, self.method.type, None) if self.method else None
        inner = block.hyperparameters if block else None
        return inner or self.hyperparameters or (DpoHyperparameters() if self.dpo else Hyperparameters())

    @property
    def dpo(self) -> bool:
        return bool(self.method and self.method.type == "dpo")


def create_job(body: dict, catalog) -> dict:
    """Check the request (its shape, model, files, recipe) and queue it for validation."""
    req = validated(JobRequest, **body)
    try:  # only names the API may use: the default, configured bases, fine-tunes
        catalog.resolve(req.model)
    except NotFound as exc:
        raise ConfigError(f"model: {exc}; `GET /v1/models` lists those that can be fine-tuned", "model") from None
    for param in ("training_file", "validation_file"):
        if getattr(req, param) is not None:
            try:
                get_file_row(getattr(req, param))
            except NotFound:
                raise ConfigError(f"{param}: no such file {getattr(req, param)!r}", param) from None
    stored = req.model_dump(exclude_none=True) | {"base_ref": catalog.reference(req.model)}
    config_for(stored, job_id="ftjob-" + "0" * 24)  # every hyperparameter checked now, not in the worker
    job_id = "ftjob-" + secrets.token_hex(12)
    with connect() as conn, transaction(conn):
        rows.insert_job(conn, job_id, req.model, req.training_file, req.validation_file, stored)
        rows.add_event(conn, job_id, "info", f"Validating training file: {req.training_file}")
    return get_job(job_id)


def _stored(request: dict) -> JobRequest:
    """A job's stored request (create_job adds `base_ref`, the catalog's reference for its model)."""
    return JobRequest.model_validate({k: v for k, v in request.items() if k != "base_ref"})


def _hyperparameters(request: dict) -> dict:
    try:
        return _stored(request).hyper().model_dump()
    except ValueError:  # a job stored by an older tunery, before requests were this strict
        return dict(request.get("hyperparameters") or {})


def config_for(request: dict, job_id: str) -> TrainConfig:
    """The TrainConfig a job runs, from its stored (validated) request. Hosted-API hyperparameters
    map onto it; tunery's own fields come under `tunery` or `method.tunery`; an uploaded template
    is named by its file id. The model is the reference the server's catalog resolved its name to."""
    req = _stored(request)
    hp, extra = req.hyper(), req.tuned()
    values = {"model": request.get("base_ref", req.model), "data": "(uploaded)", "method": "lora",
              "seed": 42 if req.seed is None else req.seed, **({"objective": "dpo"} if req.dpo else {}), **extra}
    if req.dpo and values["objective"] == "sft":
        raise ConfigError("tunery.objective: method.type dpo trains on preference pairs; sft contradicts it",
                          "tunery.objective")
    if getattr(hp, "beta", "auto") != "auto":
        values["beta"] = hp.beta
    if req.suffix:
        values["suffix"] = req.suffix
    if "template" in extra:
        try:
            values["template"] = get_file_row(extra["template"])["path"]
        except NotFound:
            raise ConfigError(f"tunery.template: no such file {extra['template']!r}", "tunery.template") from None
    if hp.n_epochs != "auto":
        values["epochs"] = hp.n_epochs
    if hp.batch_size != "auto":
        values["batch_size"] = hp.batch_size
    if hp.learning_rate_multiplier != "auto":
        values["lr"] = auto_lr(values["method"], values.get("objective", "sft")) * hp.learning_rate_multiplier
    values["out"] = str(tunery_home() / "jobs" / job_id / "run")
    try:
        return validated(TrainConfig, **values)
    except ConfigError as err:
        err.field = "hyperparameters" if err.field in ("epochs", "batch_size", "lr") else err.field
        raise


def get_job(job_id: str, conn=None) -> dict:
    if not JOB_ID.match(job_id or ""):
        raise NotFound(f"No such fine-tuning job: {job_id}")
    if conn is None:
        with connect() as c:
            return get_job(job_id, c)
    row = rows.get_job(conn, job_id)
    if row is None:
        raise NotFound(f"No such fine-tuning job: {job_id}")
    return job_object(row)


def job_object(row: dict) -> dict:
    request = json.loads(row["request"])
    hp = _hyperparameters(request)
    config = _run_config(row)
    lr = config.get("lr")
    resolved = {"n_epochs": config.get("epochs", hp.get("n_epochs", "auto")),
                "batch_size": config.get("batch_size", hp.get("batch_size", "auto")),
                "learning_rate_multiplier": round(lr / auto_lr(config.get("method", "lora"), config.get("objective", "sft")), 6)
                if isinstance(lr, (int, float)) else hp.get("learning_rate_multiplier", "auto")}
    # Before the run starts its config is unknown here: the request's method says.
    objective = config.get("objective") or ("dpo" if (request.get("method") or {}).get("type") == "dpo" else "sft")
    preference = objective in PREFERENCE_OBJECTIVES
    if preference:
        resolved["beta"] = config.get("beta") or hp.get("beta", "auto")
    kind = "dpo" if preference else "supervised"
    return {
        "object": "fine_tuning.job", "id": row["id"], "model": row["model"], "created_at": row["created_at"],
        "finished_at": row["finished_at"], "fine_tuned_model": row["fine_tuned_model"],
        "organization_id": "org-tunery", "result_files": [], "status": row["status"],
        "training_file": row["training_file"], "validation_file": row["validation_file"],
        "hyperparameters": resolved, "trained_tokens": row["trained_tokens"],
        "error": json.loads(row["error"]) if row["error"] else None, "seed": request.get("seed") or 42,
        "estimated_finish": row["estimated_finish"], "metadata": request.get("metadata"),
        "user_provided_suffix": request.get("suffix"), "integrations": [],
        "method": {"type": kind, kind: {"hyperparameters": resolved}},
    }


def _run_config(row: dict) -> dict:
    """The recipe a job runs: once training has started, the run's config.yaml, whose auto values
    TrainConfig.resolve has replaced by what the run uses; before that, the submitted one."""
    if row.get("run_dir"):
        folder = RunFolder(row["run_dir"])
        if folder.config_file.is_file():
            return folder.read_config()
    return json.loads(row["config"]) if row.get("config") else {}


def list_jobs(after: str | None, limit: int) -> dict:
    with connect() as conn:
        jobs = rows.list_jobs(conn)
    if after:
        ids = [j["id"] for j in jobs]
        if after not in ids:
            raise NotFound(f"No such fine-tuning job: {after}")
        jobs = jobs[ids.index(after) + 1:]
    page = jobs[:limit]
    return {"object": "list", "data": [job_object(j) for j in page], "has_more": len(jobs) > limit}


def control(job_id: str, action: str) -> dict:
    """cancel | pause | resume, as the hosted API defines which states allow which. A running job
    is asked (the worker acts between two steps); any other changes here, through the one guarded
    status transition, inside one write transaction."""
    with connect() as conn, transaction(conn):
        status = get_job(job_id, conn)["status"]
        if action == "cancel":
            if status in rows.TERMINAL:
                raise StateError(f"Job {job_id} has already {status}; it cannot be cancelled")
            if not rows.set_control(conn, job_id, "cancel"):  # nothing is running it: cancelled now
                rows.transition(conn, job_id, "cancelled", finished_at=int(time.time()), control=None)
                rows.add_event(conn, job_id, "info", "Job cancelled")
        elif action == "pause":
            if status not in ("running", "queued"):
                raise StateError(f"Job {job_id} is {status}; only a running or queued job can be paused")
            if not rows.set_control(conn, job_id, "pause"):
                rows.transition(conn, job_id, "paused", control=None)
                rows.add_event(conn, job_id, "info", "Job paused")
        elif action == "resume":
            if not rows.transition(conn, job_id, "queued", only_from=("paused",), control=None, attempts=0):
                raise StateError(f"Job {job_id} is {status}; only a paused job can be resumed")
            rows.add_event(conn, job_id, "info", "Job resumed")
        return get_job(job_id, conn)


def list_events(job_id: str, after: str | None, limit: int) -> dict:
    get_job(job_id)
    tail = after.split("-")[-1] if after and after.startswith("ftevent-") else ""
    after_id = int(tail) if tail.isdigit() and len(tail) <= 18 else None  # within SQLite's 64-bit integers
    with connect() as conn:
        events = rows.list_events(conn, job_id, after_id, limit + 1)
    data = [{"object": "fine_tuning.job.event", "id": f"ftevent-{e['id']}", "created_at": e["created_at"],
             "level": e["level"], "message": e["message"], "type": e["type"], "data": e["data"]}
            for e in events[:limit]]
    return {"object": "list", "data": data, "has_more": len(events) > limit}


def list_checkpoints(job_id: str, after: str | None, limit: int) -> dict:
    """The run's complete checkpoints, newest first, with the metrics logged at their step."""
    job = get_job(job_id)
    with connect() as conn:
        run_dir = rows.get_job(conn, job_id)["run_dir"]
    if not run_dir:
        return {"object": "list", "data": [], "has_more": False}
    folder = RunFolder(run_dir)
    logged = {r["step"]: r for r in folder.read_metrics()}
    data = []
    for step, ck in reversed(folder.checkpoints()):
        m = logged.get(step, {})
        data.append({"object": "fine_tuning.job.checkpoint", "id": f"ftckpt-{job_id[6:]}-{step}",
                     "created_at": int(ck.stat().st_mtime), "fine_tuning_job_id": job_id, "step_number": step,
                     "fine_tuned_model_checkpoint": f"{job['fine_tuned_model'] or job_id}:ckpt-step-{step}",
                     "metrics": {"step": step, "train_loss": m.get("loss"), "valid_loss": m.get("val_loss"),
                                 "full_valid_loss": m.get("val_loss")}})
    if after:
        ids = [d["id"] for d in data]
        data = data[ids.index(after) + 1:] if after in ids else data
    return {"object": "list", "data": data[:limit], "has_more": len(data) > limit}


def remove_job_files(job_id: str) -> None:
    shutil.rmtree(tunery_home() / "jobs" / job_id, ignore_errors=True)
