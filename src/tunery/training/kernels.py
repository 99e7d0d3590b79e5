"""Kernel choices that make training faster without changing its math beyond float tolerance."""

ATTN_FP32 = "tunery_sdpa_fp32"


def use_fp32_attention(model) -> None:
    """Under bf16 autocast on CPU, PyTorch's flash-attention backward in bf16 is ~3x slower than in
    fp32 (measured: 237 vs 78 ms per step on the default model, 2 cores); attention is a small
    share of the FLOPs, so computing it in fp32 is both faster and more precise."""
    import torch
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def sdpa_fp32(module, query, key, value, attention_mask, **kwargs):
        dtype = query.dtype
        with torch.autocast("cpu", enabled=False):
            out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(),
                                                  attention_mask, **kwargs)
        return out.to(dtype), weights

    AttentionInterface.register(ATTN_FP32, sdpa_fp32)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(ATTN_FP32)
