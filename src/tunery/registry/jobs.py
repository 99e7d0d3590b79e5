"""The server's uploaded files, fine-tuning jobs and their events: the SQL, beside its schema
(db.py, migration 4). Each function takes an open connection; a caller that writes wraps its
calls in one `transaction`, so a job's status and the event announcing it change together.

The API shapes these rows take (the hosted API's `file` and `fine_tuning.job` objects) are
serve/jobs.py's; nothing here knows HTTP.
"""

import json
import time

JOB_COLUMNS = frozenset({"control", "error", "fine_tuned_model", "trained_tokens", "estimated_finish",
                         "run_dir", "worker_pid", "config", "finished_at", "attempts"})
TERMINAL = ("succeeded", "failed", "cancelled")
# The one table of a job's status changes: a status may be entered only from these. A terminal
# status is entered from no other and left for none, so a cancel can never be overwritten.
TRANSITIONS = {
    "queued": ("validating_files", "paused"),
    "running": ("queued", "running"),  # running -> running: a new worker resumes an orphaned job
    "paused": ("queued", "running"),
    "succeeded": ("running",),
    "failed": ("validating_files", "queued", "running"),
    "cancelled": ("validating_files", "queued", "running", "paused"),
}


# -- files ---------------------------------------------------------------------------------------

def insert_file(conn, row: dict) -> None:
    conn.execute("INSERT INTO files (id, filename, purpose, bytes, path, created_at) VALUES "
                 "(:id, :filename, :purpose, :bytes, :path, :created_at)", row)


def get_file(conn, file_id: str) -> dict | None:
    row = conn.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
    return dict(row) if row else None


def list_files(conn, purpose: str | None = None) -> list[dict]:
    rows = conn.execute("SELECT * FROM files WHERE (? IS NULL OR purpose = ?) ORDER BY created_at DESC, rowid DESC",
                        (purpose, purpose)).fetchall()
    return [dict(r) for r in rows]


def delete_file(conn, file_id: str) -> None:
    conn.execute("DELETE FROM files WHERE id = ?", (file_id,))


# -- jobs ----------------------------------------------------------------------------------------

def insert_job(conn, job_id: str, model: str, training_file: str, validation_file: str | None, request: dict) -> None:
    conn.execute("INSERT INTO jobs (id, model, training_file, validation_file, request, status, created_at) "
                 "VALUES (?, ?, ?, ?, ?, 'validating_files', ?)",
                 (job_id, model, training_file, validation_file, json.dumps(request), int(time.time())))


def get_job(conn, job_id: str) -> dict | None:
    row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return dict(row) if row else None


def list_jobs(conn) -> list[dict]:
    """Newest first."""
    return [dict(r) for r in conn.execute("SELECT * FROM jobs ORDER BY created_at DESC, rowid DESC")]


def update_job(conn, job_id: str, **fields) -> None:
    """Columns other than status (which only `transition` changes)."""
    unknown = set(fields) - JOB_COLUMNS
    if unknown:
        raise ValueError(f"not a job column: {', '.join(sorted(unknown))}")
    if fields:
        sets = ", ".join(f"{k} = ?" for k in fields)
        conn.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))


def transition(conn, job_id: str, status: str, *, only_from: tuple[str, ...] | None = None, **fields) -> bool:
    """Compare-and-set the job's status (and `fields` with it) if TRANSITIONS allows entering
    `status` from the current one (narrowed by `only_from`). False when the job was elsewhere:
    someone else (a cancel, a pause) moved it first, and their change stands."""
    allowed = [s for s in TRANSITIONS[status] if only_from is None or s in only_from]
    unknown = set(fields) - JOB_COLUMNS
    if unknown:
        raise ValueError(f"not a job column: {', '.join(sorted(unknown))}")
    sets = "".join(f", {k} = ?" for k in fields)
    marks = ", ".join("?" for _ in allowed)
    cur = conn.execute(f"UPDATE jobs SET status = ?{sets} WHERE id = ? AND status IN ({marks})",
                       (status, *fields.values(), job_id, *allowed))
    return cur.rowcount == 1


def set_control(conn, job_id: str, word: str) -> bool:
    """Ask the worker running the job to pause or cancel it; False if it is not running."""
    cur = conn.execute("UPDATE jobs SET control = ? WHERE id = ? AND status = 'running'", (word, job_id))
    return cur.rowcount == 1


def claimable_jobs(conn) -> list[dict]:
    """Jobs a worker may take, in the order it should: an orphaned running one first (resume),
    then files to validate, then the oldest queued job."""
    rows = conn.execute("SELECT * FROM jobs WHERE status IN ('running', 'validating_files', 'queued') "
                        "ORDER BY CASE status WHEN 'running' THEN 0 WHEN 'validating_files' THEN 1 ELSE 2 END, "
                        "created_at, rowid").fetchall()
    return [dict(r) for r in rows]


def control_word(conn, job_id: str) -> str | None:
    """pause | cancel, when the API has asked the worker for one."""
    row = conn.execute("SELECT control FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row["control"] if row else None


# -- events --------------------------------------------------------------------------------------

def add_event(conn, job_id: str, level: str, message: str, data: dict | None = None, type: str = "message") -> None:
    conn.execute("INSERT INTO job_events (job_id, created_at, level, type, message, data) VALUES (?, ?, ?, ?, ?, ?)",
                 (job_id, int(time.time()), level, type, message, json.dumps(data) if data is not None else None))


def forget_metrics_from(conn, job_id: str, step: int) -> None:
    """A resumed job re-runs the steps after its checkpoint: their earlier events go."""
    conn.execute("DELETE FROM job_events WHERE job_id = ? AND type = 'metrics' AND "
                 "CAST(json_extract(data, '$.step') AS INTEGER) >= ?", (job_id, step))


def list_events(conn, job_id: str, before_id: int | None, limit: int) -> list[dict]:
    """Newest first, older than `before_id` when given; `data` decoded."""
    rows = conn.execute("SELECT * FROM job_events WHERE job_id = ? AND (? IS NULL OR id < ?) ORDER BY id DESC "
                        "LIMIT ?", (job_id, before_id, before_id, limit)).fetchall()
    return [dict(r) | {"data": json.loads(r["data"]) if r["data"] else {}} for r in rows]
