"""Retrieval indexes: documents cut into chunks, searchable by BM25, by embedding, or both fused.

    build_index(sources, out, ...)  -> report     build.py: incremental and atomic, registered by name
    Index.open(path or name)        -> Index      index.py: search, info, documents, fingerprint
    Index.search(query, k, mode)    -> [Hit]

    documents.py  finding files, reading .md .txt .html .pdf .jsonl as text
    chunking.py   structure-aware chunks within a token budget, with overlap
    embedders.py  the embedding model interface; wordllama, offline, by default
    store.py      the storage interface; SQLite (FTS5 + metadata) with numpy vectors, one folder
    layout.py     the one prompt layout of retrieved context (training, eval and serving share it)
    grounding.py  retrieval applied to examples: context, RAFT distractors, the hit rate

This floor sits right above data/ and imports only the floors up to the registry (errors, files,
home, run_folder, config, registry), so training, evaluation and serving can all use it. The
embedding model loads when a build changes the index or a search embeds a query.
"""

from .build import build_index
from .grounding import Grounding, grounding_for
from .index import Hit, Index
from .layout import LAYOUT, query_of, with_context

__all__ = ["LAYOUT", "Grounding", "Hit", "Index", "build_index", "grounding_for", "query_of", "with_context"]
