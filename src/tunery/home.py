"""Where tunery keeps its state: TUNERY_HOME (default ~/.cache/tunery)."""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def tunery_home() -> Path:
    home = Path(os.environ.get("TUNERY_HOME") or Path.home() / ".cache" / "tunery")
    home.mkdir(parents=True, exist_ok=True)
    return home


@contextmanager
def atomic_dir(dest: Path):
    """Yield a temporary folder next to `dest`; on success rename it into place.

    Readers only ever see a missing folder or a complete one: a crash leaves a stray
    `.tmp-*` folder, never a half-written `dest`.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    os.chmod(tmp, 0o755 & ~_umask())  # mkdtemp makes 0700; the result is an ordinary folder
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
