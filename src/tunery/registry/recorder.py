"""The training loop's three touch points with the registry: started, finished, and (through
`tracking`) failed or interrupted. Kept here so the loop itself stays about training."""

import re
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from . import store
from .db import connect

_current: ContextVar[dict | None] = ContextVar("tunery_registry_run", default=None)


@contextmanager
def tracking():
    """Around one training run: if it raises after being recorded, its row says so."""
    holder: dict = {}
    token = _current.set(holder)
    try:
        yield
    except BaseException as exc:
        if holder.get("id"):
            stopped = isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "TrainingStopped"
            status = "interrupted" if stopped else "failed"
            _mark_failed(holder["id"], status, f"{type(exc).__name__}: {exc}".strip().splitlines()[0])
        raise
    finally:
        _current.reset(token)


def _mark_failed(model_id: str, status: str, error: str) -> None:
    from ..training.run_dir import now

    try:
        with connect() as conn:
            store.record_failure(conn, model_id, status, error, now())
    except Exception:  # noqa: BLE001 - the training error is the one the user must see
        pass


def started(run_dir: Path, resolved: dict, info: dict, base) -> dict:
    """Record the run as it starts; returns {"id", "name"} for run.json."""
    with connect() as conn:
        rec = store.record_start(conn, run_dir, resolved, info, base)
    holder = _current.get()
    if holder is not None:
        holder["id"] = rec["id"]
    return rec


def finished(info: dict) -> None:
    with connect() as conn:
        store.record_finish(conn, info["id"], info)
    holder = _current.get()
    if holder is not None:
        holder.pop("id", None)  # an error after this point does not un-finish the run


def registered_id(model_ref: str) -> str | None:
    """The registry id behind a model reference (a name, id or run folder), or None: base models and
    unregistered folders are simply not recorded. Called before evaluating, so a broken registry
    is reported before any compute."""
    ref = str(model_ref).strip()
    path = Path(ref).expanduser()
    is_run = path.is_dir() and (path / "run.json").is_file()
    if not (ref.startswith("ft:") or is_run or (re.fullmatch(r"[0-9a-f]{8,32}", ref) and not path.exists())):
        return None  # a base model: not recorded
    with connect(create=False) as conn:
        row = store.find(conn, ref)
    return row["id"] if row else None


def record_eval(model_id: str | None, kind: str, data_file, result: dict, params: dict,
                base_ref: str | None = None) -> None:
    if model_id is None:
        return
    with connect() as conn:
        store.record_eval(conn, model_id, kind, str(data_file), len(result["examples"]), params,
                          result["metrics"], base_ref)
