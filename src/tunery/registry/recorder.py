"""The registry's touch points for a training run (started, finished, and through `tracking`
failed or interrupted) and for `tunery eval` / `compare` (a model's recorded results). Kept here
so the loop itself stays about training.

Invariant: when a recorded run raises, its registry row and its run.json both say so, with the
same status and error; neither is left claiming `running`."""

import re
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from ..files import now
from ..run_folder import RunFolder, RunInfo
from . import store
from .db import connect

_current: ContextVar[dict | None] = ContextVar("tunery_registry_run", default=None)


@contextmanager
def tracking(interrupted: tuple[type[BaseException], ...] = (KeyboardInterrupt,)):
    """Around one training run: if it raises after being recorded, its row and its run.json say so:
    `interrupted` for the exception types given (a user's Ctrl-C, a pause; an exception may name its
    own status, as a cancel's `cancelled` does), `failed` for any other."""
    holder: dict = {}
    token = _current.set(holder)
    try:
        yield
    except BaseException as exc:
        if holder.get("id"):
            status = getattr(exc, "status", "interrupted") if isinstance(exc, interrupted) else "failed"
            error = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
            _mark_failed(holder["id"], status, error)
            _mark_folder(RunFolder(holder["dir"]), holder["id"], status, error)
        raise
    finally:
        _current.reset(token)


def _mark_failed(model_id: str, status: str, error: str) -> None:
    try:
        with connect() as conn:
            store.record_failure(conn, model_id, status, error, now())
    except Exception:  # noqa: BLE001 - the training error is the one the user must see
        pass


def _mark_folder(folder: RunFolder, model_id: str, status: str, error: str) -> None:
    """run.json too, if it is still this run's and still says running."""
    try:
        info = folder.read_info()
        if info.id == model_id and info.status == "running":
            folder.write_info(info.model_copy(update={"status": status, "finished": now(), "error": error[:2000]}))
    except Exception:  # noqa: BLE001 - as above
        pass


def started(run_dir: Path, resolved: dict, info: RunInfo, base) -> tuple[str, str]:
    """Record the run as it starts; returns its registry (id, name) for run.json."""
    with connect() as conn:
        model_id, name = store.record_start(conn, run_dir, resolved, info, base)
    holder = _current.get()
    if holder is not None:
        holder["id"], holder["dir"] = model_id, run_dir
    return model_id, name


def finished(info: RunInfo) -> None:
    with connect() as conn:
        store.record_finish(conn, info)
    holder = _current.get()
    if holder is not None:
        holder.pop("id", None)  # an error after this point does not un-finish the run


def registered_id(model_ref: str) -> str | None:
    """The registry id behind a model reference (a name, id or run folder), or None: base models and
    unregistered folders are simply not recorded. Called before evaluating, so a broken registry
    is reported before any compute."""
    ref = str(model_ref).strip()
    path = Path(ref).expanduser()
    is_run = path.is_dir() and RunFolder(path).is_run()
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


def record_export(model_id: str | None, record: dict) -> None:
    if model_id is None:
        return
    with connect() as conn:
        store.record_export(conn, model_id, record)
