"""Building an index from documents, incrementally: `build_index`.

A build reads the sources (documents.py), hashes every file, and compares with the index already
at `out`: new and changed documents are read, chunked (chunking.py) and embedded; unchanged ones
keep their chunks and vectors, copied from the old index; documents no longer among the sources
are dropped. So the index always holds exactly the given sources, and the embedder runs only on
what changed. Changing `chunk_tokens` or `overlap` re-chunks every document; another embedder is
refused (its vectors could not be compared with the old ones): build into a new folder. A build
that changes nothing writes nothing (it still registers the name).

Invariants:
- Atomic: every document is read and chunked, and every new chunk embedded, before anything is
  written; the new folder is then written beside the old one and renamed over it (files.atomic_dir).
  A build that fails at any point leaves the old index as it was, readable.
- `out` is replaced only when it is an index (or an empty folder): a build never deletes other files.
- The index is registered under `name` (default: the folder's name) in the registry; a name
  already registered for another folder that still exists is refused before building.
- A chunk's id is `<key>-<position>`, key = the first 12 hex digits of sha256(source, sha256): the
  same file with the same bytes always gets the same ids.

Progress (progress.py): documents chunked, then chunks embedded, EMBED_BATCH at a time.
"""

import hashlib
import re
import time
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import ConfigError, DataError
from ..files import atomic_dir, file_digest, now
from ..progress import Task
from .chunking import chunk_text
from .documents import find_files, read_texts
from .embedders import check_name, get_embedder
from .index import fingerprint
from .store import SqliteStore

FORMAT = 1  # of the folder; a build refuses to update another
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
EMBED_BATCH = 2048  # chunks embedded per call: a multiple of wordllama's own batch (256), so its batches stay the same


def build_index(sources: list[str | Path], out: str | Path, *, chunk_tokens: int = 200, overlap: int = 30,
                embedder: str = "wordllama", name: str | None = None) -> dict:
    """Build or update the index at `out` from files and folders; returns what was done:
    {"documents", "added", "updated", "removed", "unchanged", "chunks", "embedded", "skipped",
    "seconds", "chunks_per_s", "path", "name", "fingerprint"}. chunks_per_s counts the chunks this
    build chunked and embedded (all of them on a first build)."""
    t0 = time.perf_counter()
    out = Path(out).expanduser().resolve()
    name = name or out.name
    _check_options(sources, chunk_tokens, overlap, embedder, name)
    old = _old_index(out, embedder)
    _check_name_free(name, out)

    files, skipped = find_files(sources, exclude=out)
    if not files:
        raise DataError(f"{', '.join(map(str, sources))}: no documents to index (supported: .md, .txt, .html, .pdf, .jsonl)")
    digests = {str(f): file_digest(f) for f in files}
    old_docs = {d["source"]: d for d in old.documents()} if old else {}
    rechunk = bool(old) and (old.meta["chunk_tokens"], old.meta["overlap"]) != (chunk_tokens, overlap)
    keep = {s for s, sha in digests.items() if s in old_docs and old_docs[s]["sha256"] == sha and not rechunk}
    added = [s for s in digests if s not in old_docs]
    updated = [s for s in digests if s in old_docs and s not in keep]
    removed = [s for s in old_docs if s not in digests]

    counts = {"documents": len(digests), "added": len(added), "updated": len(updated), "removed": len(removed),
              "unchanged": len(keep), "skipped": skipped}
    fp = fingerprint(digests, embedder)
    if old and not (added or updated or removed):  # nothing changed: nothing to write
        total = old.meta["chunks"]
        old.close()
        return _register(t0, name, out, fp, embedder, counts, total, 0)

    # Read and chunk every new or changed document, and embed the chunks, before anything is written.
    model = get_embedder(embedder)
    new_chunks = {}
    with Task("chunk documents", len(added) + len(updated), unit="documents") as task:
        for s in [*added, *updated]:
            new_chunks[s] = _chunks(Path(s), digests[s], model, chunk_tokens, overlap)
            task.advance()
    texts = [c["text"] for s in new_chunks for c in new_chunks[s]]
    new_vectors = _embed(model, texts)
    kept_chunks = old.chunks(keep) if old else []
    kept_vectors = old.vectors([c["row"] for c in kept_chunks]) if kept_chunks else None
    created = old.meta["created"] if old else now()
    if old:
        old.close()

    # Documents in source order, each document's chunks in position order; row i holds vector i.
    by_doc: dict[str, list] = {s: [] for s in digests}
    for row, c in enumerate(kept_chunks):
        by_doc[c["document"]].append((kept_vectors, row, c))
    offset = 0
    for s, doc_chunks in new_chunks.items():
        by_doc[s] = [(new_vectors, offset + i, c) for i, c in enumerate(doc_chunks)]
        offset += len(doc_chunks)
    chunks = [{**c, "row": n} for n, (_, _, c) in enumerate(x for s in digests for x in by_doc[s])]
    vectors = np.zeros((len(chunks), model.dimensions), np.float32)
    for n, (source, row, _) in enumerate(x for s in digests for x in by_doc[s]):
        vectors[n] = source[row]

    documents = [{"source": s, "sha256": digests[s], "bytes": Path(s).stat().st_size, "chunks": len(by_doc[s])}
                 for s in digests]
    meta = {"format": FORMAT, "store": SqliteStore.kind, "embedder": embedder, "embedder_detail": model.detail,
            "dimensions": model.dimensions, "chunk_tokens": chunk_tokens, "overlap": overlap,
            "documents": len(documents), "chunks": len(chunks), "fingerprint": fp, "created": created,
            "updated": now(), "tunery": __version__}
    with atomic_dir(out) as tmp:
        SqliteStore.create(tmp, meta, documents, chunks, vectors)
    return _register(t0, name, out, fp, embedder, counts, len(chunks), len(texts))


