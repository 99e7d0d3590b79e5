"""Files and fine-tuning jobs as the hosted API shapes them: checking requests, the objects
returned, and which state allows which action. Their rows and SQL are registry/jobs.py's.

The web process only writes requests (a new job, a control word: pause/cancel/resume); the worker
process (worker.py) validates files, trains, and writes progress and events. Both go through short
SQLite transactions, so neither can corrupt the other. Errors are TuneryErrors (NotFound,
ConfigError with the request parameter as its field, StateError, TooLarge); serve/errors.py
turns them into HTTP answers.
"""

import json
import re
import secrets
import shutil
import time
from pathlib import Path

from ..config import AUTO_LR, TrainConfig
from ..errors import ConfigError, NotFound, StateError, TooLarge, validated
from ..home import tunery_home
from ..registry import jobs as rows
from ..registry.db import connect, transaction
from ..run_folder import RunFolder

FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")
JOB_ID = re.compile(r"^ftjob-[0-9a-f]{24}$")
TERMINAL = ("succeeded", "failed", "cancelled")
UPLOAD_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
SERVER_ONLY = {"data", "val_data", "template", "out", "resume"}  # recipe fields naming server paths


def files_dir() -> Path:
    d = tunery_home() / "files"
    d.mkdir(parents=True, exist_ok=True)
    return d


# -- files ---------------------------------------------------------------------------------------

def save_file(filename: str, purpose: str, source, max_bytes: int) -> dict:
    """Stream an upload to disk (refusing past max_bytes), then record it."""
    suffix = Path(filename or "").suffix.lower()
    if purpose == "fine-tune" and suffix not in UPLOAD_SUFFIXES:
        suffix = ".jsonl"  # the hosted API's format; the data doctor reports a file that isn't
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
    row = {"id": file_id, "filename": Path(filename or "upload").name, "purpose": purpose, "bytes": size,
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

def create_job(body: dict) -> dict:
    """Check the request (models, files, hyperparameters) and queue it for validation."""
    from ..models import resolve_model

    model = body.get("model")
    if not model:
        raise ConfigError("model is required", "model")
    try:
        resolve_model(model)
    except Exception as exc:
        raise ConfigError(f"model {model!r} cannot be fine-tuned here: {exc}", "model") from None
    for param in ("training_file", "validation_file"):
        if body.get(param) is not None:
            try:
                get_file_row(body[param])
            except NotFound:
                raise ConfigError(f"{param}: no such file {body[param]!r}", param) from None
    if not body.get("training_file"):
        raise ConfigError("training_file is required", "training_file")
    config_for(body, job_id="ftjob-" + "0" * 24)  # every hyperparameter checked now, not in the worker
    job_id = "ftjob-" + secrets.token_hex(12)
    with connect() as conn, transaction(conn):
        rows.insert_job(conn, job_id, model, body["training_file"], body.get("validation_file"), body)
        rows.add_event(conn, job_id, "info", f"Validating training file: {body['training_file']}")
    return get_job(job_id)


def _hyperparameters(body: dict) -> dict:
    method = body.get("method") or {}
    inner = (method.get(method.get("type") or "supervised") or {}).get("hyperparameters") if isinstance(method, dict) else None
    return {**(body.get("hyperparameters") or {}), **(inner or {})}


def config_for(body: dict, job_id: str) -> TrainConfig:
    """The TrainConfig a job runs. Hosted-API hyperparameters map onto it; tunery's own fields
    (LoRA rank, method, max_steps, ...) come under `method.tunery` or top-level `tunery`."""
    hp = _hyperparameters(body)
    extra = {**(body.get("tunery") or {}), **((body.get("method") or {}).get("tunery") or {})}
    values = {"model": body["model"], "data": "(uploaded)", "method": "lora", "seed": body.get("seed") or 42}
    if body.get("suffix"):
        values["suffix"] = body["suffix"]
    # The extension may tune the recipe, never point it at server paths or code: files come as
    # uploaded ids, metrics by built-in name (full hardening of requests is issue [9]).
    for key in sorted(extra):
        if key in SERVER_ONLY or (key == "eval_metric" and ":" in str(extra[key])):
            raise ConfigError(f"tunery.{key} cannot be set through the API", f"tunery.{key}")
    values.update(extra)
    for key, field in (("n_epochs", "epochs"), ("batch_size", "batch_size")):
        if hp.get(key) not in (None, "auto"):
            values[field] = hp[key]
    mult = hp.get("learning_rate_multiplier")
    if mult not in (None, "auto"):
        try:
            mult = float(mult)
        except (TypeError, ValueError):
            raise ConfigError("learning_rate_multiplier must be a number or 'auto'", "hyperparameters.learning_rate_multiplier") from None
        values["lr"] = AUTO_LR[values.get("method", "lora")] * mult
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
                "learning_rate_multiplier": round(lr / AUTO_LR[config.get("method", "lora")], 6)
                if isinstance(lr, (int, float)) else hp.get("learning_rate_multiplier", "auto")}
    return {
        "object": "fine_tuning.job", "id": row["id"], "model": row["model"], "created_at": row["created_at"],
        "finished_at": row["finished_at"], "fine_tuned_model": row["fine_tuned_model"],
        "organization_id": "org-tunery", "result_files": [], "status": row["status"],
        "training_file": row["training_file"], "validation_file": row["validation_file"],
        "hyperparameters": resolved, "trained_tokens": row["trained_tokens"],
        "error": json.loads(row["error"]) if row["error"] else None, "seed": request.get("seed") or 42,
        "estimated_finish": row["estimated_finish"], "metadata": request.get("metadata"),
        "user_provided_suffix": request.get("suffix"), "integrations": [],
        "method": {"type": "supervised", "supervised": {"hyperparameters": resolved}},
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
    """cancel | pause | resume, as the hosted API defines which states allow which."""
    with connect() as conn, transaction(conn):
        job = get_job(job_id, conn)
        status = job["status"]
        if action == "cancel":
            if status in TERMINAL:
                raise StateError(f"Job {job_id} has already {status}; it cannot be cancelled")
            if status == "running":
                rows.update_job(conn, job_id, control="cancel")
            else:  # nothing is running it: cancelled right away
                rows.update_job(conn, job_id, status="cancelled", finished_at=int(time.time()), control=None)
                rows.add_event(conn, job_id, "info", "Job cancelled")
        elif action == "pause":
            if status not in ("running", "queued", "validating_files"):
                raise StateError(f"Job {job_id} is {status}; only a running or queued job can be paused")
            if status == "running":
                rows.update_job(conn, job_id, control="pause")
            else:
                rows.update_job(conn, job_id, status="paused", control=None)
                rows.add_event(conn, job_id, "info", "Job paused")
        elif action == "resume":
            if status != "paused":
                raise StateError(f"Job {job_id} is {status}; only a paused job can be resumed")
            rows.update_job(conn, job_id, status="queued", control=None)
            rows.add_event(conn, job_id, "info", "Job resumed")
        return get_job(job_id, conn)


def list_events(job_id: str, after: str | None, limit: int) -> dict:
    get_job(job_id)
    after_id = int(after.split("-")[-1]) if after and after.startswith("ftevent-") and after.split("-")[-1].isdigit() else None
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
