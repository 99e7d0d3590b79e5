"""Evaluate one model on a dataset: loss and perplexity on the trained tokens, and generation
metrics on each example's final assistant turn (batched, greedy, stopping at end of turn).

On a preference file the final turn is each pair's chosen answer, and two more metrics compare
the pair's answers by the model's summed log-probability, as DPO training scores them:
pref_accuracy (the share of pairs whose chosen answer is the more likely) and pref_margin (the
mean of log p(chosen) - log p(rejected), in nats).

An answer format (`options["format"]`, an AnswerFormat as a dict) adds the metric `valid` (the
share of answers in the format); `options["constrained"]` generates under it (constrain.py), each
answer with its own grammar state in the batch; `options["score"]` (a format of choices) scores
every choice by its log-probability instead of generating (choices.py): the most likely is the
answer, and choice_accuracy and choice_top3 are reported. The options are recorded with an
evaluation, so reeval and retrain run it the same way."""

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import AnswerFormat, DataConfig
from ..data.dataset import check_hint, scan_file
from ..data.doctor import make_renderer
from ..data.formats import normalise, rows_with_format
from ..errors import ConfigError, DataError
from ..metrics import resolve_metrics
from ..progress import Task


@dataclass
class Case:
    line: int
    prompt: list[dict]  # messages up to the final assistant turn
    reference: str  # the final assistant turn's content
    source: str | None = None  # the document that holds the answer, when the row names it ("source")


def load_cases(path: str | Path, fmt: str = "auto", limit: int | None = None) -> list[Case]:
    fmt, rows = rows_with_format(path, fmt)
    cases = []
    for line, row in rows:
        conv, issues = normalise(line, row, fmt)
        if conv is None:
            raise DataError(f"{path}:{line}: {issues[0].message} [{issues[0].code}]", hint=check_hint(path))
        if conv.text is not None:
            raise DataError(f"{path}:{line}: plain-text examples have no answer to score; use a chat-like format")
        last = max(i for i, m in enumerate(conv.messages) if m["role"] == "assistant")
        source = row.get("source") if isinstance(row, dict) and isinstance(row.get("source"), str) else None
        cases.append(Case(line, conv.messages[:last], conv.messages[last]["content"], source))
        if limit and len(cases) >= limit:
            break
    if not cases:
        raise DataError(f"{path}: no examples to evaluate")
    return cases


def few_shot_messages(path: str | Path, k: int, seed: int = 0, exclude: list["Case"] | None = None) -> list[dict]:
    """K user/assistant pairs from the training data, as turns before the real question; never an
    example whose prompt is one of the evaluated ones (that would leak the answer)."""
    held_out = {_key(c.prompt) for c in exclude or []}
    pool = [c for c in load_cases(path) if _key(c.prompt) not in held_out]
    random.Random(seed).shuffle(pool)
    turns = []
    for case in pool[:k]:
        turns += [m for m in case.prompt if m["role"] != "system"] + [{"role": "assistant", "content": case.reference}]
    return turns


def _key(messages: list[dict]) -> str:
    return "\x00".join(m["content"] for m in messages if m["role"] != "system")


def with_prompting(prompt: list[dict], system: str | None, shots: list[dict]) -> list[dict]:
    body = [m for m in prompt if m["role"] != "system"] if system else list(prompt)
    return ([{"role": "system", "content": system}] if system else []) + shots + body


def scan_for_eval(generator, path: str | Path, cfg: DataConfig, ground=None):
    """The file's examples encoded as training encodes them (grounded the same way when `ground` is
    given), overlong ones truncated, kept in memory: what the loss and the preference scores read."""
    return scan_file(path, make_renderer(generator.tokenizer, cfg), max_length=cfg.max_length,
                     overlong="truncate", fmt=cfg.format, keep=True, ground=ground)


def dataset_loss(generator, path: str | Path, cfg: DataConfig, batch_size: int = 8, ground=None,
                 scan=None) -> float | None:
    """Mean cross-entropy per trained token, computed exactly as training computes it (`scan`: the
    file's scan_for_eval, when the caller has it)."""
    import torch

    from ..training.batches import collate
    from ..training.loss import TokenLoss

    scan = scan or scan_for_eval(generator, path, cfg, ground)
    kept = scan.kept[0::2] if scan.format == "preference" else scan.kept  # pairs are stored chosen, rejected
    if not kept:
        return None
    loss_fn = TokenLoss(generator.model)
    device = next(generator.model.parameters()).device
    total, count = 0.0, 0
    examples = sorted(kept, key=lambda e: len(e.input_ids))
    with torch.inference_mode():
        for i in range(0, len(examples), batch_size):
            loss_sum, n = loss_fn(**collate(examples[i: i + batch_size], generator.tokenizer.pad_token_id, device))
            total += loss_sum.item()
            count += int(n)
    return total / max(count, 1)


