"""Base vs prompt-only baseline vs fine-tune, on the same held-out examples.

The prompt-only baseline is what a user would try first: the base model with a system prompt
and K few-shot examples from the training data. The fine-tune gets the plain prompt. With an
index, two more: `base_rag` (the base with the system prompt and each question's retrieved
context) and `tuned_rag` (the fine-tune with the same context), in the layout training uses.
Under an answer format with constrained generation (options from evaluator.format_options),
every contestant runs twice: as is, and as `<name>_constrained`, its answers held to the format.
"""

from pathlib import Path

from ..config import DataConfig
from ..errors import TuneryError
from ..generation import Generator
from ..metrics import worse_by
from ..models import resolve_model
from ..run_folder import RunFolder
from .evaluator import dataset_loss, evaluate, few_shot_messages, load_cases, retrieve


def compare(base: str, tuned: str, data: str | Path, *, metrics: list[str], few_shot: int = 3,
            system: str | None = None, train_data: str | None = None, options: dict | None = None,
            max_new_tokens: int = 256, batch_size: int = 16, limit: int | None = None, seed: int = 0,
            data_config: DataConfig | None = None, retrieval: str | None = None, retrieval_k: int = 3) -> dict:
    cases = load_cases(data, limit=limit)
    found = retrieve(cases, retrieval, retrieval_k) if retrieval else None
    tuned_ref = resolve_model(tuned)
    if train_data is None and tuned_ref.run is not None:
        train_data = RunFolder(tuned_ref.run).read_info().data.file
    if few_shot and not train_data:
        raise TuneryError("few-shot examples come from the training data: pass --train-data FILE")
    shots = few_shot_messages(train_data, few_shot, seed, exclude=cases) if few_shot else []
    cfg = data_config or DataConfig(model=base)
    options = dict(options or {})
    both = bool(options.get("constrained"))  # each contestant as is, and held to the format
    kw = dict(metrics=metrics, max_new_tokens=max_new_tokens, batch_size=batch_size)
    contestants = {}

    def run(name: str, gen, **more):
        contestants[name] = evaluate(gen, cases, options=options | {"constrained": False}, label=f"generate {name}",
                                     **kw, **more)
        if both:
            more.pop("loss", None)  # the same model: its loss is the free run's
            contestants[f"{name}_constrained"] = evaluate(gen, cases, options=options, label=f"generate {name}_constrained",
                                                          **kw, **more)

    base_gen = Generator(base)
    run("base", base_gen, loss=dataset_loss(base_gen, data, cfg.model_copy(update={"model": base})))
    run("prompt_only", base_gen, system=system, shots=shots)
    if found:
        run("base_rag", base_gen, system=system, retrieved=found["hits"])
    del base_gen
    tuned_gen = Generator(tuned)
    run("tuned", tuned_gen, loss=dataset_loss(tuned_gen, data, cfg))
    if found:
        run("tuned_rag", tuned_gen, retrieved=found["hits"])
    training = None
    if tuned_ref.run is not None:
        final = RunFolder(tuned_ref.run).read_info().final
        training = {"seconds": final.seconds, "trained_tokens": final.trained_tokens} if final else None
    return {
        "data": str(data), "base": base, "tuned": tuned, "few_shot": few_shot, "system": system,
        "examples": len(cases), "contestants": contestants,
        "summary": summarise(contestants, metrics, (judged := verdict(contestants, metrics[0], training))["best_tuned"]),
        "verdict": judged,
        **({"retrieval": {k: v for k, v in found.items() if k != "hits"}} if found else {}),
    }


TUNED = ("tuned", "tuned_rag", "tuned_constrained", "tuned_rag_constrained")  # needed a fine-tune; the others did not
SAME = 0.01  # quality within this (absolute, on the verdict's metric) counts as the same


