"""Generation metrics during training, on a sample of the validation set.

Validation examples are already tokens with loss masks, so the prompt is everything before the
last trained span and the reference is that span's text: no second copy of the data is needed.
A recipe with a `constraint` generates under it, as eval and serve will.
"""

from ..metrics import resolve_metrics


def split_prompt(example, stop_ids: set[int]) -> tuple[list[int], list[int]]:
    mask = example.loss_mask
    end = max(i for i, m in enumerate(mask) if m)
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    answer = [t for t in example.input_ids[start: end + 1] if t not in stop_ids]
    return example.input_ids[:start], answer


def generation_score(model, tokenizer, examples, metric: str, stop_ids: set[int], *, max_new_tokens: int,
                     batch_size: int, device=None, fmt=None) -> float:
    """Mean of `metric` over `examples`, greedy, batched like `tunery eval` generates (under the
    answer format `fmt`, an AnswerFormat, when given)."""
    from ..generation import generate_batch

    fn = resolve_metrics([metric])[metric]
    first = None
    if fmt is not None:
        from ..constrain import Constraint

        first = Constraint.from_format(fmt, tokenizer, stop_ids, "constraint")
    was_training = model.training
    model.eval()
    pairs = sorted((split_prompt(e, stop_ids) for e in examples), key=lambda p: len(p[0]))
    total = 0.0
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i: i + batch_size]
        outs = generate_batch(model, tokenizer, [p for p, _ in chunk], sorted(stop_ids), max_new_tokens=max_new_tokens,
                              constraints=[first.copy() for _ in chunk] if first else None)
        total += sum(fn(out.text, tokenizer.decode(answer, skip_special_tokens=True), {"format": fmt} if fmt else {})
                     for out, (_, answer) in zip(outs, chunk))
    if was_training:
        model.train()
    return total / max(len(pairs), 1)
