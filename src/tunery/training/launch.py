"""`--nproc N`: train with N processes on this machine, started through accelerate's launcher
(its Python API, which runs torchrun's elastic agent in this process).

Each process runs `python -m tunery.training.child SPEC` (the recipe as JSON) and joins the
others with torch.distributed (gloo on CPU, NCCL on GPUs); the loop does the rest (rank 0 writes
the run). This process waits, hands each step's row to the caller's `on_step` and passes its
signals on (control.Channel), and finally returns the run folder or raises what rank 0 reported:
the one-line error, or TrainingStopped. The processes die with it (PR_SET_PDEATHSIG in child.py).

Under `accelerate launch` or `torchrun` (WORLD_SIZE set) nothing is started: the launcher's
processes are the run's, whatever --nproc says; so is a run on several machines.
"""

import contextlib
import contextvars
import json
import logging
import os
import tempfile
import threading
from pathlib import Path

from ..config import TrainConfig
from ..errors import TuneryError
from ..run_folder import RunFolder
from .control import CHANNEL_ENV, Channel, Mirror, OnStep, Signal, TrainingStopped, error_from

LAUNCHER_ENV = "TUNERY_LAUNCHER_PID"  # the children die when this process does
POLL_S = 0.05


def wanted(cfg: TrainConfig) -> bool:
    return cfg.nproc > 1 and "WORLD_SIZE" not in os.environ


def run(cfg: TrainConfig, progress: bool, on_step: OnStep | None) -> RunFolder:
    import torch.distributed.run  # noqa: F401 - its agent's loggers exist before _quiet_agent mutes them
    from accelerate.commands.launch import launch_command, launch_command_parser

    # Decided here, once, so that every process writes to (rank 0) and reads from the same folder.
    folder = RunFolder(cfg.out) if cfg.out else RunFolder.default(cfg.data, cfg.method)
    cfg = cfg.model_copy(update={"out": str(folder.path)})
    with tempfile.TemporaryDirectory(prefix="tunery-launch-") as tmp:
        channel = Channel(tmp)
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"config": cfg.model_dump(), "progress": progress}))
        args = launch_command_parser().parse_args([
            "--multi_gpu", "--num_processes", str(cfg.nproc), "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", "0", "--module", "tunery.training.child", str(spec)])
        env = {CHANNEL_ENV: tmp, LAUNCHER_ENV: str(os.getpid()),
               # torchrun would pin each process to one thread; split the cores between them instead
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // cfg.nproc))}
        relay = _Relay(channel, on_step)
        failed = None
        with _environment(env), _quiet_agent():
            relay.start()
            try:
                launch_command(args)
            except Exception as exc:  # noqa: BLE001 - torchrun's ChildFailedError: rank 0's report says why
                failed = exc
            finally:
                relay.stop()
        outcome = channel.read_outcome() or {}
    if relay.error is not None:
        raise relay.error
    if "error" in outcome:
        raise error_from(outcome["error"])
    if "stopped" in outcome:
        raise TrainingStopped(Signal(outcome["stopped"]), outcome["step"])
    if failed is not None or not outcome.get("done"):
        raise TuneryError(f"training with {cfg.nproc} processes failed: a process stopped without saying why "
                          f"({type(failed).__name__ if failed else 'no outcome'}); its output is above")
    return folder


class _Relay:
    """Hands rank 0's step rows to the caller's `on_step` and its signals back, and its progress
    and status lines to this process's listener, in a thread (in the caller's context)."""

    def __init__(self, channel: Channel, on_step: OnStep | None):
        self.channel, self.on_step, self.mirror = channel, on_step, Mirror()
        self.seen, self.error = 0, None
        self._done = threading.Event()
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        self._deliver()  # the last rows, after the processes ended: their signals come too late
        self.mirror.close()

    def _run(self) -> None:
        while not self._done.wait(POLL_S):
            signal = self._deliver()
            if signal is not None:
                self.channel.ask(signal)

    def _deliver(self) -> Signal | None:
        asked = None
        for row in self.channel.rows(self.seen):
            self.seen += 1
            if self.mirror.take(row) or not self.on_step or self.error is not None:
                continue
            try:
                signal = self.on_step(row)
                if signal is not None and not isinstance(signal, Signal):
                    raise TypeError(f"on_step must return a Signal or None, not {signal!r}")
            except Exception as exc:  # noqa: BLE001 - raised out of train once the processes stop
                self.error, signal = exc, Signal.CANCEL
            asked = asked or signal
        return asked


@contextlib.contextmanager
def _environment(values: dict):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet_agent():
    """torchrun's agent logs each failed process at ERROR; rank 0 reports the error once."""
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("torch.distributed")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
