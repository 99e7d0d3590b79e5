"""A caller steering a run between steps, in one process or across the processes of `--nproc N`.

In one process, `on_step(row) -> Signal | None` is called after each optimizer step. When
`tunery train --nproc N` starts processes (launch.py), the caller's `on_step` stays in the
launching process, so the run's rank 0 and the launcher talk through three files of a private
folder (`Channel`): rank 0 appends each step's row to `progress.jsonl` and reads `control`, which
the launcher writes when the caller's `on_step` asks to pause or cancel; at the end rank 0 writes
`outcome.json` (done, stopped at a step, or the one-line error), which the launcher turns back into
what `train` returns or raises. A signal reaches the run one step late there: the launcher learns
of a step only once it is done. Rank 0's progress and status lines (progress.py) travel the same
file (`ToLauncher`), so the launcher's terminal is the run's one voice.
"""

import enum
import json
import os
from collections.abc import Callable
from pathlib import Path

from ..errors import TuneryError
from ..progress import Listener, Task


class Signal(enum.Enum):
    """What `on_step` may ask of the loop between two steps."""

    PAUSE = "pause"  # checkpoint this step, then stop: resuming loses nothing
    CANCEL = "cancel"  # stop now


class TrainingStopped(Exception):
    """Raised out of `train` when `on_step` returned a Signal. `status` is what the registry and
    run.json record: a paused run is `interrupted` (it resumes), a cancelled one `cancelled`."""

    def __init__(self, signal: Signal, step: int):
        self.signal, self.step = signal, step
        self.status = "cancelled" if signal is Signal.CANCEL else "interrupted"
        super().__init__(f"training {'cancelled' if signal is Signal.CANCEL else 'paused'} at step {step}")


OnStep = Callable[[dict], "Signal | None"]


def step_note(row: dict) -> str:
    """What the training bar shows beside a step: its loss, validation loss and speed."""
    val = f" val {row['val_loss']:.4f}" if "val_loss" in row else ""
    return f"loss {row['loss']:.4f}{val} {row['tokens_per_s']:.0f} tok/s"

CHANNEL_ENV = "TUNERY_CHANNEL"  # set by the launcher in the environment of the processes it starts


class Channel:
    """The launcher's folder for one multi-process run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.progress, self.control, self.outcome = (self.path / n for n in ("progress.jsonl", "control", "outcome.json"))

    @classmethod
    def of_process(cls) -> "Channel | None":
        """The channel of the launcher that started this process, if one did."""
        path = os.environ.get(CHANNEL_ENV)
        return cls(path) if path else None

    # -- rank 0's side -------------------------------------------------------------------------
    def post(self, row: dict) -> None:
        with open(self.progress, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def on_step(self, row: dict) -> Signal | None:
        self.post(row)
        try:
            return Signal(self.control.read_text().strip())
        except (OSError, ValueError):
            return None

    def report(self, outcome: dict) -> None:
        tmp = self.outcome.with_name(".outcome.tmp")
        tmp.write_text(json.dumps(outcome))
        os.replace(tmp, self.outcome)

    def report_error(self, exc: BaseException) -> None:
        self.report({"error": error_report(exc)})

    # -- the launcher's side -------------------------------------------------------------------
    def rows(self, seen: int) -> list[dict]:
        """Complete progress rows after the first `seen`."""
        try:
            text = self.progress.read_text()
        except OSError:
            return []
        lines = text.split("\n")[:-1]  # the last piece is empty or a row still being written
        return [json.loads(ln) for ln in lines[seen:]]

    def ask(self, signal: Signal) -> None:
        tmp = self.control.with_name(".control.tmp")
        tmp.write_text(signal.value)
        os.replace(tmp, self.control)

    def read_outcome(self) -> dict | None:
        try:
            return json.loads(self.outcome.read_text())
        except (OSError, ValueError):
            return None


class ToLauncher(Listener):
    """Rank 0's progress and status lines, posted to the launcher (which shows them: `Mirror`)."""

    def __init__(self, channel: Channel):
        self.channel, self.ids, self.opened = channel, {}, 0

    def update(self, task: Task) -> None:
        if task not in self.ids:
            self.ids[task], self.opened = self.opened, self.opened + 1
        key = self.ids[task]
        self.channel.post({"task": key, "what": task.what, "done": task.done, "total": task.total, "unit": task.unit,
                           "note": task.note})

    def end(self, task: Task) -> None:
        if task in self.ids:
            self.channel.post({"task": self.ids.pop(task), "end": True})

    def say(self, message: str) -> None:
        self.channel.post({"say": message})


class Mirror:
    """The launcher's side of ToLauncher: the posted tasks and lines, reported here (in the
    launcher's own context, so to its listener). `take(row)` is False for a step row."""

    def __init__(self):
        self.tasks: dict[int, Task] = {}

    def take(self, row: dict) -> bool:
        if "say" in row:
            from ..progress import say

            say(row["say"])
        elif "task" not in row:
            return False
        elif row.get("end"):
            task = self.tasks.pop(row["task"], None)
            if task:
                task.close()
        elif row["task"] in self.tasks:
            self.tasks[row["task"]].update(row["done"], total=row["total"], note=row["note"], unit=row["unit"])
        else:
            self.tasks[row["task"]] = Task(row["what"], row["total"], done=row["done"], unit=row["unit"], note=row["note"])
        return True

    def close(self) -> None:
        for task in self.tasks.values():
            task.close()
        self.tasks = {}


def error_report(exc: BaseException) -> dict:
    """An error as plain data, to pass to another process."""
    if isinstance(exc, TuneryError):
        return {"kind": type(exc).__name__, "message": str(exc), "field": exc.field, "hint": exc.hint}
    return {"kind": "TuneryError", "message": f"{type(exc).__name__}: {exc}", "field": None, "hint": None}


def error_from(report: dict) -> TuneryError:
    """Another process's error, as the same kind of TuneryError (its exit code, its HTTP status)."""
    from .. import errors

    kind = getattr(errors, report["kind"], None)
    kind = kind if isinstance(kind, type) and issubclass(kind, TuneryError) else TuneryError
    return kind(report["message"], field=report["field"], hint=report.get("hint"))
