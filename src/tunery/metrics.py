"""Metrics: the generation metrics scored on a final assistant turn, and which way is better.

A generation metric takes (prediction, reference, options) and returns a score in [0, 1], higher
is better. Loss-like numbers (loss, perplexity, val_loss) are lower-is-better; `worse_by` is the
one place any comparison of two results (early stopping, checkpoint selection, compare's winner,
the retrain gate) learns which way a metric points.
"""

import importlib
import json
import re
import unicodedata
from collections.abc import Callable

from .errors import ConfigError

Metric = Callable[[str, str, dict], float]

LOWER_IS_BETTER = frozenset({"loss", "perplexity", "val_loss"})


def worse_by(name: str, old: float, new: float) -> float:
    """How much worse `new` is than `old` on metric `name`: positive worse, negative better."""
    return (new - old) if name in LOWER_IS_BETTER else (old - new)


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold().strip()
    return re.sub(r"\s+", " ", text)


def exact(pred: str, ref: str, opts: dict) -> float:
    return float(normalise(pred) == normalise(ref))


def _parse(text: str):
    try:
        return True, json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return False, None


def json_valid(pred: str, ref: str, opts: dict) -> float:
    return float(_parse(pred)[0])


def json_exact(pred: str, ref: str, opts: dict) -> float:
    ok_p, p = _parse(pred)
    ok_r, r = _parse(ref)
    return float(ok_p and ok_r and p == r)


def json_schema(pred: str, ref: str, opts: dict) -> float:
    import jsonschema

    schema = opts.get("schema")
    if schema is None:
        raise ConfigError("metric json_schema needs --schema FILE (a JSON Schema)")
    ok, value = _parse(pred)
    if not ok:
        return 0.0
    return float(jsonschema.Draft202012Validator(schema).is_valid(value))


def regex(pred: str, ref: str, opts: dict) -> float:
    pattern = opts.get("regex")
    if pattern is None:
        raise ConfigError("metric regex needs --regex PATTERN")
    return float(re.fullmatch(pattern, pred.strip(), flags=re.DOTALL) is not None)


REGEX_SECONDS = 0.1  # a format's regex against one answer


def valid(pred: str, ref: str, opts: dict) -> float:
    """1 if the answer is in the answer format (`opts["format"]`, an AnswerFormat or its dict): JSON
    matching the schema, a JSON object, a whole match of the regex, one of the choices; surrounding
    whitespace is ignored. What constrained generation guarantees, and a program needs to read it."""
    from .config import AnswerFormat

    fmt = opts.get("format")
    if fmt is None:
        raise ConfigError("metric valid needs an answer format: --schema, --regex, --choices or the model's recorded "
                          "constraint")
    fmt = fmt if isinstance(fmt, AnswerFormat) else AnswerFormat(**fmt)
    text = pred.strip()
    if fmt.choices is not None:
        return float(text in fmt.choices)
    if fmt.regex is not None:
        import regex as re2

        try:
            return float(re2.fullmatch(fmt.regex, text, timeout=REGEX_SECONDS) is not None)
        except (TimeoutError, re2.error):
            return 0.0
    ok, value = _parse(text)
    if not ok:
        return 0.0
    if fmt.json_object:
        return float(isinstance(value, dict))
    import jsonschema

    return float(jsonschema.Draft202012Validator(fmt.json_schema).is_valid(value))


def contains(pred: str, ref: str, opts: dict) -> float:
    return float(normalise(ref) in normalise(pred))


def rouge_l(pred: str, ref: str, opts: dict) -> float:
    from rouge_score import rouge_scorer

    scorer = opts.setdefault("_rouge", rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False))
    return scorer.score(ref, pred)["rougeL"].fmeasure


def chrf(pred: str, ref: str, opts: dict) -> float:
    from sacrebleu.metrics import CHRF

    scorer = opts.setdefault("_chrf", CHRF())
    return scorer.sentence_score(pred, [ref]).score / 100.0


BUILTIN: dict[str, Metric] = {
    "exact": exact, "json_valid": json_valid, "json_exact": json_exact, "json_schema": json_schema,
    "regex": regex, "contains": contains, "rougeL": rouge_l, "chrf": chrf, "valid": valid,
}


def resolve_metrics(names: list[str]) -> dict[str, Metric]:
    """Built-in names, or `module:function` for a user metric with the same signature
    (prediction, reference, options) -> float, or (prediction, reference) -> float."""
    out = {}
    for name in names:
        if name in BUILTIN:
            out[name] = BUILTIN[name]
        elif ":" in name:
            module, _, attr = name.partition(":")
            try:
                fn = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise ConfigError(f"metric {name}: cannot import ({exc})") from None
            out[name] = _adapt(fn)
        else:
            raise ConfigError(f"metric {name!r} is unknown: use one of {', '.join(BUILTIN)} or module:function")
    return out


def _adapt(fn) -> Metric:
    import inspect

    try:
        n = len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        n = 3
    return (lambda p, r, o: float(fn(p, r))) if n == 2 else (lambda p, r, o: float(fn(p, r, o)))
