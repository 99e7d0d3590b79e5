"""Content hashes of a model folder: its weights, and its tokenizer with the chat template.

A hash is sha256 over the sorted (file name, file sha256) pairs, so it names the content, not
the path: the same weights copied elsewhere hash the same, and re-saved changed weights under
the same path do not. File hashes are cached in the registry by (path, size, mtime, inode), so
a 500 MB weights file is read once, not on every `tunery train` or `models list --stale`.
"""

import hashlib
import os
import sqlite3
from pathlib import Path

from ..files import file_digest
from .db import transaction

WEIGHT_PATTERNS = ("config.json", "*.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")


def _key(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino


def file_sha256(conn: sqlite3.Connection, path: Path) -> str:
    path = Path(path).resolve()
    before = path.stat()
    row = conn.execute("SELECT size, mtime_ns, inode, sha256 FROM file_hashes WHERE path = ?", (str(path),)).fetchone()
    if row is not None and (row["size"], row["mtime_ns"], row["inode"]) == _key(before):
        return row["sha256"]
    digest = file_digest(path)  # outside any transaction: other writers are not held up meanwhile
    if _key(path.stat()) == _key(before):  # not rewritten while we read it
        with transaction(conn):
            conn.execute("INSERT OR REPLACE INTO file_hashes (path, size, mtime_ns, inode, sha256) VALUES (?, ?, ?, ?, ?)",
                         (str(path), *_key(before), digest))
    return digest


def _combine(conn: sqlite3.Connection, files: dict[str, Path]) -> str | None:
    if not files:
        return None
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{file_sha256(conn, files[name])}\n".encode())
    return h.hexdigest()


def weights_hash(conn: sqlite3.Connection, folder: Path, adapter: Path | None = None) -> str | None:
    """config.json and every *.safetensors file (and an adapter's, when the base is itself a run)."""
    files = {}
    for root, prefix in ((folder, ""), (adapter, "adapter/")):
        if root is None or not Path(root).is_dir():
            continue
        for pattern in WEIGHT_PATTERNS:
            for p in Path(root).glob(pattern):
                if p.is_file():
                    files[prefix + p.name] = p
    return _combine(conn, files)


def tokenizer_hash(conn: sqlite3.Connection, folder: Path, template: str | None = None) -> str | None:
    """The tokenizer files and the chat template (the model's own, or --template FILE)."""
    files = {name: Path(folder) / name for name in TOKENIZER_FILES if (Path(folder) / name).is_file()}
    if template and Path(template).is_file():
        files["--template"] = Path(template)
    return _combine(conn, files)
