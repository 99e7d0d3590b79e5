"""The jobs worker: a separate process that validates uploaded files and runs fine-tuning jobs,
one at a time, with all state in the registry database.

The server starts and supervises it (supervisor.py), and it dies with the server
(PR_SET_PDEATHSIG). A job left `running` or `validating_files` by a worker that no longer exists
is taken up again: training resumes from its last checkpoint. Every status change goes through
registry.jobs.transition, so a cancel that lands while a file is being validated or a step is
running is final. What a job's error says names its files by id and never a server path.

    python -m tunery.serve.worker [SERVER_PID]      # normally started by `tunery serve`
"""

import ctypes
import json
import os
import signal
import sys
import time
import traceback

from ..config import PREFERENCE_STATS
from ..errors import TuneryError
from ..home import tunery_home
from ..registry import jobs as rows
from ..registry.db import connect, transaction
from ..registry.store import pid_alive
from ..run_folder import RunFolder
from . import jobs

POLL_S = 0.3
MAX_ATTEMPTS = 3  # workers a job may take down (killed, out of memory) before it fails


def main(parent: int | None = None) -> None:
    """`parent`: the server's pid (passed by the supervisor), so a worker whose server died while
    it was still starting exits too instead of outliving it."""
    parent = parent or os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the server is already gone (PR_SET_PDEATHSIG came too late)
        os._exit(0)
    while True:
        if os.getppid() != parent:
            os._exit(0)
        job = claim_next()
        if job is None:
            time.sleep(POLL_S)
            continue
        try:
            if job["attempts"] > MAX_ATTEMPTS:
                _fail(job, "worker_died", f"the jobs worker stopped {MAX_ATTEMPTS} times while working on this job "
                      "(killed or out of memory); it is not tried again")
            elif job["status"] == "validating_files":
                validate(job)
            else:
                run(job, parent)
        except TuneryError as exc:  # e.g. an uploaded file deleted after the job was created
            _fail(job, "invalid_request", str(exc), exc.field)
        except Exception as exc:  # noqa: BLE001 - recorded on the job; the worker carries on
            traceback.print_exc(file=sys.stderr)
            _fail(job, "internal_error", f"{type(exc).__name__}: {exc}")


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the getppid() checks still stop it between steps


def claim_next() -> dict | None:
    """Take the next job: an orphaned running one first (resume), then files to validate, then
    the oldest queued job. Each claim counts as an attempt."""
    me = os.getpid()
    with connect() as conn, transaction(conn):
        for row in rows.claimable_jobs(conn):
            if row["worker_pid"] == me or pid_alive(row["worker_pid"]):
                continue
            row["attempts"] += 1
            rows.update_job(conn, row["id"], worker_pid=me, attempts=row["attempts"])
            row["worker_pid"] = me
            return row
    return None


def _public(job: dict, message: str) -> str:
    """A message for the API: uploaded files by id, the server's folders by what they are."""
    swaps = []
    for param in ("training_file", "validation_file"):
        if job.get(param):
            try:
                swaps.append((jobs.get_file_row(job[param])["path"], job[param]))
            except TuneryError:
                pass
    if job.get("run_dir"):
        swaps.append((job["run_dir"], f"<{job['id']} run>"))
    swaps.append((str(tunery_home()), "<server>"))
    for path, name in swaps:
        message = message.replace(path, name)
    return message


def _fail(job: dict, code: str, message: str, param: str | None = None) -> None:
    message = _public(job, message)
    with connect() as conn, transaction(conn):
        if rows.transition(conn, job["id"], "failed", finished_at=int(time.time()), worker_pid=None,
                           error=json.dumps({"code": code, "message": message, "param": param})):
            rows.add_event(conn, job["id"], "error", message)
        else:
            rows.update_job(conn, job["id"], worker_pid=None)


def _release(job_id: str, status: str | None = None, event: str | None = None, **fields) -> bool:
    """Move the job to `status` (if still allowed) and let go of it; False if someone moved it first."""
    with connect() as conn, transaction(conn):
        moved = rows.transition(conn, job_id, status, worker_pid=None, **fields) if status else True
        rows.update_job(conn, job_id, worker_pid=None)
        if moved and event:
            rows.add_event(conn, job_id, "info", event)
        return moved