def preference_scores(generator, scan, batch_size: int = 8) -> dict | None:
    """{"pref_accuracy", "pref_margin", "pairs"} from a preference file's scan_for_eval (None for any other)."""
    import contextlib
    import functools

    from ..data.dataset import Pairs
    from ..training.batches import collate
    from ..training.distributed import World
    from ..training.loss import TokenLoss
    from ..training.objectives import sequence_logprobs

    if scan.format != "preference" or not scan.kept:
        return None
    device = next(generator.model.parameters()).device
    batch_of = functools.partial(collate, pad_id=generator.tokenizer.pad_token_id, device=device)
    logp = sequence_logprobs(TokenLoss(generator.model), Pairs(scan.kept), batch_of, contextlib.nullcontext,
                             batch_size, World())
    diff = logp[:, 0] - logp[:, 1]
    return {"pref_accuracy": float((diff > 0).double().mean()), "pref_margin": float(diff.mean()), "pairs": len(diff)}


def retrieve(cases: list[Case], index_ref: str, k: int) -> dict:
    """Each case's context from an index (its last user message is the query): {"hits": [[Hit]],
    "index", "k", "answer_in_context"} (the share of cases whose reference appears in a chunk),
    and "recall_at_k" over the cases whose row names its `source` document (a hit's source is that
    path or ends with it)."""
    from ..retrieval import Index, query_of
    from ..retrieval.grounding import holds_answer

    index = Index.open(index_ref)
    hits = [index.search(query_of(c.prompt), k=k) for c in cases]
    found = sum(any(holds_answer(h.text, c.reference) for h in hs) for c, hs in zip(cases, hits))
    known = [(c, hs) for c, hs in zip(cases, hits) if c.source]
    recall = (sum(any(h.source == c.source or h.source.endswith("/" + c.source.lstrip("/")) for h in hs)
                  for c, hs in known) / len(known)) if known else None
    return {"hits": hits, "index": str(index.info()["path"]), "k": k, "answer_in_context": found / max(len(cases), 1),
            "recall_at_k": recall, "with_source": len(known)}


