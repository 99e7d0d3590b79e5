"""Stale fine-tunes: the base reference now points at different content than they were trained on.

Each distinct base reference is resolved again (a hub id may point at a newer snapshot, a folder
may hold re-saved weights) and hashed; the (path, size, mtime, inode) cache makes this a stat per
file unless something changed.
"""

from ..errors import TuneryError
from ..models import resolve_model
from ..registry import store
from ..registry.hashing import tokenizer_hash, weights_hash


def current_base(conn, base_ref: str) -> dict:
    """{"weights", "tokenizer", "path"} of what `base_ref` resolves to now, or {"error"} when it does not."""
    try:
        base = resolve_model(base_ref)
    except TuneryError as exc:
        return {"error": str(exc)}
    return {"path": str(base.path), "weights": weights_hash(conn, base.path, base.adapter),
            "tokenizer": tokenizer_hash(conn, base.tokenizer_path)}


def check(conn, rows: list[dict] | None = None) -> list[dict]:
    """Every model with a "base_now" entry: stale (bool), and why."""
    rows = store.list_models(conn) if rows is None else rows
    now = {ref: current_base(conn, ref) for ref in dict.fromkeys(r["base_ref"] for r in rows)}
    for r in rows:
        cur = now[r["base_ref"]]
        if "error" in cur:
            r["stale"], r["stale_reason"] = True, f"base is gone: {cur['error']}"
            continue
        why = []
        if r["base_weights_sha256"] and cur["weights"] != r["base_weights_sha256"]:
            why.append("base weights changed")
        if r["base_tokenizer_sha256"] and cur["tokenizer"] != r["base_tokenizer_sha256"] and not r["config"].get("template"):
            why.append("base tokenizer or chat template changed")
        r["stale"], r["stale_reason"] = bool(why), "; ".join(why) or None
    return rows
