"""Generation metrics during training, on a sample of the validation set.

Validation examples are already tokens with loss masks, so the prompt is everything before the
last trained span and the reference is that span's text: no second copy of the data is needed.
"""

import torch

from ..evaluate.metrics import resolve_metrics


def split_prompt(example, stop_ids: set[int]) -> tuple[list[int], list[int]]:
    mask = example.loss_mask
    end = max(i for i, m in enumerate(mask) if m)
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    answer = [t for t in example.input_ids[start: end + 1] if t not in stop_ids]
    return example.input_ids[:start], answer


@torch.no_grad()
def generation_score(model, tokenizer, examples, metric: str, stop_ids: set[int], *, max_new_tokens: int,
                     batch_size: int, device) -> float:
    """Mean of `metric` over `examples`, greedy, batched with left padding."""
    fn = resolve_metrics([metric])[metric]
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id
    total = 0.0
    pairs = sorted((split_prompt(e, stop_ids) for e in examples), key=lambda p: len(p[0]))
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i: i + batch_size]
        width = max(len(p) for p, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for r, (p, _) in enumerate(chunk):
            ids[r, width - len(p):] = torch.tensor(p)
            attention[r, width - len(p):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=attention.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=sorted(stop_ids), pad_token_id=pad,
                             use_cache=True)
        for r, (_, answer) in enumerate(chunk):
            new = out[r, width:].tolist()
            stop = next((k for k, t in enumerate(new) if t in stop_ids), len(new))
            pred = tokenizer.decode(new[:stop], skip_special_tokens=True)
            total += fn(pred, tokenizer.decode(answer, skip_special_tokens=True), {})
    if was_training:
        model.train()
    return total / max(len(pairs), 1)