def evaluate(generator, cases: list[Case], metrics: list[str], *, system: str | None = None,
             shots: list[dict] | None = None, options: dict | None = None, max_new_tokens: int = 256,
             batch_size: int = 16, loss: float | None = None, retrieved: list | None = None,
             label: str = "generate") -> dict:
    """Score one contestant. Returns {"metrics": {name: mean}, "examples": [...], per-request costs}.
    `retrieved` (one list of hits per case) puts each case's context into its question, in the
    layout training with retrieval uses. `label` names its progress."""
    options = dict(options or {})
    fmt = format_of(options)
    fns = resolve_metrics(metrics + (["valid"] if fmt is not None and "valid" not in metrics else []))
    prompts = [with_prompting(c.prompt, system, shots or []) for c in cases]
    if retrieved is not None:
        from ..retrieval import with_context

        prompts = [with_context(p, hits) for p, hits in zip(prompts, retrieved)]
    t0 = time.perf_counter()
    ranked, constraints = None, None
    if options.get("score"):
        outputs, ranked = _scored(generator, prompts, fmt)
    else:
        if fmt is not None and options.get("constrained"):
            from ..constrain import Constraint

            first = Constraint.from_format(fmt, generator.tokenizer, generator.stop_ids, "constraint")
            constraints = [first] + [first.copy() for _ in prompts[1:]]
        outputs = _answers(generator, prompts, max_new_tokens, batch_size, label, constraints)
    seconds = time.perf_counter() - t0
    examples, sums = [], {name: 0.0 for name in fns}
    for k, (case, out) in enumerate(zip(cases, outputs)):
        scores = {name: fn(out.text, case.reference, options) for name, fn in fns.items()}
        if ranked is not None:
            from .choices import choice_scores

            scores |= choice_scores(ranked[k], case.reference)
        for name, v in scores.items():
            sums[name] = sums.get(name, 0.0) + v
        examples.append({"line": case.line, "prompt": case.prompt[-1]["content"] if case.prompt else "",
                         "reference": case.reference, "prediction": out.text, "scores": scores,
                         "prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens}
                        | ({"top": [[c, round(p, 4)] for c, p in ranked[k][:3]]} if ranked is not None else {})
                        | ({"grammar_error": constraints[k].error[:200]}
                           if constraints is not None and constraints[k].error else {}))
    means = {name: s / len(cases) for name, s in sums.items()}
    if loss is not None:
        means["loss"] = loss
        means["perplexity"] = math.exp(min(loss, 50))
    return {
        "metrics": means,
        "examples": examples,
        "prompt_tokens_per_request": sum(e["prompt_tokens"] for e in examples) / len(examples),
        "completion_tokens_per_request": sum(e["completion_tokens"] for e in examples) / len(examples),
        "latency_s_per_request": seconds / len(examples),
        "seconds": seconds,
        **({"format": fmt.describe(), "decoding": "scored" if options.get("score") else
            "constrained" if options.get("constrained") else "free"} if fmt is not None else {}),
        # answers whose grammar gave up (a parser limit): ended there, so counted invalid, never hidden
        **({"grammar_errors": sum("grammar_error" in e for e in examples)} if constraints is not None else {}),
    }


def _answers(generator, prompts: list[list[dict]], max_new_tokens: int, batch_size: int, label: str,
             constraints: list | None = None) -> list:
    """generator.chat's answers, asked one batch at a time so each batch counts as progress. chat
    batches the longest prompts first; handing it the batches in that order keeps the batches it
    would have made, and so its answers."""
    order = sorted(range(len(prompts)), key=lambda i: -len(generator.prompt_ids(prompts[i])))
    outputs = [None] * len(prompts)
    with Task(label, len(prompts), unit="answers") as task:
        for b in range(0, len(order), batch_size):
            idx = order[b: b + batch_size]
            held = [constraints[i] for i in idx] if constraints is not None else None
            for i, out in zip(idx, generator.chat([prompts[i] for i in idx], max_new_tokens=max_new_tokens,
                                                  batch_size=batch_size, constraints=held)):
                outputs[i] = out
            task.advance(len(idx))
    return outputs


def format_of(options: dict) -> AnswerFormat | None:
    """The answer format an evaluation's options carry (`format`: an AnswerFormat's dict), or None."""
    fmt = options.get("format")
    return fmt if fmt is None or isinstance(fmt, AnswerFormat) else AnswerFormat(**fmt)


def format_options(fmt: AnswerFormat | None, *, constrained: bool = True, score: bool = False) -> dict:
    """The options that evaluate under `fmt`: generation constrained by it (or free), or scored."""
    if fmt is None:
        if score:
            raise ConfigError("--score needs the choices to score: --choices FILE|a,b,c (or a recipe's choices)",
                              "--score")
        return {}
    if score and fmt.choices is None:
        raise ConfigError(f"--score ranks a closed list of choices; this format is {fmt.describe()}", "--score")
    return {"format": fmt.model_dump(), "constrained": constrained and not score, "score": score}


def _scored(generator, prompts: list[list[dict]], fmt: AnswerFormat):
    """Generations whose text is the most likely choice, and each prompt's choices ranked."""
    from ..generation import Generation
    from .choices import ranked, score_choices

    scores = score_choices(generator, prompts, fmt.choices)
    order = [ranked(s, fmt.choices) for s in scores]
    outputs = [Generation(o[0][0], len(generator.prompt_ids(p)), 0, "stop") for p, o in zip(prompts, order)]
    return outputs, order


def recorded_format(model) -> AnswerFormat | None:
    """The answer format a fine-tune's recipe records (`constraint`), or None (a base model, or a
    recipe without one). `model`: a reference or a ResolvedModel."""
    from ..models import resolve_model
    from ..run_folder import RunFolder

    resolved = model if hasattr(model, "run") else resolve_model(model)
    if resolved.run is None:
        return None
    try:
        config = RunFolder(resolved.run).read_config() or {}
    except OSError:
        return None
    value = config.get("constraint")
    return AnswerFormat(**value) if value else None


def evaluate_model(model, data: str | Path, metrics: list[str], *, options: dict | None = None,
                   max_new_tokens: int = 256, batch_size: int = 16, limit: int | None = None,
                   data_config: DataConfig | None = None, generator=None, retrieval: str | None = None,
                   retrieval_k: int = 3) -> dict:
    """`tunery eval`: load the model (a reference or a ResolvedModel), then loss and generation
    metrics on a file. Returns {"model", "data", "metrics", "examples", per-request costs}."""
    from ..generation import Generator

    resolve_metrics(metrics)  # an unknown metric fails before the model is loaded
    cases = load_cases(data, limit=limit)
    gen = generator or Generator(model)
    name = getattr(model, "reference", model)
    cfg = data_config or DataConfig(model=str(name))
    ground = found = None
    if retrieval:
        from ..retrieval import grounding_for

        cfg = cfg.model_copy(update={"retrieval": retrieval, "retrieval_k": retrieval_k})
        ground, found = grounding_for(cfg, distractors=False), retrieve(cases, retrieval, retrieval_k)
    scan = scan_for_eval(gen, data, cfg, ground)  # once, for the loss and the preference scores
    loss = dataset_loss(gen, data, cfg, scan=scan)
    result = {"model": str(name), "data": str(data)} | evaluate(
        gen, cases, metrics, options=options, max_new_tokens=max_new_tokens, batch_size=batch_size, loss=loss,
        retrieved=found["hits"] if found else None)
    preference = preference_scores(gen, scan) if not retrieval else None
    if preference:
        result["metrics"] |= {k: preference[k] for k in ("pref_accuracy", "pref_margin")}
        result["pairs"] = preference["pairs"]
    if found:
        result["retrieval"] = {k: v for k, v in found.items() if k != "hits"}
    return result
