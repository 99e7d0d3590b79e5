"""tunery's own API beside the hosted one, under /v1/tunery: what the console shows and does, for
any client (the console has no other way in).

    GET  /v1/tunery/files/{file_id}/check        the data doctor's report on an uploaded file
    GET  /v1/tunery/files/{file_id}/examples/{k} example k rendered through the template, with its
                                                 trained tokens marked
    GET  /v1/tunery/models                       the registry: every model, with its stale flag
    GET  /v1/tunery/models/{ref}                 one model: record, evals, exports, lineage, curve, card
    GET  /v1/tunery/models/{ref}/baseline        what the prompt-only baseline sends: its base's served
                                                 name and the few-shot turns before the question
    POST /v1/tunery/models/{ref}/reeval          re-run its recorded evaluation (a task)
    POST /v1/tunery/models/{ref}/retrain         train its recipe on a served base, evaluate old vs new (a task)
    POST /v1/tunery/compare                      base vs prompt-only vs fine-tune on a held-out file (a task)
    GET  /v1/tunery/tasks[/{task_id}]            tasks (tasks.py), newest first / one with its result

A request names models the catalog serves (a registered fine-tune by name or id, the default, a
configured base) and uploaded files by id, nothing else. Answers carry no server path: file
paths become file names (`public_model`, `strip_paths` on server-made messages).
"""

import functools
import re
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError, ModelNotFound, NotFound, TuneryError, validated
from ..metrics import BUILTIN
from ..registry.db import connect
from . import jobs
from .catalog import REGISTRY_REF, Catalog
from .tasks import Tasks

MAX_CURVE_POINTS = 2000
# Recipe fields that hold server paths: shown by file name only.
PATH_FIELDS = ("data", "val_data", "template", "out", "resume", "retrieval")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Retrain(_Strict):
    base: Annotated[str, Field(min_length=1, max_length=200)]


class Compare(_Strict):
    model: Annotated[str, Field(min_length=1, max_length=200)]  # a registered fine-tune
    file: Annotated[str, Field(pattern=jobs.FILE_ID.pattern)] | None = None  # held-out file; default: its recorded eval set
    metrics: Annotated[list[Literal[tuple(BUILTIN)]], Field(min_length=1, max_length=8)] = ["exact"]
    few_shot: Annotated[int, Field(ge=0, le=16)] = 3
    limit: Annotated[int, Field(ge=1, le=1000)] | None = 100
    max_new_tokens: Annotated[int, Field(ge=1, le=2048)] = 256


