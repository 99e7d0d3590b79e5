"""How the command line talks. stdout carries the result only: text for a person, or with --json
one JSON document. stderr carries the rest: progress, status lines, warnings, and an error as one
line with what to do next.

Every command that produces a result takes the two options defined here once (`JSON`, `QUIET`)
and is wrapped by `command`, which listens to the long steps the floors below report
(progress.py) while it runs:
  - on a terminal: rich bars with a count, ETA and a note (the loss while training) on stderr;
  - elsewhere: nothing, unless TUNERY_PROGRESS=1 asks for plain lines (a line per step at most
    every few seconds, and one when it ends: readable in a CI log); TUNERY_PROGRESS=0: never;
  - with --quiet: no progress and no status lines, only the result and errors;
  - in the processes a launcher starts, rank 0 alone.
"""

import functools
import json
import os
import sys
import time

import typer

from .errors import TuneryError
from .progress import Listener, Silent, Task, listening

JSON = typer.Option(False, "--json", help="Print the result as one JSON document on stdout (errors stay one line on stderr)")
QUIET = typer.Option(False, "--quiet", help="No progress or status lines on stderr: only the result, and errors")
PROGRESS_ENV = "TUNERY_PROGRESS"  # 1: always (bars on a terminal, lines elsewhere); 0: never; unset: on a terminal


def command(fn):
    """A command whose long steps are shown as its `quiet` option and the terminal allow."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        listener = listener_for(bool(kwargs.get("quiet")))
        try:
            with listening(listener):
                return fn(*args, **kwargs)
        finally:
            listener.close()  # bars end before the result or the error is printed

    return run


def emit(result, as_json: bool, show) -> None:
    """The command's result: one JSON document, or `show()` for a person (by rank 0 alone)."""
    if not _rank_zero():
        return
    if as_json:
        print(json.dumps(result, default=str))
    else:
        show()


PIPED_WIDTH = 200  # columns of a table written to a file or a pipe (rich would cut it at 80)


def console(stderr: bool = False):
    """Where a command writes for a person. Off a terminal (a pipe, a log, CI) without COLUMNS, 200
    columns wide, so a table's headers and cells are not cut to fit 80."""
    from rich.console import Console

    wide = not (sys.stderr if stderr else sys.stdout).isatty() and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, highlight=False, emoji=False,  # `ft:m:train:...` stays a name, not Ⓜ
                   width=PIPED_WIDTH if wide else None)


def error_line(exc: TuneryError) -> str:
    """The one line an error prints as: its message, then its hint."""
    return f"error: {exc.line()}"


def _rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"  # under torchrun / accelerate launch, rank 0 alone speaks


def listener_for(quiet: bool) -> "Listener":
    if quiet or not _rank_zero():
        return Silent()
    setting = os.environ.get(PROGRESS_ENV, "").strip()
    if setting == "0":
        return Listener()  # status lines, no progress
    if sys.stderr.isatty():
        return Bars()
    return Lines() if setting == "1" else Listener()


def _count(task: Task) -> str:
    from rich.filesize import decimal

    if task.unit == "B":
        return decimal(int(task.done)) + (f"/{decimal(int(task.total))}" if task.total is not None else "")
    unit = f" {task.unit}" if task.unit else ""
    return f"{task.done:,.0f}" + (f"/{task.total:,.0f}" if task.total is not None else "") + unit


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Bars(Listener):
    """Rich progress bars on stderr: one per running step, with its count, ETA and note. Status
    lines print above them. The bars stop when no step is running, so a result printed between
    two steps never lands inside them."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True, highlight=False, emoji=False)
        self.bars = None
        self.ids: dict[Task, int] = {}

    def _started(self):
        if self.bars is None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bars = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
                                 TimeRemainingColumn(), TextColumn("{task.fields[note]}"), console=self.console,
                                 redirect_stdout=False, redirect_stderr=True)  # stdout is the result's alone
            self.bars.start()
        return self.bars

    def update(self, task: Task) -> None:
        from rich.markup import escape

        bars = self._started()
        fields = {"count": escape(_count(task)), "note": escape(task.note)}
        if task not in self.ids:
            self.ids[task] = bars.add_task(escape(task.what), total=task.total, completed=task.done, **fields)
        else:
            bars.update(self.ids[task], total=task.total, completed=task.done, **fields)

    def end(self, task: Task) -> None:
        if task not in self.ids:
            return
        self.update(task)  # its last count
        self.bars.stop_task(self.ids.pop(task))
        if not self.ids:
            self.close()

    def say(self, message: str) -> None:
        self.console.print(message, markup=False, style="yellow" if message.startswith("warning") else None)

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()
        self.bars, self.ids = None, {}


class Lines(Listener):
    """Progress as plain lines on stderr, for logs: a running step's count, share, ETA and note
    every EVERY seconds, and a line when it ends (with the time it took)."""

    EVERY = 5.0

    def __init__(self):
        self.shown: dict[Task, float] = {}

    def update(self, task: Task) -> None:
        now = time.monotonic()
        if now - self.shown.setdefault(task, now) >= self.EVERY:
            self.shown[task] = now
            self._print(task, ended=False)

    def end(self, task: Task) -> None:
        self.shown.pop(task, None)
        self._print(task, ended=True)

    def _print(self, task: Task, ended: bool) -> None:
        parts = [task.what, _count(task)]
        if task.total:
            parts.append(f"{min(task.done / task.total, 1):.0%}")
        if ended:
            parts.append(f"in {_clock(time.monotonic() - task.started)}")
        elif (eta := task.eta()) is not None:
            parts.append(f"ETA {_clock(eta)}")
        if task.note:
            parts.append(task.note)
        print("  ".join(parts), file=sys.stderr, flush=True)

    def close(self) -> None:
        self.shown = {}
