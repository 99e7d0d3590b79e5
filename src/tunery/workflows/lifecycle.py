"""Re-running a recorded recipe: retrain on a new base (or new data), re-evaluate, gate on regressions.

Both commands evaluate on "the recorded evaluation": --eval FILE when given, else the model's
most recent recorded eval (its file, metrics and options), else its validation file, else the
validation examples split off its training file (written to RUN/eval-set.jsonl).
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, RegistryError, TuneryError, validated
from ..files import file_digest
from ..metrics import BUILTIN, resolve_metrics, worse_by
from ..registry import store
from ..registry.db import connect
from ..registry.hashing import tokenizer_hash
from ..run_folder import RunFolder

# perplexity is exp(loss): the gate checks loss, on loss's scale, and only shows perplexity.
NOT_GATED = {"perplexity"}
DEFAULT_METRICS = ["exact"]


@dataclass
class EvalPlan:
    data: Path
    metrics: list[str]
    source: str  # where the eval set came from, for the printed report
    options: dict = field(default_factory=dict)
    max_new_tokens: int = 256
    limit: int | None = None
    recorded: dict | None = None  # a recorded eval of this very set and metrics


def plan_eval(conn, row: dict, eval_file: str | None = None, metrics: list[str] | None = None,
              max_new_tokens: int | None = None, *, builtin_only: bool = False) -> EvalPlan:
    """How to evaluate `row` again: a given file, else its recorded evaluation, else its validation
    split. `builtin_only` (a request over the network): a recorded `module:function` metric is
    refused, never imported in the server."""
    history = store.evals(conn, row["id"])
    own = [e for e in history if e["base_ref"] is None]  # not the runs that tried another base
    last = (own or history or [None])[-1]
    if eval_file:
        path = Path(eval_file)
        if not path.is_file():
            raise TuneryError(f"{eval_file}: no such eval file")
        plan = EvalPlan(path, metrics or (last["params"]["metrics"] if last else DEFAULT_METRICS), "--eval",
                        options=last["params"].get("options", {}) if last else {})
    elif last:
        path = Path(last["data_file"])
        if not path.is_file():
            raise TuneryError(f"{row['name']}'s recorded eval set {path} is gone; pass --eval FILE")
        p = last["params"]
        plan = EvalPlan(path, metrics or p["metrics"], f"recorded {last['kind']} of {last['created']}",
                        options=p.get("options", {}), max_new_tokens=p.get("max_new_tokens", 256), limit=p.get("limit"))
    else:
        plan = _validation_plan(row, metrics or DEFAULT_METRICS)
    if max_new_tokens:
        plan.max_new_tokens = max_new_tokens
    if builtin_only:
        refuse_user_code(plan.metrics, row["name"], "recorded evaluation")
    resolve_metrics(plan.metrics)
    # The latest recorded result on the same bytes with the same metrics, on the model's own base.
    digest = file_digest(plan.data)
    for e in reversed(history):
        ep = e["params"]
        if (e["data_sha256"] == digest and e["base_ref"] is None and set(plan.metrics) <= set(e["results"])
                and (ep.get("limit"), ep.get("max_new_tokens"), ep.get("options") or {})
                == (plan.limit, plan.max_new_tokens, plan.options)):
            plan.recorded = e
            break
    return plan


def _validation_plan(row: dict, metrics: list[str]) -> EvalPlan:
    val = (row["data"] or {}).get("val") or {}
    if val.get("file"):
        if not Path(val["file"]).is_file():
            raise TuneryError(f"{row['name']}'s validation file {val['file']} is gone; pass --eval FILE")
        return EvalPlan(Path(val["file"]), metrics, "its validation file")
    run = RunFolder(row["run_dir"])
    try:
        lines = set(run.read_info().val.lines)
    except (OSError, ValueError, AttributeError, TypeError):
        raise TuneryError(f"{row['name']} has no recorded evaluation and no validation set; pass --eval FILE") from None
    from ..data.readers import read_rows

    train_file = row["data"]["train"]["file"]
    rows = [r for line, r in read_rows(train_file) if line in lines]
    out = run.eval_set_file
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return EvalPlan(out, metrics, f"its validation split of {train_file}")


def _data_config(row: dict):
    from ..config import DataConfig

    cfg = row["config"]
    keys = ("mask", "max_length", "template")
    return DataConfig(model=row["name"], **{k: cfg[k] for k in keys if cfg.get(k) is not None})


def _evaluate(model, plan: EvalPlan, row: dict, batch_size: int, generator=None) -> dict:
    from ..evaluate.evaluator import evaluate_model

    return evaluate_model(model, plan.data, plan.metrics, options=plan.options, max_new_tokens=plan.max_new_tokens,
                          batch_size=batch_size, limit=plan.limit, data_config=_data_config(row), generator=generator)


def _params(plan: EvalPlan) -> dict:
    return {"metrics": plan.metrics, "options": plan.options, "max_new_tokens": plan.max_new_tokens,
            "limit": plan.limit}


def compare_metrics(old: dict, new: dict, max_regression: float | None) -> tuple[list[dict], list[dict]]:
    """Rows (metric, old, new, delta, change) and the regressions beyond max_regression (absolute)."""
    rows, regressions = [], []
    for name in [m for m in old if m in new]:
        o, n = old[name], new[name]
        if o is None or n is None:
            continue
        worse = worse_by(name, o, n)
        change = "same" if abs(worse) < 1e-9 else ("worse" if worse > 0 else "better")
        row = {"metric": name, "old": o, "new": n, "delta": n - o, "worse_by": worse, "change": change,
               "gated": name not in NOT_GATED}
        rows.append(row)
        if max_regression is not None and row["gated"] and worse > max_regression + 1e-9:
            regressions.append(row)
    return rows, regressions


def _completed(conn, ref: str) -> dict:
    row = store.get(conn, ref)
    if row["status"] != "completed":
        raise RegistryError(f"{row['name']} is {row['status']}, not completed: nothing to re-run against")
    if row["files"] != "ok":
        raise RegistryError(f"{row['name']}'s weights are missing ({Path(row['run_dir']) / row['artifact']})")
    return row


def retrain(ref: str, base: str, *, data: str | None = None, eval_file: str | None = None,
            metrics: list[str] | None = None, max_regression: float | None = None, out: str | None = None,
            max_new_tokens: int | None = None, batch_size: int = 16, progress: bool = True,
            builtin_only: bool = False) -> dict:
    """Train the recorded recipe on `base` (and `data`), evaluate old and new the same way.
    `builtin_only`: as plan_eval's, for the recipe's training-time metric too."""
    from ..config import TrainConfig
    from ..training import train

    with connect() as conn:
        old = _completed(conn, ref)
        plan = plan_eval(conn, old, eval_file, metrics, max_new_tokens, builtin_only=builtin_only)
    if builtin_only:
        refuse_user_code([old["config"].get("eval_metric") or "exact"], old["name"], "recipe's eval_metric")
    recipe = dict(old["config"]) | {"model": base, "resume": False, "derived_from": old["id"], "suffix": old["suffix"]}
    # The recorded absolute paths, not config.yaml's, which may be relative to another folder.
    recipe["data"] = data or old["data"]["train"]["file"]
    if data:
        recipe["format"] = "auto"
    if (old["data"].get("val") or {}).get("file"):
        recipe["val_data"] = old["data"]["val"]["file"]
    recipe["out"] = out or str(RunFolder.default(recipe["data"], recipe["method"]).path)
    notes = _data_notes(old, data)
    cfg = validated(TrainConfig, f"{old['name']}'s recorded recipe: ", **recipe)

    before = _evaluate(old["name"], plan, old, batch_size)  # first: a broken old model fails before training
    run = train(cfg, progress=progress)
    after = _evaluate(run.info.name, plan, old, batch_size)
    rows, regressions = compare_metrics(before["metrics"], after["metrics"], max_regression)
    with connect() as conn:
        for model_id, result in ((old["id"], before), (run.info.id, after)):
            store.record_eval(conn, model_id, "retrain", plan.data, len(result["examples"]), _params(plan),
                              result["metrics"])
    return {"kind": "retrain", "old": old["name"], "new": run.info.name, "new_run": str(run.dir), "base": base,
            "notes": notes,
            "eval": {"data": str(plan.data), "source": plan.source, "examples": len(after["examples"]),
                     "metrics": plan.metrics},
            "old_label": f"{old['name']} (on {old['base_ref']})",
            "new_label": f"{run.info.name} (on {base}, in {run.dir})", "rows": rows,
            "max_regression": max_regression, "regressions": regressions}


def refuse_user_code(metrics: list[str], name: str, what: str) -> None:
    """A ConfigError if any metric is a user's `module:function` (code the CLI runs, a server does not)."""
    custom = [m for m in metrics if m not in BUILTIN]
    if custom:
        raise ConfigError(f"metrics: {name}'s {what} uses {', '.join(custom)}, code a server does not import for "
                          "a request; run it from the command line (tunery reeval / retrain)", "metrics")


