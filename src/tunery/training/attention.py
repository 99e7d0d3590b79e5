"""Attention for packed micro-batches: every linear layer runs on the batch's real tokens only
(no padding, a shared prefix once), while attention still sees one causal row per example.

The decoder gets the micro-batch as one packed row. Attention gathers each example's keys and
values (the shared prefix, then its own tokens) into a right-padded (rows, width) layout, runs
causal SDPA there (right padding needs no mask: a padded key is only visible to padded queries)
and scatters the real positions back. Gradients of the shared prefix's keys and values sum over
the rows that read them, so the math is that of running each example on its own.
"""

import contextlib
import contextvars
import os
from dataclasses import dataclass

import torch

from ..models.hf import base_of

NAME = "tunery_sdpa"


def _cuda_backends():
    """SDPA's CUDA kernels for packed rows, in order. Not cuDNN's, which PyTorch tries first on
    Hopper: a packed micro-batch's row width changes every step, and cuDNN builds an execution
    plan for each new shape (measured on an H100: ~6 ms of host time per attention call, which
    left the GPU idle a third of each step). TUNERY_CUDA_SDPA=auto keeps PyTorch's own order;
    a comma list (flash,efficient,cudnn,math) names others: for measuring."""
    from torch.nn.attention import SDPBackend

    names = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    wanted = os.environ.get("TUNERY_CUDA_SDPA", "flash,efficient,math")
    return None if wanted == "auto" else [names[n.strip()] for n in wanted.split(",")]


CUDA_BACKENDS = _cuda_backends()


@dataclass
class PackedLayout:
    rows: int  # examples in the micro-batch
    width: int  # shared prefix + the longest example's own tokens
    gather: torch.Tensor  # (rows * width,) packed position read by each padded slot
    scatter: torch.Tensor  # (packed length,) padded slot that produces each packed position
    prefix: int = 0  # packed positions 0..prefix-1: the shared prefix, read by every row (produced by row 0's slots)
    _inverse: torch.Tensor | None = None

    @property
    def inverse(self) -> torch.Tensor:
        """(rows * width,) the packed position each padded slot produces, or the packed length (a
        zero row) for slots that produce none (padding, and rows 1.. of the prefix)."""
        if self._inverse is None:
            n = self.scatter.shape[0]
            inv = torch.full((self.rows * self.width,), n, dtype=torch.long, device=self.scatter.device)
            self._inverse = inv.index_copy_(0, self.scatter, torch.arange(n, device=self.scatter.device))
        return self._inverse


class _ToSlots(torch.autograd.Function):
    """packed (L, ...) -> padded slots (rows * width, ...), `x[gather]`. Its backward is a gather too
    (each packed position's own slot, plus the other rows' prefix slots summed), not index_select's
    scatter-add: measured 9-28 ms a call on CPU, four calls per layer. Padding slots are left out:
    right padding makes their gradients exactly zero (a padded key is seen only by padded queries,
    whose outputs are dropped)."""

    @staticmethod
    def forward(ctx, x, lay: PackedLayout):
        ctx.lay = lay
        return x.index_select(0, lay.gather)

    @staticmethod
    def backward(ctx, grad):
        lay = ctx.lay
        out = grad.index_select(0, lay.scatter)
        if lay.prefix and lay.rows > 1:
            out[: lay.prefix] += grad.unflatten(0, (lay.rows, lay.width))[1:, : lay.prefix].sum(0)
        return out, None


