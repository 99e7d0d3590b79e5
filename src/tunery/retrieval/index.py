"""Opening and searching an index: `Index`, `Hit`, and the fingerprint that names an index's content.

`Index.open` takes a folder or a name registered by a build (a folder wins when both exist).
`search` has three modes: "bm25" (FTS5's BM25 over the chunk text), "dense" (exact cosine of
the query's embedding, by the index's own embedder) and "hybrid" (the default): reciprocal rank
fusion of the two top lists, score = sum over lists of 1 / (RRF_K + rank), rank from 1. Each
mode's score is higher-is-better: -bm25(), the cosine, the fused score. Ties go to the earlier
chunk, so equal inputs give equal results.

The fingerprint is the sha256 over the sorted (source, sha256) pairs of the indexed documents
and the embedder's name (`fingerprint`, the only place it is computed): equal fingerprints mean
the same files with the same bytes, embedded the same way.
"""

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, NotFound
from .embedders import check_name, get_embedder
from .store import SqliteStore, Store

MODES = ("hybrid", "bm25", "dense")
RRF_K = 60
MIN_DEPTH = 50  # each list fused in hybrid mode holds max(4k, this) chunks


@dataclass
class Hit:
    id: str
    source: str
    score: float
    text: str
    position: int  # the chunk's number in its document, from 0

    def to_dict(self) -> dict:
        return asdict(self)


def fingerprint(documents: dict[str, str], embedder: str) -> str:
    h = hashlib.sha256()
    for source, sha in sorted(documents.items()):
        h.update(f"{source}\t{sha}\n".encode())
    h.update(f"embedder\t{embedder}\n".encode())
    return h.hexdigest()


def rrf(lists: list[list[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of ranked lists of rows: best first, ties by row."""
    scores: dict[int, float] = {}
    for ranked in lists:
        for rank, row in enumerate(ranked, 1):
            scores[row] = scores.get(row, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


class Index:
    def __init__(self, path: Path, store: Store, name: str | None = None):
        self.path, self.store, self.name = path, store, name

    @classmethod
    def open(cls, path: str | Path) -> "Index":
        """An index by folder or registered name; a one-line NotFound if neither."""
        folder, name = Path(path).expanduser(), None
        if not folder.exists():
            folder, name = _registered(str(path)), str(path)
        if not folder.is_dir() or not SqliteStore.is_index(folder):
            raise NotFound(f"{folder}: not a tunery index", hint=f"build one with `tunery index build DOCS --out {folder}`")
        return cls(folder.resolve(), SqliteStore.open(folder), name)

    @property
    def fingerprint(self) -> str:
        return self.store.meta["fingerprint"]

    @property
    def embedder(self) -> str:
        return self.store.meta["embedder"]

    def documents(self) -> dict[str, str]:
        """source -> sha256 of every indexed document."""
        return {d["source"]: d["sha256"] for d in self.store.documents()}

    def info(self) -> dict:
        meta = self.store.meta
        return {"path": str(self.path), "documents": meta["documents"], "chunks": meta["chunks"],
                "embedder": meta["embedder"], "dimensions": meta["dimensions"],
                "bytes": sum(f.stat().st_size for f in self.path.iterdir() if f.is_file()),
                "created": meta["created"], "fingerprint": meta["fingerprint"], "updated": meta["updated"],
                "chunk_tokens": meta["chunk_tokens"], "overlap": meta["overlap"], "store": meta["store"],
                "embedder_detail": meta["embedder_detail"]}

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        if mode not in MODES:
            raise ConfigError(f"unknown search mode {mode!r} (use {', '.join(MODES)})", field="mode")
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive integer (got {k!r})", field="k")
        if not query or not query.strip():
            raise ConfigError("the query is empty", field="query")
        depth = k if mode != "hybrid" else max(4 * k, MIN_DEPTH)
        lexical = self.store.lexical(query, depth) if mode != "dense" else []
        dense = self.store.dense(self._embed(query), depth) if mode != "bm25" else []
        ranked = {"bm25": lexical, "dense": dense}.get(mode) or []
        if mode == "hybrid":
            ranked = rrf([[row for row, _ in lexical], [row for row, _ in dense]])
        ranked = ranked[:k]
        chunks = self.store.fetch([row for row, _ in ranked])
        return [Hit(c["id"], c["source"], float(score), c["text"], c["position"])
                for row, score in ranked for c in [chunks[row]]]

    def chunk(self, chunk_id: str) -> dict:
        """Everything recorded about one chunk: document, source, position, offsets, line, text, metadata."""
        found = self.store.find(chunk_id)
        if found is None:
            raise NotFound(f"{self.path}: no chunk {chunk_id!r}")
        return found

    def _embed(self, query: str) -> np.ndarray:
        check_name(self.embedder)
        return get_embedder(self.embedder).embed([query])[0]

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _registered(name: str) -> Path:
    from ..registry.db import connect
    from ..registry.indexes import get

    with connect(create=False) as conn:
        row = get(conn, name) if conn is not None else None
    if row is None:
        raise NotFound(f"{name}: no such index folder, and no index registered under that name",
                       hint="run `tunery index list` to see the registered names")
    if not Path(row["path"]).is_dir():
        raise NotFound(f"{name}: the registered index folder {row['path']} is gone",
                       hint=f"build it again: `tunery index build DOCS --out {row['path']} --name {name}`")
    return Path(row["path"])
