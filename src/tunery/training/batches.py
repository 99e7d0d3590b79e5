"""Data order, optimizer-step groups, micro-batches and the loss on trained tokens only.

The order of examples is a pure function of (seed, epoch), so a resumed run replays exactly the
batches an uninterrupted run would have seen: the position in the data is just (epoch, step).
"""

import math
import random

import torch
from torch import nn
from torch.nn import functional as F

from ..data import Example


def steps_per_epoch(n_examples: int, batch_size: int, grad_accum: int) -> int:
    return math.ceil(n_examples / (batch_size * grad_accum))


def epoch_order(n_examples: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n_examples))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


LENGTH_WINDOW = 32  # optimizer steps whose examples are sorted by length together


def step_groups(examples: list[Example], seed: int, epoch: int, batch_size: int, grad_accum: int,
                group_by_length: bool = True):
    """Yield, for each optimizer step of the epoch, its list of micro-batches (lists of examples).

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
            chunk = sorted(order[w: w + window], key=lambda i: len(examples[i].input_ids))
            steps += [chunk[s: s + per_step] for s in range(0, len(chunk), per_step)]
        random.Random(seed * 7919 + epoch).shuffle(steps)
    else:
        steps = [order[s: s + per_step] for s in range(0, len(order), per_step)]
    for idx in steps:
        group = sorted((examples[i] for i in idx), key=lambda e: len(e.input_ids))
        yield [group[i: i + batch_size] for i in range(0, len(group), batch_size)]


def collate(batch: list[Example], pad_id: int, device) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    loss_mask = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        attention[row, :n] = 1
        loss_mask[row, :n] = torch.tensor(e.loss_mask, dtype=torch.bool)
    return {"input_ids": ids.to(device), "attention_mask": attention.to(device), "loss_mask": loss_mask.to(device)}


class TokenLoss(nn.Module):
    """Summed cross-entropy over trained tokens, and how many there were.

    The output layer (a 49k vocabulary is ~1/5 of a small model's FLOPs) runs only at positions
    whose next token carries loss. Wrapping the model in one module keeps DDP/FSDP hooks intact.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.decoder = base.get_decoder()
        self.lm_head = base.get_output_embeddings()

    def forward(self, input_ids, attention_mask, loss_mask):
        hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        targets_at = loss_mask[:, 1:]  # position t predicts token t+1
        h = hidden[:, :-1][targets_at]  # (N, H)
        logits = self.lm_head(h).float()  # (N, V)
        loss_sum = F.cross_entropy(logits, input_ids[:, 1:][targets_at], reduction="sum")
        return loss_sum, targets_at.sum()