def verdict(contestants: dict, metric: str, training: dict | None) -> dict:
    """Should this task be fine-tuned at all? The best contestant without a fine-tune (prompting,
    retrieval) against the best with one, on `metric` first, then on what each request costs
    (prompt tokens, latency), with the training's cost repaid by the latency saved."""

    def best(names):
        # Higher quality first; on equal quality, the cheaper request.
        return min(names, key=lambda n: (round(worse_by(metric, 0.0, contestants[n]["metrics"][metric]), 9),
                                          contestants[n]["latency_s_per_request"]))

    untuned = best([n for n in contestants if n not in TUNED])
    tuned = best([n for n in contestants if n in TUNED])
    u, t = contestants[untuned], contestants[tuned]
    gain = -worse_by(metric, u["metrics"][metric], t["metrics"][metric])  # > 0: the fine-tune is better
    tokens_saved = u["prompt_tokens_per_request"] - t["prompt_tokens_per_request"]
    latency_saved = u["latency_s_per_request"] - t["latency_s_per_request"]
    seconds = (training or {}).get("seconds")
    break_even = (round(seconds / latency_saved) if seconds is not None and latency_saved > 0 else None)
    what = f"{metric} {t['metrics'][metric]:.3f} ({tuned}) vs {u['metrics'][metric]:.3f} ({untuned})"
    costs = (f"{tokens_saved:+.0f} prompt tokens and {latency_saved * 1000:+.0f} ms saved per request")
    if gain < -SAME:
        worth, text = False, (f"Not worth fine-tuning: {untuned} (no fine-tune) scores higher, {what}. "
                              "Keep the prompt (and retrieval).")
    elif gain > SAME:
        worth, text = True, f"Worth it: the fine-tune is better, {what}; {costs}."
    elif latency_saved > 0 or tokens_saved > 0:
        repay = (f"; its {seconds:g} s of training are repaid by the time saved after about {break_even:,} requests"
                 if break_even is not None else "")
        worth, text = True, f"Worth it for the cost per request: the same quality ({what}), {costs}{repay}."
    else:
        worth, text = False, (f"Not worth fine-tuning: the same quality ({what}) and no request is cheaper "
                              f"({costs}); {untuned} does the job with less upkeep.")
    return {"metric": metric, "best_untuned": untuned, "best_tuned": tuned, "quality_gain": gain,
            "prompt_tokens_saved_per_request": tokens_saved, "latency_saved_s_per_request": latency_saved,
            "training": training, "break_even_requests": break_even, "worth_it": worth, "text": text}


def summarise(contestants: dict, metrics: list[str], tuned: str = "tuned") -> dict:
    """The fine-tune `tuned` (the verdict's best) against the prompt-only baseline run the same way:
    both constrained, or both as is (the baseline gets no retrieval: it is the prompt alone)."""
    baseline = "prompt_only_constrained" if tuned.endswith("_constrained") and "prompt_only_constrained" in contestants \
        else "prompt_only"
    po, tu = contestants[baseline], contestants[tuned]
    wins = {}
    for name in metrics:
        tuned_worse_by = worse_by(name, po["metrics"][name], tu["metrics"][name])
        wins[name] = "tie" if abs(tuned_worse_by) < 1e-9 else ("tuned" if tuned_worse_by < 0 else "prompt_only")
    saved_tokens = po["prompt_tokens_per_request"] - tu["prompt_tokens_per_request"]
    return {
        "tuned": tuned, "baseline": baseline,
        "prompt_tokens_saved_per_request": saved_tokens,
        "prompt_tokens_saved_fraction": saved_tokens / po["prompt_tokens_per_request"] if po["prompt_tokens_per_request"] else 0.0,
        "latency_saved_s_per_request": po["latency_s_per_request"] - tu["latency_s_per_request"],
        "quality_winner": wins,
        "tuned_wins_on_quality": all(w in ("tuned", "tie") for w in wins.values()) and any(w == "tuned" for w in wins.values()),
    }
