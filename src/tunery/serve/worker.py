"""The jobs worker: a separate process that validates uploaded files and runs fine-tuning jobs,
one at a time, with all state in the registry database.

The server starts it and it dies with the server (PR_SET_PDEATHSIG). A job left `running` by a
worker that no longer exists (the server was killed) is resumed from its last checkpoint.

    python -m tunery.serve.worker      # normally started by `tunery serve`
"""

import ctypes
import json
import os
import signal
import sys
import time
import traceback
from ..errors import TuneryError
from ..registry import jobs as rows
from ..registry.db import connect, transaction
from ..registry.store import pid_alive
from ..run_folder import RunFolder
from . import jobs

POLL_S = 0.3


def main() -> None:
    parent = os.getppid()
    _die_with_parent()
    while True:
        if os.getppid() != parent:
            os._exit(0)
        job = claim_next()
        if job is None:
            time.sleep(POLL_S)
            continue
        if job["status"] == "validating_files":
            validate(job)
        else:
            run(job, parent)


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the getppid() checks still stop it between steps


def claim_next() -> dict | None:
    """Take the next job: an orphaned running one first (resume), then files to validate, then
    the oldest queued job."""
    me = os.getpid()
    with connect() as conn, transaction(conn):
        for row in rows.claimable_jobs(conn):
            if row["worker_pid"] == me or pid_alive(row["worker_pid"]):
                continue
            rows.update_job(conn, row["id"], worker_pid=me)
            row["worker_pid"] = me
            return row
    return None


def _update(job_id: str, event: tuple | None = None, **fields) -> None:
    with connect() as conn, transaction(conn):
        rows.update_job(conn, job_id, **fields)
        if event:
            rows.add_event(conn, job_id, *event)


def _fail(job_id: str, code: str, message: str, param: str | None = None) -> None:
    _update(job_id, ("error", message), status="failed", finished_at=int(time.time()), worker_pid=None,
            error=json.dumps({"code": code, "message": message, "param": param}))


def validate(job: dict) -> None:
    """The data doctor on the uploaded files: a bad file fails the job with its line numbers."""
    from ..data import check_dataset

    for param in ("training_file", "validation_file"):
        if not job[param]:
            continue
        try:
            row = jobs.get_file_row(job[param])
            report = check_dataset(row["path"], model=job["model"])
        except TuneryError as exc:
            return _fail(job["id"], f"invalid_{param}", f"{param} {job[param]}: {exc}", param)
        if not report["ok"]:
            shown = "; ".join(f"line {e['line']}: {e['message']} [{e['code']}]" for e in report["errors"][:5])
            more = f" (and {report['error_count'] - 5} more)" if report["error_count"] > 5 else ""
            return _fail(job["id"], f"invalid_{param}",
                         f"{param} {job[param]} ({row['filename']}) has {report['error_count']} errors: {shown}{more}",
                         param)
    _update(job["id"], ("info", "Files validated; job queued"), status="queued", worker_pid=None)


def run(job: dict, parent: int) -> None:
    from ..training.loop import Signal, TrainingStopped, train

    job_id = job["id"]
    request = json.loads(job["request"])
    cfg = jobs.config_for(request, job_id)
    cfg = cfg.model_copy(update={
        "data": jobs.get_file_row(job["training_file"])["path"],
        "val_data": jobs.get_file_row(job["validation_file"])["path"] if job["validation_file"] else None,
        "resume": RunFolder(cfg.out).is_run(),
    })
    resumed = job["status"] == "running" or cfg.resume
    _update(job_id, ("info", "Fine-tuning job resumed from its last checkpoint" if resumed else "Fine-tuning job started"),
            status="running", run_dir=cfg.out, config=json.dumps(cfg.model_dump()))
    started = time.time()
    first_step: list[int] = []

    def on_step(row: dict):
        if os.getppid() != parent:
            os._exit(0)  # the server is gone; its next start resumes this job
        first_step[:1] = first_step[:1] or [row["step"]]
        done = row["step"] - first_step[0] + 1
        remaining = row["total_steps"] - row["step"]
        eta = int(time.time() + remaining * (time.time() - started) / done)
        data = {"step": row["step"], "total_steps": row["total_steps"], "train_loss": row["loss"]}
        msg = f"Step {row['step']}/{row['total_steps']}: training loss={row['loss']:.4f}"
        if "val_loss" in row:
            data["valid_loss"] = row["val_loss"]
            msg += f", validation loss={row['val_loss']:.4f}"
        with connect() as conn, transaction(conn):
            rows.update_job(conn, job_id, trained_tokens=row["trained_tokens"], estimated_finish=eta)
            rows.add_event(conn, job_id, "info", msg, data, type="metrics")
            control = rows.control_word(conn, job_id)
        return Signal(control) if control else None

    try:
        result = train(cfg, progress=False, on_step=on_step)
    except TrainingStopped as stop:
        status = "cancelled" if stop.signal is Signal.CANCEL else "paused"
        _update(job_id, ("info", f"Job {status} at step {stop.step}"), status=status, control=None, worker_pid=None,
                finished_at=int(time.time()) if status == "cancelled" else None)
        return
    except TuneryError as exc:
        return _fail(job_id, "training_failed", str(exc))
    except Exception as exc:  # noqa: BLE001 - recorded on the job; the worker carries on
        traceback.print_exc(file=sys.stderr)
        return _fail(job_id, "internal_error", f"{type(exc).__name__}: {exc}")
    _update(job_id, ("info", "The job has successfully completed"), status="succeeded", control=None,
            worker_pid=None, finished_at=int(time.time()), fine_tuned_model=result.info.name,
            trained_tokens=result.info.final.trained_tokens, estimated_finish=None)


if __name__ == "__main__":
    main()
