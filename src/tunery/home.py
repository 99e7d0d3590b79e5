"""Where tunery keeps its state: TUNERY_HOME (default ~/.cache/tunery)."""

import os
from pathlib import Path


def tunery_home() -> Path:
    home = Path(os.environ.get("TUNERY_HOME") or Path.home() / ".cache" / "tunery")
    home.mkdir(parents=True, exist_ok=True)
    return home
