"""Ground floor: writing files so readers never see half of one, content digests, timestamps.

Every layer may import this module; it imports nothing from tunery.

Invariant: a path written through `atomic_dir`, `write_text_atomic` or `write_json_atomic` is
either absent, its old complete content, or its new complete content; a crash leaves at most a
stray `.tmp-*` folder or `.NAME.tmp` file beside it.
"""

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path


@contextmanager
def atomic_dir(dest: Path):
    """Yield a temporary folder next to `dest`; on success rename it into place."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(dest.parent, f".tmp-{dest.name}-")
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def temp_dir(parent: Path, prefix: str) -> Path:
    """A new empty folder in `parent`, to be renamed into place once complete: an ordinary folder
    (mkdtemp makes 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, 0o755 & ~_umask())
    return tmp


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=str))


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def now() -> str:
    """The current UTC time as an ISO 8601 string, to the second: how every record stamps time."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