class _FromSlots(torch.autograd.Function):
    """padded slots (rows * width, ...) -> packed (L, ...), `y[scatter]`; backward: a gather through
    the inverse map (every slot produces at most one packed position), not a scatter-add."""

    @staticmethod
    def forward(ctx, y, lay: PackedLayout):
        ctx.lay = lay
        return y.index_select(0, lay.scatter)

    @staticmethod
    def backward(ctx, grad):
        padded = torch.cat([grad, grad.new_zeros((1, *grad.shape[1:]))])
        return padded.index_select(0, ctx.lay.inverse), None


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                tunery_layout: PackedLayout | None = None, **kwargs):
    """An attention implementation for transformers' AttentionInterface (q/k/v: (1, heads, L, dim))."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # On CPU under bf16 autocast, attention runs in fp32: PyTorch's CPU flash-attention backward in
    # bf16 is ~3x slower (measured 200 vs 70 ms per step on the default model), and attention is few
    # FLOPs. (RoPE hands over q and k in fp32 and v in bf16: autocast would cast all to bf16.)
    fp32 = query.device.type == "cpu" and (torch.is_autocast_enabled("cpu") or torch.bfloat16 in (
        query.dtype, key.dtype, value.dtype))
    if tunery_layout is None:  # ordinary padded batches (evaluation, generation)
        if not fp32:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, **kwargs)
        with torch.autocast("cpu", enabled=False):
            out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                                  dropout=dropout, scaling=scaling, **kwargs)
        return out.to(query.dtype), weights
    lay = tunery_layout
    window = kwargs.get("sliding_window")
    if window is not None and window < lay.width:
        raise ValueError(f"packed attention cannot apply a sliding window of {window} to rows of {lay.width} tokens")

    def padded(x):  # (1, h, L, d) -> (rows, h, width, d)
        x = _ToSlots.apply(x[0].transpose(0, 1), lay)  # (rows*width, h, d)
        x = x.unflatten(0, (lay.rows, lay.width)).transpose(1, 2)
        return x.float() if fp32 else x

    q, k, v = padded(query), padded(key), padded(value)
    if fp32:
        backends = torch.autocast("cpu", enabled=False)
    elif q.device.type == "cuda" and CUDA_BACKENDS:
        from torch.nn.attention import sdpa_kernel

        backends = sdpa_kernel(CUDA_BACKENDS)
    else:
        backends = contextlib.nullcontext()
    with backends:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, dropout_p=dropout,
                                                               enable_gqa=key.shape[1] != query.shape[1])
    out = _FromSlots.apply(out.transpose(1, 2).flatten(0, 1), lay)  # (L, h, d)
    return out.unsqueeze(0).to(query.dtype), None


def packing_supported(config, max_length: int) -> bool:
    """Packed attention reproduces plain causal attention; models that add more (a sliding window
    shorter than the sequences, logit soft-capping, attention sinks) keep padded batches."""
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True) and window < max_length:
        return False
    if getattr(config, "attn_logit_softcapping", None) or getattr(config, "is_encoder_decoder", False):
        return False
    return getattr(config, "model_type", "") in PACKED_MODEL_TYPES


# Architectures whose attention calls transformers' AttentionInterface with the decoder's kwargs
# and nothing beyond causal softmax attention (checked in tests on llama and qwen2).
PACKED_MODEL_TYPES = {"llama", "qwen2", "qwen3", "mistral", "smollm3", "olmo2", "granite", "phi3"}


def no_mask(device) -> torch.Tensor:
    """The attention mask a packed micro-batch hands the decoder: an empty 4D tensor, which
    transformers passes through as a mask already prepared (packed_sdpa ignores it). With None,
    transformers would search the position ids for packed sequences, reading a GPU tensor back
    to the host (a sync) on every forward pass."""
    return torch.empty((1, 1, 0, 0), dtype=torch.bool, device=device)


_packing = contextvars.ContextVar("tunery_packing", default=False)


@contextlib.contextmanager
def packing():
    """While set, the model builds no attention mask: `packed_sdpa` keeps examples apart itself,
    and transformers would otherwise build (and discard) a (L, L) mask from the packed positions."""
    token = _packing.set(True)
    try:
        yield
    finally:
        _packing.reset(token)


def _mask(*args, **kwargs):
    from transformers.masking_utils import sdpa_mask

    return None if _packing.get() else sdpa_mask(*args, **kwargs)


def install(model) -> None:
    """Make the model's attention `packed_sdpa` (padded batches keep plain SDPA behaviour)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(NAME, packed_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, _mask)  # padding masks for evaluation and generation
    base_of(model).set_attn_implementation(NAME)


def installed(model) -> bool:
    return base_of(model).config._attn_implementation == NAME


def uninstall(model) -> None:
    """Our implementation is for training only: it must not leak into a saved config."""
    if installed(model):
        base_of(model).set_attn_implementation("sdpa")
