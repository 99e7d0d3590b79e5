"""Progress of long steps: the floors that do the work report it here, and whoever listens shows it.

A step that takes a while opens a `Task` (what, total) and moves it on: reading and encoding a data
file (data/dataset.scan_file, in bytes), training (training/loop, in steps, the loss as its note),
generating answers (evaluate, in batches), an export's stages, chunking and embedding an index,
importing a GGUF file. A status line that is not a result (the training plan, a warning) goes
through `say`.

Nothing here knows about terminals, rich or typer. Whoever calls `listening(listener)` hears the
steps inside it, in that context only: the CLI shows bars with ETA on stderr, plain lines, or
nothing under --quiet (cli_output.py); the processes of `--nproc` hand theirs to the launcher
(training/control.py). With no listener an update costs a context-variable lookup and `say`
prints to stderr. A Task keeps the listener current when it was opened, so a thread moving it on
reports to the same place.
"""

import sys
import time
from contextlib import contextmanager
from contextvars import ContextVar


class Listener:
    """What a listener hears. This one shows no progress and prints status lines to stderr."""

    def update(self, task: "Task") -> None:
        """A task started, or its done, total or note changed."""

    def end(self, task: "Task") -> None:
        """A task is over: finished, stopped early, or failed."""

    def say(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        """Nothing more will be reported: whatever is still shown can go."""


class Silent(Listener):
    """Hears nothing and says nothing (--quiet, the other processes of a distributed run)."""

    def say(self, message: str) -> None:
        pass


_LISTENER: ContextVar[Listener] = ContextVar("tunery_progress", default=Listener())


@contextmanager
def listening(listener: Listener):
    """Steps reported inside this block (in this context) go to `listener`."""
    token = _LISTENER.set(listener)
    try:
        yield listener
    finally:
        _LISTENER.reset(token)


def say(message: str) -> None:
    """A status line: shown beside the progress, dropped under --quiet."""
    _LISTENER.get().say(message)


class Task:
    """One long step. `what` names it ("train", "read data.jsonl"); `total` may be unknown (None)
    or set later; `unit` is "" for counts, "B" for bytes, or a word ("rows"); `note` is what is
    shown beside the bar (the loss, the stage running). Use it as a context manager, or close it."""

    def __init__(self, what: str, total: float | None = None, *, done: float = 0, unit: str = "", note: str = ""):
        self.what, self.total, self.done, self.unit, self.note = what, total, done, unit, note
        self.started, self.started_at = time.monotonic(), done  # for a rate, and so an ETA
        self.listener = _LISTENER.get()
        self.closed = False
        self.listener.update(self)

    def advance(self, n: float = 1, note: str | None = None) -> None:
        self.update(done=self.done + n, note=note)

    def update(self, done: float | None = None, *, total: float | None = None, note: str | None = None,
               unit: str | None = None) -> None:
        if done is not None:
            self.done = done
        if total is not None:
            self.total = total
        if note is not None:
            self.note = note
        if unit is not None:
            self.unit = unit
        self.listener.update(self)

    def eta(self) -> float | None:
        """Seconds left at the rate so far, or None while it cannot be told."""
        moved, elapsed = self.done - self.started_at, time.monotonic() - self.started
        if self.total is None or moved <= 0 or elapsed <= 0:
            return None
        return max(0.0, (self.total - self.done) * elapsed / moved)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.listener.end(self)

    def __enter__(self) -> "Task":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
