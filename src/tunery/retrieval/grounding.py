"""Retrieval applied to training and evaluation examples: each example's last user message (before
its final answer) is the query, and the index's top-k chunks go into that message in the one
layout (layout.py).

Distractors (RAFT, Zhang et al. 2024, found training on some examples whose context lacks the
answer makes a model robust to bad retrieval): a fixed fraction of examples, chosen by a hash of
(seed, line) so the choice is the same on every run, get k chunks that do not hold the answer
(ranked just below the top ones: plausible, but wrong). Their answer stays the file's own, as in
RAFT, unless `unknown` names the answer to give instead (e.g. "I don't know.").

Whether the context holds the answer is checked by text: the normalised answer appears in a
retrieved chunk. `summary()` gives the hit rate the data doctor reports.
"""

import hashlib
import re
import unicodedata
from dataclasses import dataclass

from .layout import LAYOUT, query_of, with_context


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()


@dataclass
class Grounding:
    index: object  # retrieval.Index
    k: int = 3
    distractors: float = 0.0
    seed: int = 42
    unknown: str | None = None
    hits: int = 0  # examples whose context holds the answer (counts: a large file's scan stays bounded)
    misses: int = 0
    distracted: int = 0

    def is_distractor(self, line: int) -> bool:
        if self.distractors <= 0:
            return False
        h = hashlib.blake2b(f"{self.seed}:{line}".encode(), digest_size=8).digest()
        return int.from_bytes(h, "big") / 2**64 < self.distractors

    def __call__(self, conv):
        """(the conversation with context, an (code, message) warning or None). Plain text and
        conversations without an answer are left as they are."""
        msgs = conv.messages
        last = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=None)
        if conv.text is not None or last is None:
            return conv, None
        head, answer = msgs[:last], msgs[last].get("content") or ""
        query = query_of(head)
        if not query:
            return conv, None
        distractor = self.is_distractor(conv.line)
        found = self.index.search(query, k=self.k * (3 if distractor else 1))
        holds = [h for h in found if holds_answer(h.text, answer)]
        warning = None
        if distractor:
            found = [h for h in found if h not in holds][-self.k:]
            self.distracted += 1
            tail = msgs[last:] if self.unknown is None else [dict(msgs[last], content=self.unknown), *msgs[last + 1:]]
        else:
            found = found[: self.k]
            tail = msgs[last:]
            if any(h in found for h in holds):
                self.hits += 1
            else:
                self.misses += 1
                warning = ("retrieval_miss", f"none of the top {self.k} chunks for this question holds its answer")
        conv = type(conv)(**{**conv.__dict__, "messages": with_context(head, found) + tail})
        return conv, warning

    def summary(self) -> dict:
        checked = self.hits + self.misses
        return {"layout": LAYOUT, "k": self.k, "distractors": self.distracted, "checked": checked,
                "hit_rate": round(self.hits / checked, 4) if checked else None}

    def record(self) -> dict:
        """What a run records of its grounding (run.json and the registry: the lineage of its facts)."""
        info = self.index.info()
        return self.summary() | {"index": str(info["path"]), "fingerprint": info["fingerprint"],
                                 "documents": self.index.documents(), "embedder": info["embedder"]}


def grounding_for(cfg, *, distractors: bool = True) -> Grounding | None:
    """The Grounding a DataConfig / TrainConfig asks for (`retrieval`, `retrieval_k`, ...), or None."""
    if not getattr(cfg, "retrieval", None):
        return None
    from .index import Index

    return Grounding(Index.open(cfg.retrieval), cfg.retrieval_k,
                     cfg.retrieval_distractors if distractors else 0.0, getattr(cfg, "seed", 42), cfg.retrieval_unknown)


def holds_answer(chunk: str, answer: str) -> bool:
    """The answer's text (normalised: case, width, whitespace) appears in the chunk; for a JSON
    answer (a format around the facts), each of its string and number values does."""
    import json

    c = _norm(chunk)
    try:
        parsed = json.loads(answer)
    except (ValueError, TypeError):
        parsed = None
    if isinstance(parsed, (dict, list)):
        leaves = [str(v) for v in _leaves(parsed) if str(v).strip()]
        return bool(leaves) and all(_norm(v) in c for v in leaves)
    a = _norm(answer)
    return bool(a) and a in c


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    elif value is not None and not isinstance(value, bool):
        yield value
