"""One of the processes `tunery train --nproc N` starts (launch.py):

    python -m tunery.training.child SPEC      # SPEC: {"config": the recipe, "progress": bool}

It trains its share (the loop knows its rank), and rank 0 reports how the run ended to the
launcher's channel, so the launcher, not N processes, tells the user. It dies with the launcher.
"""

import ctypes
import json
import os
import signal
import sys
import traceback
from pathlib import Path

from ..config import TrainConfig
from ..progress import Silent, listening
from .control import Channel, ToLauncher, TrainingStopped
from .launch import LAUNCHER_ENV
from .loop import train


def main(spec_path: str) -> int:
    _die_with_launcher()
    channel = Channel.of_process()
    spec = json.loads(Path(spec_path).read_text())
    main_process = os.environ.get("RANK", "0") == "0"
    try:
        with listening(ToLauncher(channel) if main_process and channel else Silent()):  # the launcher speaks
            train(TrainConfig(**spec["config"]), progress=spec["progress"],
                  on_step=channel.on_step if channel else None)  # the loop calls it on rank 0 only
    except TrainingStopped as stop:
        if main_process and channel:
            channel.report({"stopped": stop.signal.value, "step": stop.step})
        return 3
    except Exception as exc:  # noqa: BLE001 - the launcher raises it again, once
        if not hasattr(exc, "exit_code"):
            traceback.print_exc()  # not a user's error: a bug, whose trace is worth seeing
        if main_process and channel:
            channel.report_error(exc)
        return getattr(exc, "exit_code", 1)
    if main_process and channel:
        channel.report({"done": True})
    return 0


def _die_with_launcher() -> None:
    launcher = os.environ.get(LAUNCHER_ENV)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return  # not Linux
    # The agent that started this process is the launcher itself (accelerate runs torchrun's agent
    # in-process); if it is gone already, the signal came too late.
    if launcher and str(os.getppid()) != launcher:
        os._exit(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
