"""The loss on trained tokens only.

The output layer (a 49k vocabulary is ~1/5 of a small model's FLOPs) and the cross-entropy run
only at positions whose next token carries loss; `collate` says which (`target_at`). They run
fused and in chunks: the gradient is computed during the forward pass (softmax minus one-hot),
so the (tokens x vocabulary) logits are never kept for backward, and memory stays bounded by
the chunk however many tokens a batch trains.
"""

import contextlib

import torch
from torch import nn

from ..models.hf import base_of

CHUNK = 2048  # rows of logits at a time: 2048 x 49k fp32 = 400 MB at most


class TokenLoss(nn.Module):
    """Summed cross-entropy over trained tokens, and how many there were; given `target_row` (the
    row of the micro-batch each target belongs to, see `collate(sequences=True)`), each row's summed
    log-probability of its trained tokens and how many it has (preference objectives).

    Wrapping the model in one module keeps DDP/FSDP hooks intact.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        base = base_of(model)
        self.decoder = base.get_decoder()
        self.lm_head = base.get_output_embeddings()

        # Heads that transform their logits (Granite's scaling, Gemma's soft-capping) take the plain way.
        config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
        self.logits_scaling = getattr(config, "logits_scaling", None) or 1.0
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self._frozen_cast = {}

    def forward(self, input_ids, target_at, targets, attention_mask=None, position_ids=None, layout=None,
                target_row=None, rows: int = 0):
        from . import attention

        extra = {"tunery_layout": layout} if layout is not None else {}
        if layout is not None:  # packed_sdpa keeps the examples apart: no mask to build
            attention_mask = attention.no_mask(input_ids.device)
        with attention.packing() if layout is not None else contextlib.nullcontext():
            hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                  **extra).last_hidden_state  # (rows, T, H)
        h = hidden.flatten(0, 1)[target_at]  # (N, H)
        if self.logits_scaling != 1.0 or self.softcap:
            logits = self.lm_head(h).float() / self.logits_scaling
            if self.softcap:
                logits = torch.tanh(logits / self.softcap) * self.softcap
            if target_row is not None:
                return _per_row(-nn.functional.cross_entropy(logits, targets, reduction="none"), target_row, rows)
            return nn.functional.cross_entropy(logits, targets, reduction="sum"), targets.numel()
        if target_row is not None:
            return _per_row(linear_logprobs(h, self.lm_head, targets, self._frozen_cast), target_row, rows)
        return linear_cross_entropy(h, self.lm_head, targets, self._frozen_cast), targets.numel()


def _per_row(logprobs, target_row, rows: int):
    """(summed log-probability, trained tokens) of each row."""
    sums = torch.zeros(rows, dtype=torch.float32, device=logprobs.device).index_add(0, target_row, logprobs.float())
    return sums, torch.bincount(target_row, minlength=rows)


def linear_cross_entropy(h, lm_head: nn.Linear, targets, cache: dict | None = None):
    """sum(cross_entropy(lm_head(h), targets)), computed in chunks with its gradient.

    `cache` keeps a frozen output layer's cast to the compute dtype between calls (LoRA under
    autocast: 49k x 576 in bf16 is 17 ms per cast on 2 CPU cores, every micro-batch otherwise)."""
    if lm_head.bias is not None or not isinstance(lm_head, nn.Linear):  # rare heads: the plain way
        return nn.functional.cross_entropy(lm_head(h).float(), targets, reduction="sum")
    if not torch.is_grad_enabled():  # evaluation: no gradient work (a trained head still requires grad)
        h = h.detach()
    weight, dtype = _head_weight(h, lm_head, cache)
    return _LinearCrossEntropy.apply(h, weight, targets, dtype)


def _head_weight(h, lm_head: nn.Linear, cache: dict | None):
    """The output layer's weight and the dtype its matmuls run in (autocast's, or the weight's); a
    frozen weight's cast is kept in `cache` while the weight is unchanged."""
    weight = lm_head.weight if torch.is_grad_enabled() else lm_head.weight.detach()
    device = h.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else lm_head.weight.dtype
    if cache is not None and not lm_head.weight.requires_grad and weight.dtype != dtype:
        key = (weight.data_ptr(), weight._version, dtype)
        if cache.get("key") != key:
            cache.update(key=key, weight=weight.to(dtype))
        weight = cache["weight"]
    return weight, dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, dtype):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w = weight.to(dtype)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for start in range(0, h.shape[0], CHUNK):
            hc, tc = h[start: start + CHUNK].to(dtype), targets[start: start + CHUNK]
            logits = (hc @ w.T).float()  # (n, V)
            rows = torch.arange(len(tc), device=h.device)
            picked = logits[rows, tc]
            top = logits.amax(dim=1, keepdim=True)
            probs = logits.sub_(top).exp_()  # in place: the logits are not needed again
            norm = probs.sum(dim=1, keepdim=True)
            total += (top.squeeze(1) + norm.log().squeeze(1) - picked).sum()
            if need_h or need_w:
                grad = probs.div_(norm)  # softmax ...
                grad[rows, tc] -= 1  # ... minus one-hot: d loss / d logits
                grad = grad.to(dtype)
                if need_h:
                    grad_h[start: start + CHUNK] = grad @ w
                if need_w:
                    grad_w += (grad.T @ hc).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_out if grad_h is not None else None,
                (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None, None, None)


def linear_logprobs(h, lm_head: nn.Linear, targets, cache: dict | None = None):
    """log_softmax(lm_head(h))[i, targets[i]] for each row, in chunks: the logits are recomputed in
    backward rather than kept (N x vocabulary), and the gradient takes any weight per token."""
    if lm_head.bias is not None or not isinstance(lm_head, nn.Linear):
        return -nn.functional.cross_entropy(lm_head(h).float(), targets, reduction="none")
    weight, dtype = _head_weight(h, lm_head, cache)
    return _LinearLogprobs.apply(h, weight, targets, dtype)


class _LinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, dtype):
        w = weight.to(dtype)
        out = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        lse = torch.empty_like(out)
        for start in range(0, h.shape[0], CHUNK):
            logits = (h[start: start + CHUNK].to(dtype) @ w.T).float()
            tc = targets[start: start + CHUNK]
            lse[start: start + CHUNK] = torch.logsumexp(logits, dim=1)
            out[start: start + CHUNK] = logits[torch.arange(len(tc), device=h.device), tc] - lse[start: start + CHUNK]
        ctx.save_for_backward(h, weight, targets, lse)
        ctx.dtype = dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        h, weight, targets, lse = ctx.saved_tensors
        dtype = ctx.dtype
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w = weight.to(dtype)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        for start in range(0, h.shape[0], CHUNK):
            hc, tc = h[start: start + CHUNK].to(dtype), targets[start: start + CHUNK]
            g = grad_out[start: start + CHUNK].float()
            # d logprob / d logits = one-hot - softmax, times the upstream gradient of each row
            grad = (hc @ w.T).float().sub_(lse[start: start + CHUNK, None]).exp_().mul_(-g[:, None])
            grad[torch.arange(len(tc), device=h.device), tc] += g
            grad = grad.to(dtype)
            if need_h:
                grad_h[start: start + CHUNK] = grad @ w
            if need_w:
                grad_w += (grad.T @ hc).float()
        return grad_h, grad_w.to(weight.dtype) if grad_w is not None else None, None, None
