"""Scoring a closed list of choices instead of generating: each choice's log-probability as the
answer to the prompt, summed over its tokens and the end-of-turn marker that closes it (so a choice
that is the start of another is not favoured), computed as training computes the loss.

Each choice is encoded as training encodes an answer (the chat template's render of the prompt plus
the choice as the last assistant turn, the turn's tokens trained). An example's choices are one
micro-batch, one forward pass; where the model packs micro-batches (training/attention.py) the
prompt they share is computed once and the rest is each choice's own few tokens.
"""

import math

from ..data import Conversation, Example, Renderer
from ..errors import DataError

TOP_K = 3  # choice_top3: the reference among the three most likely choices


def score_choices(generator, prompts: list[list[dict]], choices: list[str]) -> list[list[float]]:
    """For each prompt (messages before the answer), every choice's summed log-probability, in nats."""
    import torch

    from ..training import attention
    from ..training.batches import collate
    from ..training.loss import TokenLoss

    model = generator.model
    packed = attention.packing_supported(model.config, 1 << 30) and (attention.installed(model) or _install(model))
    loss_fn = TokenLoss(model).eval()
    renderer = Renderer(generator.tokenizer, generator.template, "last")
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for p, prompt in enumerate(prompts):
            convs = [Conversation(prompt + [{"role": "assistant", "content": c}], [None] * (len(prompt) + 1))
                     for c in choices]
            rows = []
            for c, enc in zip(choices, renderer.encode_many(convs)):
                if not hasattr(enc, "input_ids"):
                    raise DataError(f"choice {c!r} cannot be scored after prompt {p + 1}: {enc}")
                rows.append(Example(p, enc.input_ids, enc.loss_mask))
            batch = collate(rows, generator.tokenizer.pad_token_id, device, packed=packed, share_prefix=packed,
                            sequences=True)
            logp, _ = loss_fn(**batch)
            out.append([float(x) for x in logp])
    return out


def _install(model) -> bool:
    from ..training import attention

    attention.install(model)  # packed micro-batches; padded batches (generation) keep plain SDPA
    return True


def ranked(scores: list[float], choices: list[str]) -> list[tuple[str, float]]:
    """(choice, probability among the choices), most likely first."""
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    total = sum(weights)
    return sorted(((c, w / total) for c, w in zip(choices, weights)), key=lambda x: -x[1])


def choice_scores(order: list[tuple[str, float]], reference: str) -> dict:
    """{"choice_accuracy", "choice_top3"} of one example: the reference first, or among the top 3."""
    names = [c for c, _ in order]
    rank = names.index(reference.strip()) if reference.strip() in names else len(names)
    return {"choice_accuracy": float(rank == 0), f"choice_top{TOP_K}": float(rank < TOP_K)}
