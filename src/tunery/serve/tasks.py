"""Long console actions that are not fine-tuning jobs: re-evaluate a model, retrain its recipe on
another base, compare it against its base and the prompt-only baseline.

Each runs in the web process, one at a time (a second waits its turn: two evaluations on the
same cores only slow each other), and is answered at once with a task object that
`GET /v1/tunery/tasks/{id}` polls: {"id", "object": "tunery.task", "kind", "status": queued |
running | succeeded | failed, "created_at", "finished_at", "error", "result"}. At most MAX_WAITING
are queued or running at once: another is refused (Busy, a 429), not queued without end. Their outcomes
that matter after a restart are recorded where they always are (the registry's evals and
models); the task objects themselves live in memory, the newest MAX_KEPT of them.

A task's result is made for a client: the caller's `public` function shapes it (no server
paths) before it is stored, and the `scrub` function given to Tasks does the same to error messages.
"""

import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from ..errors import Busy, NotFound, TuneryError

MAX_KEPT = 200
MAX_WAITING = 8  # tasks queued or running at once; past it a new one is refused (429), never dropped unseen
TASK_ID_PREFIX = "task-"


class Tasks:
    def __init__(self, scrub=lambda message: message):
        self.scrub = scrub
        self._lock = threading.Lock()
        self._tasks: OrderedDict[str, dict] = OrderedDict()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunery-task")

    def submit(self, kind: str, subject: str, work, public=lambda r: r) -> dict:
        """Queue `work()`; its return value, passed through `public`, becomes the task's result."""
        task = {"id": TASK_ID_PREFIX + secrets.token_hex(12), "object": "tunery.task", "kind": kind,
                "subject": subject, "status": "queued", "created_at": int(time.time()), "started_at": None,
                "finished_at": None, "error": None, "result": None}
        with self._lock:
            if sum(t["status"] in ("queued", "running") for t in self._tasks.values()) >= MAX_WAITING:
                raise Busy(f"{MAX_WAITING} tasks are already queued or running; try again when one has finished")
            self._tasks[task["id"]] = task
            while len(self._tasks) > MAX_KEPT:  # the oldest finished task goes (unfinished ones stay: at most MAX_WAITING)
                oldest = next(k for k, t in self._tasks.items() if t["status"] not in ("queued", "running"))
                del self._tasks[oldest]
        self._pool.submit(self._run, task, work, public)
        return dict(task)

    def _run(self, task: dict, work, public) -> None:
        self._set(task, status="running", started_at=int(time.time()))
        try:
            result = public(work())
        except TuneryError as exc:
            return self._set(task, status="failed", error={"message": self.scrub(str(exc)), "param": exc.field},
                             finished_at=int(time.time()))
        except Exception as exc:  # noqa: BLE001 - a task's failure is its answer, not the server's
            return self._set(task, status="failed", error={"message": self.scrub(f"{type(exc).__name__}: {exc}"), "param": None},
                             finished_at=int(time.time()))
        self._set(task, status="succeeded", result=result, finished_at=int(time.time()))

    def _set(self, task: dict, **values) -> None:
        with self._lock:
            task.update(values)

    def get(self, task_id: str) -> dict:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                raise NotFound(f"No such task: {task_id} (tasks are kept in memory, the newest {MAX_KEPT})")
            return dict(task)

    def list(self, subject: str | None = None) -> list[dict]:
        """Newest first, without their (possibly large) results."""
        with self._lock:
            return [{k: v for k, v in t.items() if k != "result"} for t in reversed(self._tasks.values())
                    if subject is None or t["subject"] == subject]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
