"""The jobs worker's keeper: `tunery serve` runs fine-tuning jobs in a child process
(`python -m tunery.serve.worker`) and restarts it when it dies, with backoff.

A job whose worker died is taken up again by the next worker (worker.claim_next): a running job
resumes from its last checkpoint, a job whose files were being validated is validated again; a
job that has taken down the worker MAX_ATTEMPTS times fails with that reason instead of looping.
"""

import os
import subprocess
import sys
import threading
import time

BACKOFF_S = (1, 2, 4, 8, 16, 30)  # waits before restart number 1, 2, ...; the last repeats
STABLE_S = 60  # a worker that ran this long resets the backoff


class WorkerSupervisor:
    def __init__(self, command: list[str] | None = None, poll_s: float = 0.5):
        self.command = command or [sys.executable, "-m", "tunery.serve.worker", str(os.getpid())]
        self.poll_s = poll_s
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="tunery-worker-supervisor", daemon=True)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command)
        self._thread.start()

    def _watch(self) -> None:
        failures, started = 0, time.monotonic()
        while not self._stop.wait(self.poll_s):
            code = self.proc.poll()  # also reaps it: no zombie
            if code is None:
                continue
            failures = 0 if time.monotonic() - started > STABLE_S else failures + 1
            wait = BACKOFF_S[min(failures, len(BACKOFF_S)) - 1] if failures else BACKOFF_S[0]
            print(f"tunery: the jobs worker exited ({code}); restarting it in {wait} s", file=sys.stderr, flush=True)
            if self._stop.wait(wait):
                return
            self.proc = subprocess.Popen(self.command)
            self.restarts += 1
            started = time.monotonic()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