def _data_notes(old: dict, data: str | None) -> list[str]:
    """Refuse a recipe whose data is gone (before any compute); note data that changed since."""
    if data:
        return []
    rec = old["data"]["train"]
    if not Path(rec["file"]).is_file():
        raise TuneryError(f"{old['name']}'s training data {rec['file']} is gone; pass --data FILE")
    if file_digest(Path(rec["file"])) != rec["sha256"]:
        return [f"{rec['file']} changed since {old['name']} was trained on it (its sha256 differs)"]
    return []


def reeval(ref: str, *, base: str | None = None, eval_file: str | None = None, metrics: list[str] | None = None,
           max_regression: float | None = None, max_new_tokens: int | None = None, batch_size: int = 16,
           builtin_only: bool = False) -> dict:
    """Re-run the recorded evaluation, optionally with the adapter applied to another base
    (`builtin_only`: as plan_eval's)."""
    from ..generation import Generator
    from ..models import resolve_model

    with connect() as conn:
        old = _completed(conn, ref)
        plan = plan_eval(conn, old, eval_file, metrics, max_new_tokens, builtin_only=builtin_only)
        target, notes = old["name"], []
        if base is not None:
            if old["artifact"] != "adapter":
                raise TuneryError(f"{old['name']} is a full fine-tune: its weights replace any base, so there is no "
                                  f"adapter to apply to {base}; use `tunery retrain {old['name']} --base {base}`")
            target, note = _adapter_on(conn, old, resolve_model(base))
            notes += [note] if note else []
    try:
        generator = Generator(target)
    except (RuntimeError, ValueError, KeyError) as exc:
        if base is None:
            raise
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "size mismatch" in ln), lines[-1] if lines else type(exc).__name__)
        raise TuneryError(f"the adapter of {old['name']} does not fit {base} ({detail}); "
                          f"a retrain is needed: tunery retrain {old['name']} --base {base}") from None
    after = _evaluate(target, plan, old, batch_size, generator=generator)
    del generator
    if plan.recorded is not None:
        before, before_label = plan.recorded["results"], f"recorded {plan.recorded['created']}"
    else:
        before, before_label = _evaluate(old["name"], plan, old, batch_size)["metrics"], "as trained"
    rows, regressions = compare_metrics(before, after["metrics"], max_regression)
    with connect() as conn:
        store.record_eval(conn, old["id"], "reeval", plan.data, len(after["examples"]), _params(plan),
                          after["metrics"], base_ref=str(target.path) if base else None)
    return {"kind": "reeval", "old": old["name"], "base": base, "notes": notes,
            "eval": {"data": str(plan.data), "source": plan.source, "examples": len(after["examples"]),
                     "metrics": plan.metrics},
            "old_label": f"{old['name']} {before_label}",
            "new_label": f"{old['name']} " + (f"adapter on {base}" if base else "now"), "rows": rows,
            "max_regression": max_regression, "regressions": regressions}


def _adapter_on(conn, old: dict, new_base):
    """The old adapter over a new base, read with the new base's tokenizer (the base only knows its
    own); returns (ResolvedModel, a note when the tokenizer or template differ from training)."""
    from ..models import ResolvedModel

    run = RunFolder(old["run_dir"])
    resolved = ResolvedModel(old["name"], run.path.name, new_base.path, "run", adapter=run.artifact("adapter"), run=run.path,
                             tokenizer=new_base.tokenizer_path)
    note = None
    if tokenizer_hash(conn, new_base.tokenizer_path) != old["base_tokenizer_sha256"]:
        note = "the new base's tokenizer or chat template differs from the one the adapter was trained with"
    return resolved, note
