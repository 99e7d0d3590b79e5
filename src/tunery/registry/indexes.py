"""Retrieval indexes registered by name: the SQL, beside its schema (db.py, migration 6).

A row says where a named index lives and what it held when last built (fingerprint, counts,
embedder); the index's content is its own folder (tunery.retrieval), which the registry never
reads. One name per folder: registering a folder under a new name drops its old name. Each
function takes an open connection; writers wrap their calls in one `transaction`.
"""

from ..files import now
from .db import transaction


def get(conn, name: str) -> dict | None:
    row = conn.execute("SELECT * FROM indexes WHERE name = ?", (name,)).fetchone()
    return dict(row) if row else None


def list_indexes(conn) -> list[dict]:
    """Oldest first."""
    return [dict(r) for r in conn.execute("SELECT * FROM indexes ORDER BY created, name")]


def register(conn, name: str, path: str, fingerprint: str, documents: int, chunks: int, embedder: str) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM indexes WHERE path = ? AND name != ?", (path, name))
        conn.execute("INSERT INTO indexes (name, path, fingerprint, documents, chunks, embedder, created) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET path = excluded.path, "
                     "fingerprint = excluded.fingerprint, documents = excluded.documents, chunks = excluded.chunks, "
                     "embedder = excluded.embedder",
                     (name, path, fingerprint, documents, chunks, embedder, now()))


def remove(conn, name: str) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM indexes WHERE name = ?", (name,))