def validate(job: dict) -> None:
    """The data doctor on the uploaded files, with the job's own options (template, max length,
    mask, format): a file that would fail training fails here, with its line numbers."""
    from ..data import check_dataset

    cfg = jobs.config_for(json.loads(job["request"]), job["id"])
    for param in ("training_file", "validation_file"):
        if not job[param]:
            continue
        try:
            row = jobs.get_file_row(job[param])
            report = check_dataset(row["path"], cfg)
        except TuneryError as exc:
            return _fail(job, f"invalid_{param}", f"{param} {job[param]}: {exc}", param)
        if not report["ok"]:
            shown = "; ".join(f"line {e['line']}: {e['message']} [{e['code']}]" for e in report["errors"][:5])
            more = f" (and {report['error_count'] - 5} more)" if report["error_count"] > 5 else ""
            return _fail(job, f"invalid_{param}",
                         f"{param} {job[param]} ({row['filename']}) has {report['error_count']} errors: {shown}{more}",
                         param)
    _release(job["id"], "queued", "Files validated; job queued")


def run(job: dict, parent: int) -> None:
    from ..training.loop import Signal, TrainingStopped, train

    job_id = job["id"]
    cfg = jobs.config_for(json.loads(job["request"]), job_id)
    cfg = cfg.model_copy(update={
        "data": jobs.get_file_row(job["training_file"])["path"],
        "val_data": jobs.get_file_row(job["validation_file"])["path"] if job["validation_file"] else None,
        "resume": RunFolder(cfg.out).is_run(),
    })
    resumed = job["status"] == "running" or cfg.resume
    with connect() as conn, transaction(conn):
        if not rows.transition(conn, job_id, "running", run_dir=cfg.out, config=json.dumps(cfg.model_dump())):
            rows.update_job(conn, job_id, worker_pid=None)
            return  # cancelled or paused before it started
        rows.add_event(conn, job_id, "info",
                       "Fine-tuning job resumed from its last checkpoint" if resumed else "Fine-tuning job started")
    job = job | {"run_dir": cfg.out}
    started = time.time()
    first_step: list[int] = []

    def on_step(row: dict):
        if os.getppid() != parent:
            os._exit(0)  # the server is gone; its next start resumes this job
        first = not first_step
        first_step[:1] = first_step[:1] or [row["step"]]
        done = row["step"] - first_step[0] + 1
        remaining = row["total_steps"] - row["step"]
        eta = int(time.time() + remaining * (time.time() - started) / done)
        data = {"step": row["step"], "total_steps": row["total_steps"], "train_loss": row["loss"]}
        msg = f"Step {row['step']}/{row['total_steps']}: training loss={row['loss']:.4f}"
        if "val_loss" in row:
            data["valid_loss"] = row["val_loss"]
            msg += f", validation loss={row['val_loss']:.4f}"
        for key in PREFERENCE_STATS:  # dpo, simpo: the rewards, their margin and accuracy, and on validation
            for name in (key, f"val_{key}"):
                if name in row:
                    data[name] = row[name]
        if "rewards_margin" in row:
            msg += f", reward margin={row['rewards_margin']:.4f}, accuracy={row['accuracy']:.2f}"
        with connect() as conn, transaction(conn):
            if first:  # after a resume, the steps since the checkpoint run again: one event each
                rows.forget_metrics_from(conn, job_id, row["step"])
            rows.update_job(conn, job_id, trained_tokens=row["trained_tokens"], estimated_finish=eta)
            rows.add_event(conn, job_id, "info", msg, data, type="metrics")
            control = rows.control_word(conn, job_id)
        return Signal(control) if control else None

    try:
        result = train(cfg, progress=False, on_step=on_step)
    except TrainingStopped as stop:
        status = "cancelled" if stop.signal is Signal.CANCEL else "paused"
        _release(job_id, status, f"Job {status} at step {stop.step}", control=None,
                 finished_at=int(time.time()) if status == "cancelled" else None)
        return
    except TuneryError as exc:
        return _fail(job, "training_failed", str(exc))
    except Exception as exc:  # noqa: BLE001 - recorded on the job; the worker carries on
        traceback.print_exc(file=sys.stderr)
        return _fail(job, "internal_error", f"{type(exc).__name__}: {exc}")
    _release(job_id, "succeeded", "The job has successfully completed", control=None,
             finished_at=int(time.time()), fine_tuned_model=result.info.name,
             trained_tokens=result.info.final.trained_tokens, estimated_finish=None)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else None)
