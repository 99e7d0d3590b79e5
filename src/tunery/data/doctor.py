"""The data doctor: everything wrong with a dataset file, and what training would see, before
any compute is spent."""

import itertools
from collections import Counter
from pathlib import Path

from ..config import DataConfig, suggest_epochs
from ..errors import DataError
from .dataset import MAX_LISTED, Scan, scan_file
from .formats import Invalid, normalise, rows_with_format
from .render import Renderer
from .template import load_template

def make_renderer(tokenizer, cfg: DataConfig) -> Renderer:
    return Renderer(tokenizer, load_template(tokenizer, cfg.template), cfg.mask)


def check_dataset(path: str | Path, cfg: DataConfig | None = None, tokenizer=None, ground=None, **overrides) -> dict:
    """Check a dataset file against a model's template; return the report as a plain dict.

    The report's shape is the `tunery data check --json` output:
    {"ok", "examples", "good", "errors": [{"line","code","message"}], "warnings": [...], "stats"}.
    """
    cfg = (cfg or DataConfig()).model_copy(update=overrides)
    if tokenizer is None:
        from ..models import load_tokenizer

        tokenizer = load_tokenizer(cfg.model)
    scan = scan_file(path, make_renderer(tokenizer, cfg), max_length=cfg.max_length,
                     overlong=cfg.overlong, fmt=cfg.format, ground=ground)
    report = report_from_scan(scan, cfg)
    if ground is not None:  # retrieval: how often the context holds the answer, before any compute
        report["retrieval"] = ground.summary()
    return report


def report_from_scan(scan: Scan, cfg: DataConfig) -> dict:
    lengths = sorted(scan.length_counts.items())  # (tokens, examples), shortest first
    stats = {
        "file": str(scan.path),
        "format": scan.format,
        "model": cfg.model,
        "mask": cfg.mask,
        "max_length": cfg.max_length,
        "overlong": cfg.overlong,
        "bad": scan.bad,
        "dropped": scan.dropped,
        "truncated": scan.truncated,
        "duplicates": scan.duplicates,
        "tokens_per_example": _summary(lengths),
        "histogram": _histogram(lengths),
        "trainable_tokens": scan.trained_tokens,
        "tokens_per_epoch": scan.epoch_tokens,
        "suggested_epochs": suggest_epochs(scan.n_kept),
    }
    return {
        "ok": scan.ok,
        "examples": scan.examples,
        "good": scan.n_kept,
        "errors": [e.as_dict() for e in scan.errors[:MAX_LISTED]],
        "warnings": [w.as_dict() for w in scan.warnings[:MAX_LISTED]],
        "error_count": scan.error_count,
        "warning_count": scan.warning_count,
        "stats": stats,
    }


def _summary(lengths: list[tuple[int, int]]) -> dict:
    """min, median, p95 (nearest rank), max and mean of lengths given as sorted (length, count) pairs."""
    n = sum(c for _, c in lengths)
    if not n:
        return {"min": 0, "median": 0, "p95": 0, "max": 0, "mean": 0}

    def nth(k: int) -> int:  # the k-th (0-based) of the sorted lengths
        for length, count in lengths:
            if k < count:
                return length
            k -= count
        raise IndexError(k)

    median = nth(n // 2) if n % 2 else (nth(n // 2 - 1) + nth(n // 2)) / 2
    return {"min": lengths[0][0], "median": median, "p95": nth(min(n - 1, int(round(0.95 * (n - 1))))),
            "max": lengths[-1][0], "mean": round(sum(length * c for length, c in lengths) / n, 1)}


def _histogram(lengths: list[tuple[int, int]], bins: int = 10) -> list[dict]:
    if not lengths:
        return []
    lo, hi = lengths[0][0], lengths[-1][0]
    width = max(1, -(-(hi - lo + 1) // bins))
    counts = Counter()
    for n, c in lengths:
        counts[min(bins - 1, (n - lo) // width)] += c
    return [{"lo": lo + i * width, "hi": lo + (i + 1) * width - 1, "count": counts[i]} for i in range(bins)
            if counts[i] or i * width + lo <= hi]


def render_example(path: str | Path, k: int, cfg: DataConfig, tokenizer=None) -> tuple[int, list[tuple[str, bool]]]:
    """Example k (1-based) as (line, [(text, trained)]) pieces, grouped by mask value (a preference
    pair: its chosen side then its rejected side, each after a label piece)."""
    if tokenizer is None:
        from ..models import load_tokenizer

        tokenizer = load_tokenizer(cfg.model)
    renderer = make_renderer(tokenizer, cfg)
    fmt, rows = rows_with_format(path, cfg.format)
    picked = next(itertools.islice(rows, k - 1, k), None) if k >= 1 else None
    if picked is None:
        raise DataError(f"{path}: there is no example {k} (examples are numbered from 1)")
    line, row = picked
    conv, issues = normalise(line, row, fmt)
    if conv is None:
        raise DataError(f"{path}:{line}: {issues[0].message} [{issues[0].code}]")
    enc = renderer.encode_many([conv])[0]
    if isinstance(enc, Invalid):
        raise DataError(f"{path}:{line}: {enc} [{enc.code}]")
    pieces = []
    sides = [("", enc)] if not hasattr(enc, "rejected") else [("[chosen]\n", enc.chosen), ("\n[rejected]\n", enc.rejected)]
    for label, side in sides:  # a preference pair: both sides, labelled
        if label:
            pieces.append((label, False))
        for trained, group in itertools.groupby(zip(side.input_ids, side.loss_mask), key=lambda p: p[1]):
            ids = [t for t, _ in group]
            pieces.append((tokenizer.decode(ids, skip_special_tokens=False), bool(trained)))
    return line, pieces
