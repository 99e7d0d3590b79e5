"""The model registry's storage: every fine-tune is a versioned model with lineage, in
TUNERY_HOME/registry.db. This floor sits below models/ (which resolves ft: names through it) and
imports nothing above itself; re-running a recipe lives upstairs, in tunery.workflows.

    db.py         connection (WAL, busy timeout, explicit transactions) and schema migrations
    hashing.py    content hashes of base weights and of tokenizer + chat template, cached
    store.py      recording runs and evaluations, lookups, lineage, removal
    jobs.py       the server's uploaded files, fine-tuning jobs and their events
    indexes.py    retrieval indexes registered by name (the index itself is its own folder)
    recorder.py   the training loop's and `tunery eval`'s hooks
    diff.py       what differs between two models
    report.py     the registry commands' terminal output
"""

from .db import connect, db_path

__all__ = ["connect", "db_path"]
