"""Data order, optimizer-step groups and micro-batches.

The order of examples is a pure function of (seed, epoch), so a resumed run replays exactly the
batches an uninterrupted run would have seen: the position in the data is just (epoch, step).
"""

import random

import torch

from ..data import Example
from ..data.dataset import Pair
from .attention import PackedLayout


def epoch_order(n_examples: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n_examples))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


LENGTH_WINDOW = 32  # optimizer steps whose examples are sorted by length together


def step_groups(examples: list[Example], seed: int, epoch: int, batch_size: int, grad_accum: int,
                group_by_length: bool = True):
    """Yield, for each optimizer step of the epoch, its list of micro-batches (lists of examples,
    or of preference Pairs: anything with a `size` in tokens).

    With `group_by_length`, examples of similar length share a step (little padding); steps are
    formed within shuffled windows of LENGTH_WINDOW steps and then shuffled, so the order of
    lengths across the epoch stays random.
    """
    order = epoch_order(len(examples), seed, epoch)
    per_step = batch_size * grad_accum
    if group_by_length:
        window = per_step * LENGTH_WINDOW
        steps = []
        for w in range(0, len(order), window):
            chunk = sorted(order[w: w + window], key=lambda i: _tokens(examples[i]))
            steps += [chunk[s: s + per_step] for s in range(0, len(chunk), per_step)]
        random.Random(seed * 7919 + epoch).shuffle(steps)
    else:
        steps = [order[s: s + per_step] for s in range(0, len(order), per_step)]
    for idx in steps:
        group = sorted((examples[i] for i in idx), key=_tokens)
        yield [group[i: i + batch_size] for i in range(0, len(group), batch_size)]


def _tokens(e) -> int:
    """An example's length, or both sides of a preference pair."""
    return e.size if isinstance(e, Pair) else len(e.input_ids)


def collate(batch: list[Example], pad_id: int, device, packed: bool = False, share_prefix: bool = False,
            sequences: bool = False) -> dict:
    """The keyword arguments of `TokenLoss` for one micro-batch (with `sequences`, also which row
    each target belongs to: TokenLoss then returns each row's summed log-probability).

    Padded: (rows, longest) tensors, right-padded. Packed (models whose attention supports it,
    see attention.py): one row of the batch's real tokens, a prefix all examples share stored
    once with `share_prefix`, and the layout attention needs to keep examples apart.
    Either way `target_at` indexes the flattened hidden states that predict a trained token.
    """
    batch_ = _packed(batch, device, share_prefix) if packed else _padded(batch, pad_id, device)
    if sequences:
        rows = [r for r, e in enumerate(batch) for i in range(len(e.input_ids) - 1) if e.loss_mask[i + 1]]
        batch_ |= {"target_row": to_device(torch.tensor(rows, dtype=torch.long), device), "rows": len(batch)}
    return batch_


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A batch tensor built on the host, moved without a host-device sync: on CUDA from pinned
    memory, asynchronously. (A copy from pageable memory waits until the GPU has finished all
    queued work, so building the next micro-batch would stall on the previous one's backward.)"""
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _padded(batch: list[Example], pad_id: int, device) -> dict:
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    target_at, targets = [], []
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        attention[row, :n] = 1
        _add_targets(e, 0, row * width, target_at, targets)
    return {"input_ids": to_device(ids, device), "attention_mask": to_device(attention, device),
            "target_at": to_device(torch.tensor(target_at, dtype=torch.long), device),
            "targets": to_device(torch.tensor(targets, dtype=torch.long), device)}


def _packed(batch: list[Example], device, share_prefix: bool) -> dict:
    prefix = shared_prefix_length([e.input_ids for e in batch], [e.loss_mask for e in batch]) if share_prefix else 0
    width = max(len(e.input_ids) for e in batch)
    tokens, positions = list(batch[0].input_ids[:prefix]), list(range(prefix))
    gather, scatter = [], list(range(prefix))  # the prefix is produced by row 0
    target_at, targets = [], []
    for row, e in enumerate(batch):
        n, start = len(e.input_ids), len(tokens)  # start: packed position of this example's token `prefix`
        tokens += e.input_ids[prefix:]
        positions += range(prefix, n)
        # Padding slots read packed position 0: causal attention shows them only to padding queries.
        gather += list(range(prefix)) + list(range(start, start + n - prefix)) + [0] * (width - n)
        scatter += range(row * width + prefix, row * width + n)
        _add_targets(e, prefix, start - prefix, target_at, targets)  # the prefix carries no targets
    def as_tensor(values):
        return to_device(torch.tensor(values, dtype=torch.long), device)

    layout = PackedLayout(len(batch), width, as_tensor(gather), as_tensor(scatter), prefix)
    return {"input_ids": as_tensor([tokens]), "position_ids": as_tensor([positions]), "layout": layout,
            "target_at": as_tensor(target_at), "targets": as_tensor(targets)}


def _add_targets(e: Example, first: int, offset: int, target_at: list, targets: list) -> None:
    """Hidden state i (from `first` on, stored at offset + i) predicts token i+1 where it is trained."""
    for i in range(first, len(e.input_ids) - 1):
        if e.loss_mask[i + 1]:
            target_at.append(offset + i)
            targets.append(e.input_ids[i + 1])


def shared_prefix_length(input_ids: list[list[int]], loss_masks: list[list[int]]) -> int:
    """Tokens at the start of every row that can be computed once for the whole micro-batch: the
    prefix must carry no targets (hidden state t predicts token t+1, so tokens 1..P untrained) and
    leave every row at least one token of its own."""
    if len(input_ids) < 2:
        return 0
    first, limit = input_ids[0], min(len(r) for r in input_ids) - 1
    n = 0
    while n < limit and all(r[n] == first[n] for r in input_ids):
        n += 1
    for mask in loss_masks:
        trained = next((i for i, m in enumerate(mask) if m), len(mask))
        n = min(n, trained - 1)
    return max(n, 0)