def _embed(model, texts: list[str]) -> np.ndarray:
    with Task("embed chunks", len(texts), unit="chunks") as task:
        parts = []
        for i in range(0, len(texts), EMBED_BATCH):
            parts.append(model.embed(texts[i: i + EMBED_BATCH]))
            task.advance(len(parts[-1]))
    return np.concatenate(parts) if parts else model.embed([])


def _register(t0: float, name: str, out: Path, fp: str, embedder: str, counts: dict, chunks: int, embedded: int) -> dict:
    from ..registry.db import connect
    from ..registry.indexes import register

    with connect() as conn:
        register(conn, name, str(out), fp, counts["documents"], chunks, embedder)
    seconds = time.perf_counter() - t0
    return {**counts, "chunks": chunks, "embedded": embedded, "seconds": round(seconds, 3),
            "chunks_per_s": round(embedded / seconds, 1) if seconds else 0.0, "path": str(out), "name": name,
            "fingerprint": fp}


def _check_options(sources, chunk_tokens: int, overlap: int, embedder: str, name: str) -> None:
    if isinstance(sources, (str, Path)) or not sources:
        raise ConfigError("sources: give a list of files and folders to index", field="sources")
    if not isinstance(chunk_tokens, int) or chunk_tokens < 16:
        raise ConfigError(f"chunk_tokens must be an integer of at least 16 (got {chunk_tokens!r})", field="chunk_tokens")
    if not isinstance(overlap, int) or not 0 <= overlap <= chunk_tokens // 2:
        raise ConfigError(f"overlap must be an integer from 0 to half of chunk_tokens ({chunk_tokens // 2}) "
                          f"(got {overlap!r})", field="overlap")
    check_name(embedder)
    if not _NAME.fullmatch(name):
        raise ConfigError(f"index name {name!r}: use letters, digits, '.', '_' and '-'", field="name")


def _old_index(out: Path, embedder: str) -> SqliteStore | None:
    """The index already at `out`, if any; refuses to replace anything else, or another embedder's index."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another --out")
    if not SqliteStore.is_index(out):
        if any(out.iterdir()):
            raise DataError(f"{out}: exists and is not a tunery index; choose another --out (a build replaces the folder)")
        return None
    old = SqliteStore.open(out)
    if old.meta.get("format") != FORMAT:
        old.close()
        raise DataError(f"{out}: an index of format {old.meta.get('format')}, this tunery writes {FORMAT}; "
                        "build into a new folder")
    if old.meta["embedder"] != embedder:
        old.close()
        raise ConfigError(f"{out}: built with embedder {old.meta['embedder']!r}, not {embedder!r}; "
                          "build into a new folder to change embedders", field="embedder")
    return old


def _check_name_free(name: str, out: Path) -> None:
    from ..registry.db import connect
    from ..registry.indexes import get

    with connect(create=False) as conn:
        row = get(conn, name) if conn is not None else None
    if row and row["path"] != str(out) and Path(row["path"]).is_dir():
        raise ConfigError(f"index name {name!r} is taken by {row['path']}; pass another --name", field="name")


def _chunks(path: Path, sha: str, model, chunk_tokens: int, overlap: int) -> list[dict]:
    key = hashlib.sha256(f"{path}\0{sha}".encode()).hexdigest()[:12]
    out = []
    for text in read_texts(path):
        for c in chunk_text(text.text, model.tokens, chunk_tokens, overlap, markdown=text.markdown):
            out.append({"id": f"{key}-{len(out)}", "document": str(path), "source": text.source, "position": len(out),
                        "start": c.start, "end": c.end, "line": c.line, "text": c.text, "meta": text.meta})
    return out
