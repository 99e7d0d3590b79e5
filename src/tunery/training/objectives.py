"""What a training step minimises: the answers' cross-entropy (sft), or a preference for each
pair's chosen answer over its rejected one (dpo, simpo).

An objective turns one micro-batch into a summed loss and summed statistics, and says what the
step's loss is averaged over (`units`): trained tokens for sft, pairs for the preference
objectives, counted over the whole step (every micro-batch, every process) as the loop divides.

Preference pairs run as two rows of one micro-batch (chosen, rejected), packed like any examples:
no padding, and a prompt every row shares is computed once. A row's log-probability is the sum
over its answer's trained tokens (loss.py, `target_row`).

DPO (Rafailov et al. 2023), as TRL's DPOTrainer computes it (loss_type sigmoid): for policy π
and reference π_ref,
    reward(a) = β (log π(a) − log π_ref(a)),   margin = reward(chosen) − reward(rejected),
    loss = −log σ(margin),   accuracy: margin > 0.
The reference is the model as training starts (for a run from a LoRA fine-tune: that fine-tune,
whose adapter training continues). Its log-probabilities of every pair are computed once before
the first step, so no second model is held in memory by LoRA or full fine-tunes, and written to
RUN/reference.safetensors before any checkpoint exists: a resumed run reads them (a resumed
model is no longer the reference) and refuses a file that does not match its pairs.

SimPO (Meng et al. 2024) needs no reference: rewards are length-normalised log-probabilities,
    reward(a) = β log π(a) / |a|,   loss = −log σ(reward(chosen) − reward(rejected) − γ).
"""

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..config import PREFERENCE_STATS, TrainConfig
from ..errors import TuneryError
from ..progress import Task

__all__ = ["PREFERENCE_STATS", "Preference", "SFT", "objective_for", "sequence_logprobs"]


class SFT:
    """Cross-entropy of the trained tokens, averaged per trained token."""

    sequences = False

    def units(self, mb) -> int:
        return sum(sum(e.loss_mask[1:]) for e in mb)

    def tokens(self, mb) -> int:
        return sum(len(e.input_ids) for e in mb)

    def trained(self, mb) -> int:
        return self.units(mb)

    def loss(self, loss_fn, batch: dict, mb, split: str = "train"):
        loss_sum, _ = loss_fn(**batch)
        return loss_sum, {}

    def rows(self, mb) -> list:
        return mb


@dataclass
class Preference:
    """DPO or SimPO on pairs (data.Pair), averaged per pair."""

    kind: str  # dpo | simpo
    beta: float
    gamma: float = 0.0
    reference: dict | None = None  # dpo: split -> (pairs, 2) float64 log-probabilities of the starting model

    sequences = True

    @classmethod
    def of(cls, cfg: TrainConfig) -> "Preference":
        return cls(cfg.objective, float(cfg.beta), cfg.simpo_gamma if cfg.objective == "simpo" else 0.0)

    def units(self, mb) -> int:
        return len(mb)

    def tokens(self, mb) -> int:
        return sum(p.size for p in mb)

    def trained(self, mb) -> int:
        return sum(sum(e.loss_mask[1:]) for p in mb for e in (p.chosen, p.rejected))

    def rows(self, mb) -> list:
        """The micro-batch's rows: each pair's chosen, then its rejected example."""
        return [e for p in mb for e in (p.chosen, p.rejected)]

    def loss(self, loss_fn, batch: dict, mb, split: str = "train"):
        logp, counts = loss_fn(**batch)
        chosen, rejected = logp[0::2], logp[1::2]
        if self.kind == "simpo":
            r_chosen = self.beta * chosen / counts[0::2]
            r_rejected = self.beta * rejected / counts[1::2]
            margin = r_chosen - r_rejected
            losses = -F.logsigmoid(margin - self.gamma)
        else:
            ref = self.reference[split][torch.tensor([p.index for p in mb])].to(logp.device)
            r_chosen = self.beta * (chosen - ref[:, 0].float())
            r_rejected = self.beta * (rejected - ref[:, 1].float())
            margin = r_chosen - r_rejected
            losses = -F.logsigmoid(margin)
        stats = {"rewards_chosen": r_chosen.detach().sum(), "rewards_rejected": r_rejected.detach().sum(),
                 "rewards_margin": margin.detach().sum(), "accuracy": (margin.detach() > 0).sum()}
        return losses.sum(), stats

    # -- the reference ---------------------------------------------------------------------------
    def prepare(self, loss_fn, sets: dict, batch_of, autocast, folder, batch_size: int, world, resume: bool) -> None:
        """DPO: the starting model's log-probabilities of every pair of each set (`sets`: split ->
        pairs), computed now or, when resuming, read from the run folder."""
        if self.kind != "dpo":
            return
        path = folder.reference_file
        lines = {split: torch.as_tensor(pairs.lines, dtype=torch.int64) for split, pairs in sets.items()}
        if resume:
            self.reference = _read_reference(path, lines)
            return
        self.reference = {}
        for split, pairs in sets.items():
            with Task(f"reference {split}", len(pairs), unit="pairs") as task:
                self.reference[split] = sequence_logprobs(loss_fn, pairs, batch_of, autocast, batch_size, world, task)
        if world.main:
            from safetensors.torch import save

            from ..files import write_bytes_atomic

            tensors = {f"{split}.logprobs": t.contiguous() for split, t in self.reference.items()}
            tensors |= {f"{split}.lines": t.contiguous() for split, t in lines.items()}
            write_bytes_atomic(path, save(tensors))


def sequence_logprobs(loss_fn, pairs, batch_of, autocast, batch_size: int, world, task=None) -> torch.Tensor:
    """(pairs, 2) float64: each pair's summed log-probability of its chosen and rejected answer,
    without gradients (each process computes its share; the sums are the world's). `task`
    (progress.Task) counts the pairs done."""
    was_training = loss_fn.training
    loss_fn.eval()
    out = torch.zeros(len(pairs), 2, dtype=torch.float64)
    order = sorted(range(len(pairs)), key=lambda i: pairs[i].size)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            whole = [pairs[i] for i in order[start: start + batch_size]]
            mine = world.shard(whole)
            rows = [e for p in (mine or whole[:1]) for e in (p.chosen, p.rejected)]
            with autocast():
                logp, _ = loss_fn(**batch_of(rows, sequences=True))
            for k, p in enumerate(mine):
                out[p.index] = logp[2 * k: 2 * k + 2].double().cpu()
            if task:
                task.advance(len(whole))
    if world.size > 1:
        out = torch.tensor(world.sum(*out.flatten().tolist()), dtype=torch.float64).view(-1, 2)
    if was_training:
        loss_fn.train()
    return out


def _read_reference(path, lines: dict) -> dict:
    from safetensors.torch import load_file

    if not path.is_file():
        raise TuneryError(f"resume: {path} is missing: the reference log-probabilities of this dpo run are gone, "
                          "and the resumed model is no longer the reference; train into a new --out")
    try:
        stored = load_file(str(path))
    except Exception as exc:
        raise TuneryError(f"resume: {path} cannot be read ({exc}); train into a new --out") from None
    for split, want in lines.items():
        if f"{split}.logprobs" not in stored or not torch.equal(stored.get(f"{split}.lines"), want):
            raise TuneryError(f"resume: {path} holds reference log-probabilities for other {split} pairs than this "
                              "run's data; train into a new --out")
    return {split: stored[f"{split}.logprobs"] for split in lines}


def objective_for(cfg: TrainConfig):
    return Preference.of(cfg) if cfg.preference else SFT()
