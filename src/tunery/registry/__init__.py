"""The model registry: every fine-tune is a versioned model with lineage, in TUNERY_HOME/registry.db.

    db.py         connection (WAL, busy timeout, explicit transactions) and schema migrations
    hashing.py    content hashes of base weights and of tokenizer + chat template, cached
    store.py      recording runs and evaluations, lookups, lineage, removal
    recorder.py   the training loop's and `tunery eval`'s hooks
    stale.py      fine-tunes whose base reference now holds different content
    diff.py       what differs between two models
    lifecycle.py  retrain on a new base, re-evaluate, regression gate
"""

from .db import connect, db_path
from .lifecycle import reeval, retrain

__all__ = ["connect", "db_path", "reeval", "retrain"]