def router(catalog: Catalog, tasks: Tasks) -> APIRouter:
    r = APIRouter(prefix="/v1/tunery")

    @r.get("/files/{file_id}/check")
    def check(file_id: str, model: str = "default", mask: Literal["assistant", "last", "all"] = "assistant",
              max_length: Annotated[int, Query(ge=8, le=32768)] = 2048,
              format: Literal["auto", "chat", "completion", "alpaca", "sharegpt", "text", "preference"] = "auto"):
        from ..config import DataConfig
        from ..data.doctor import check_dataset

        row = jobs.get_file_row(file_id)
        cfg = DataConfig(model=catalog.reference(model), mask=mask, max_length=max_length, format=format)
        with _named(row):
            report = check_dataset(row["path"], cfg, tokenizer=_tokenizer(catalog, model))
        report["stats"] |= {"file": row["filename"], "model": model}
        for item in report["errors"] + report["warnings"]:
            item["message"] = strip_paths(item["message"], row)
        return {"object": "tunery.data_check", "file_id": file_id, **report}

    @r.get("/files/{file_id}/examples/{k}")
    def example(file_id: str, k: Annotated[int, Field(ge=1, le=10**9)], model: str = "default",
                mask: Literal["assistant", "last", "all"] = "assistant",
                format: Literal["auto", "chat", "completion", "alpaca", "sharegpt", "text", "preference"] = "auto"):
        from ..config import DataConfig
        from ..data.doctor import render_example

        row = jobs.get_file_row(file_id)
        cfg = DataConfig(model=catalog.reference(model), mask=mask, format=format)
        with _named(row):
            line, pieces = render_example(row["path"], k, cfg, tokenizer=_tokenizer(catalog, model))
        return {"object": "tunery.example", "file_id": file_id, "example": k, "line": line,
                "pieces": [{"text": text, "trained": trained} for text, trained in pieces]}

    @r.get("/models")
    def models():
        from ..registry import store
        from ..workflows import stale

        with connect(create=False) as conn:
            rows = stale.check(conn, store.list_models(conn)) if conn is not None else []
        return {"object": "list", "data": [public_model(row, catalog) for row in reversed(rows)]}

    @r.get("/models/{ref:path}/baseline")
    def baseline(ref: str):
        from ..evaluate.evaluator import few_shot_messages

        row = _row(ref)
        train = (row["data"].get("train") or {}).get("file")
        shots = few_shot_messages(train, 3) if train and Path(train).is_file() else []
        return {"object": "tunery.baseline", "model": row["name"], "base_model": catalog.name_for(row["base_ref"]),
                "few_shot": len(shots) // 2, "messages": shots}

    @r.post("/models/{ref:path}/reeval")
    def reeval(ref: str):
        from ..workflows.lifecycle import reeval as run

        row = _row(ref)
        return tasks.submit("reeval", row["name"], lambda: run(row["id"], builtin_only=True), public=_public_rerun)

    @r.post("/models/{ref:path}/retrain")
    def retrain(ref: str, body: dict):
        from ..home import tunery_home
        from ..workflows.lifecycle import retrain as run

        req = validated(Retrain, **body)
        row = _row(ref)
        try:
            base = catalog.reference(req.base)
        except NotFound as exc:
            raise ConfigError(f"base: {exc}; `GET /v1/models` lists the served bases", "base") from None
        out = tunery_home() / "retrains"
        out.mkdir(parents=True, exist_ok=True)

        def work():
            import tempfile

            folder = tempfile.mkdtemp(prefix="run-", dir=out)  # a fresh folder per retrain, never reused
            return run(row["id"], base, out=str(Path(folder) / "run"), progress=False, builtin_only=True)

        return tasks.submit("retrain", row["name"], work, public=_public_rerun)

    @r.post("/compare")
    def compare(body: dict):
        req = validated(Compare, **body)
        row = _row(req.model)
        if row["status"] != "completed" or row["files"] != "ok":
            raise ConfigError(f"model: {row['name']} is {row['status']} with files {row['files']}: nothing to compare",
                              "model")
        upload = jobs.get_file_row(req.file) if req.file else None
        data = upload["path"] if upload else _recorded_eval_file(row)
        name = upload["filename"] if upload else Path(data).name
        return tasks.submit("compare", row["name"], lambda: _compare(row, data, name, req))

    @r.get("/tasks")
    def list_tasks(model: str | None = None):
        return {"object": "list", "data": tasks.list(model)}

    @r.get("/tasks/{task_id}")
    def get_task(task_id: str):
        return tasks.get(task_id)

    @r.get("/models/{ref:path}")
    def model(ref: str):
        from ..registry import store
        from ..run_folder import RunFolder
        from ..workflows import stale

        _row(ref)
        with connect(create=False) as conn:
            row = store.describe(conn, ref)
            stale.check(conn, [row])
            lin = store.lineage(conn, ref)
        folder = RunFolder(row["run_dir"])
        try:
            curve = [{k: m[k] for k in ("step", "loss", "val_loss") if k in m} for m in folder.read_metrics()]
        except (OSError, ValueError):
            curve = []
        if len(curve) > MAX_CURVE_POINTS:
            every = -(-len(curve) // MAX_CURVE_POINTS)
            curve = curve[::every] + curve[-1:]
        card = folder.card_file.read_text(errors="replace") if folder.card_file.is_file() else None
        node = lambda m: {"id": m["id"], "name": m.get("name"), "derived_from": m.get("derived_from"),  # noqa: E731
                          "status": m.get("status"), "removed": bool(m.get("removed"))}
        return public_model(row, catalog) | {
            "evals": [_public_eval(e) for e in row["evals"]],
            "lineage": {"ancestors": [node(a) for a in lin["ancestors"]], "model": node(lin["model"]),
                        "descendants": [node(d) for d in lin["descendants"]]},
            "curve": curve, "card": strip_paths(card, row) if card else None,
            "live": row.get("live")}

    return r


@functools.lru_cache(maxsize=4)
def _tokenizer_of(path: str, tokenizer_path: str):
    from ..models import load_tokenizer

    return load_tokenizer(tokenizer_path)


def _tokenizer(catalog: Catalog, model: str):
    resolved = catalog.resolve(model)
    return _tokenizer_of(str(resolved.path), str(resolved.tokenizer_path))


def _row(ref: str) -> dict:
    """A registered model by name or id (never a folder: a request cannot probe the filesystem)."""
    from ..registry import store

    if not REGISTRY_REF.match(ref or ""):
        raise ModelNotFound(f"The model '{ref}' does not exist", "model")
    with connect(create=False) as conn:
        row = store.find(conn, ref) if conn is not None else None
    if row is None:
        raise ModelNotFound(f"The model '{ref}' does not exist", "model")
    return row


def _recorded_eval_file(row: dict) -> Path:
    from ..workflows.lifecycle import plan_eval

    with connect() as conn:
        return plan_eval(conn, row, metrics=["exact"], builtin_only=True).data  # the file only: compare's own metrics


def _compare(row: dict, data, name: str, req: Compare) -> dict:
    from ..evaluate.compare import compare
    from ..evaluate.report import render_html
    from ..run_folder import RunFolder

    folder = RunFolder(row["run_dir"])
    result = compare(row["base_ref"], row["name"], data, metrics=list(req.metrics), few_shot=req.few_shot,
                     limit=req.limit, max_new_tokens=req.max_new_tokens)
    result |= {"data": name, "base": row["base_name"]}  # names, not server paths
    return result | {"report_html": render_html(result, folder.read_metrics())}


class _named:
    """Errors about an uploaded file name it by its upload name, not its server path."""

    def __init__(self, row: dict):
        self.row = row

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, TuneryError):
            exc.args = (strip_paths(str(exc), self.row),)
        return False


def public_model(row: dict, catalog: Catalog) -> dict:
    """A registry row for a client: names, status, recipe and metrics; file names, never paths."""
    config = {k: (Path(v).name if k in PATH_FIELDS and isinstance(v, str) else v)
              for k, v in (row.get("config") or {}).items()}
    config["model"] = row["base_name"]
    data = {split: {k: (Path(v).name if k == "file" and isinstance(v, str) else v) for k, v in rec.items()}
            for split, rec in (row.get("data") or {}).items() if isinstance(rec, dict)}
    return {"object": "tunery.model", "id": row["id"], "name": row["name"], "short_id": row["short_id"],
            "status": row["status"], "method": row["method"], "suffix": row["suffix"], "base": row["base_name"],
            "base_model": catalog.name_for(row["base_ref"]), "derived_from": row["derived_from"],
            "files": row["files"], "stale": row.get("stale"), "stale_reason": strip_paths(row.get("stale_reason"), row),
            "metrics": row.get("metrics"), "config": config, "data": data, "versions": row.get("versions"),
            "error": strip_paths(row.get("error"), row), "created": row["created"], "finished": row["finished"],
            "exports": [{"format": e["format"], "quant": e.get("quant"), "created": e["created"],
                         "verified": e.get("verification") is not None} for e in row.get("exports") or []],
            "servable": row["status"] == "completed" and row["files"] == "ok"}


def _public_eval(e: dict) -> dict:
    return {"kind": e["kind"], "data_file": Path(e["data_file"]).name, "examples": e["examples"],
            "metrics": e["params"].get("metrics"), "results": e["results"], "on_other_base": e["base_ref"] is not None,
            "created": e["created"]}


_PATHISH = re.compile(r"(?<![\w.])(/[^\s'\"():,;]+)")


def strip_paths(text: str | None, row: dict | None = None) -> str | None:
    """Absolute paths in a server-made message (an error, a note) shortened to their last part;
    an upload's path to the name it was uploaded as. Not for user content (a path in a prompt
    stays as written)."""
    if not text:
        return text
    if row is not None and row.get("path"):
        text = text.replace(row["path"], row["filename"])
    return _PATHISH.sub(lambda m: Path(m.group(1)).name or m.group(1), text)


def _public_rerun(result: dict) -> dict:
    """A reeval/retrain result (workflows.lifecycle) for a client: its labels rebuilt without run folders."""
    ev = result["eval"]
    out = {k: result[k] for k in ("kind", "old", "rows", "max_regression", "regressions") if k in result}
    out["notes"] = [strip_paths(n) for n in result.get("notes") or []]
    out["eval"] = {"data": Path(ev["data"]).name, "source": strip_paths(ev["source"]), "examples": ev["examples"],
                   "metrics": ev["metrics"]}
    if result["kind"] == "retrain":
        out |= {"new": result["new"], "old_label": result["old"], "new_label": result["new"]}
    else:
        out |= {"old_label": strip_paths(result["old_label"]), "new_label": strip_paths(result["new_label"])}
    return out
