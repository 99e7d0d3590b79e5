"""What differs between two registered models: recipe, data, base and results."""

# Where a run was written and how it was started say nothing about the recipe itself; the base
# and data files are compared by content in their own sections.
NOT_RECIPE = {"out", "resume", "derived_from", "model", "data", "val_data"}


def _pairs(a: dict, b: dict, skip=()) -> dict:
    return {k: [a.get(k), b.get(k)] for k in dict.fromkeys([*a, *b]) if k not in skip and a.get(k) != b.get(k)}


def _data(row: dict) -> dict:
    out = {}
    for role in ("train", "val"):
        d = (row["data"] or {}).get(role) or {}
        for k in ("file", "sha256", "examples", "used", "split", "format"):
            if d.get(k) is not None:
                out[f"{role}.{k}"] = d[k]
    return out


def _base(row: dict) -> dict:
    return {"reference": row["base_ref"], "name": row["base_name"], "weights_sha256": row["base_weights_sha256"],
            "tokenizer_sha256": row["base_tokenizer_sha256"]}


def _results(conn, row: dict) -> dict:
    """Final training metrics, and the latest recorded eval per (data file hash)."""
    from .store import evals

    out = {f"train.{k}": v for k, v in (row["metrics"] or {}).items()
           if k in ("train_loss", "val_loss", "steps", "trained_tokens") or k.startswith("eval_")}
    for e in evals(conn, row["id"]):
        if e["base_ref"] is None:
            for k, v in e["results"].items():
                out[f"eval[{e['data_sha256'][:8]}].{k}"] = v
    return out


def diff(conn, a: dict, b: dict) -> dict:
    """{"a", "b", "config", "data", "base", "metrics", "versions"}: each maps a key to [a, b], only where they
    differ (metrics: every key either side has, with the delta, so "same" results show too)."""
    ra, rb = _results(conn, a), _results(conn, b)
    metrics = {}
    for k in dict.fromkeys([*ra, *rb]):
        va, vb = ra.get(k), rb.get(k)
        delta = vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
        metrics[k] = [va, vb, delta]
    return {
        "a": a["name"], "b": b["name"],
        "config": _pairs(a["config"], b["config"], NOT_RECIPE),
        "data": _pairs(_data(a), _data(b)),
        "base": _pairs(_base(a), _base(b)),
        "metrics": metrics,
        "versions": _pairs(a["versions"], b["versions"]),
        "lineage": {"a_derived_from": a["derived_from"], "b_derived_from": b["derived_from"]},
    }
