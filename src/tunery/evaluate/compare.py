"""Base vs prompt-only baseline vs fine-tune, on the same held-out examples.

The prompt-only baseline is what a user would try first: the base model with a system prompt
and K few-shot examples from the training data. The fine-tune gets the plain prompt.
"""

from pathlib import Path

from ..config import DataConfig
from ..errors import TuneryError
from ..generation import Generator
from ..metrics import worse_by
from ..models import resolve_model
from ..run_folder import RunFolder
from .evaluator import dataset_loss, evaluate, few_shot_messages, load_cases


def compare(base: str, tuned: str, data: str | Path, *, metrics: list[str], few_shot: int = 3,
            system: str | None = None, train_data: str | None = None, options: dict | None = None,
            max_new_tokens: int = 256, batch_size: int = 16, limit: int | None = None, seed: int = 0,
            data_config: DataConfig | None = None) -> dict:
    cases = load_cases(data, limit=limit)
    tuned_ref = resolve_model(tuned)
    if train_data is None and tuned_ref.run is not None:
        train_data = RunFolder(tuned_ref.run).read_info().data.file
    if few_shot and not train_data:
        raise TuneryError("few-shot examples come from the training data: pass --train-data FILE")
    shots = few_shot_messages(train_data, few_shot, seed, exclude=cases) if few_shot else []
    cfg = data_config or DataConfig(model=base)
    kw = dict(metrics=metrics, options=options, max_new_tokens=max_new_tokens, batch_size=batch_size)

    base_gen = Generator(base)
    base_loss = dataset_loss(base_gen, data, cfg.model_copy(update={"model": base}))
    contestants = {
        "base": evaluate(base_gen, cases, loss=base_loss, **kw),
        "prompt_only": evaluate(base_gen, cases, system=system, shots=shots, **kw),
    }
    del base_gen
    tuned_gen = Generator(tuned)
    contestants["tuned"] = evaluate(tuned_gen, cases, loss=dataset_loss(tuned_gen, data, cfg), **kw)
    return {
        "data": str(data), "base": base, "tuned": tuned, "few_shot": few_shot, "system": system,
        "examples": len(cases), "contestants": contestants, "summary": summarise(contestants, metrics),
    }


def summarise(contestants: dict, metrics: list[str]) -> dict:
    po, tu = contestants["prompt_only"], contestants["tuned"]
    wins = {}
    for name in metrics:
        tuned_worse_by = worse_by(name, po["metrics"][name], tu["metrics"][name])
        wins[name] = "tie" if abs(tuned_worse_by) < 1e-9 else ("tuned" if tuned_worse_by < 0 else "prompt_only")
    saved_tokens = po["prompt_tokens_per_request"] - tu["prompt_tokens_per_request"]
    return {
        "prompt_tokens_saved_per_request": saved_tokens,
        "prompt_tokens_saved_fraction": saved_tokens / po["prompt_tokens_per_request"] if po["prompt_tokens_per_request"] else 0.0,
        "latency_saved_s_per_request": po["latency_s_per_request"] - tu["latency_s_per_request"],
        "quality_winner": wins,
        "tuned_wins_on_quality": all(w in ("tuned", "tie") for w in wins.values()) and any(w == "tuned" for w in wins.values()),
    }
