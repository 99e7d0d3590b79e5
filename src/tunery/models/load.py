"""Load a resolved model and its tokenizer, the same way for training, eval and serving."""

from pathlib import Path

from ..errors import TuneryError
from .hf import quiet_transformers
from .resolve import ResolvedModel, resolve_model


def _resolved(model: "str | Path | ResolvedModel") -> ResolvedModel:
    return model if isinstance(model, ResolvedModel) else resolve_model(str(model))


def load_tokenizer(model: "str | Path | ResolvedModel"):
    from transformers import AutoTokenizer

    quiet_transformers()
    resolved = _resolved(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.tokenizer_path, trust_remote_code=False)
    except Exception as exc:
        raise TuneryError(f"{resolved.path}: cannot load tokenizer ({type(exc).__name__}: {exc})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise TuneryError(f"{resolved.path}: a fast (tokenizers-backed) tokenizer is required")
    # Padding is only ever positional (attention masks, labels come from our own masks), so
    # reusing EOS as pad is safe here: it never hides EOS from the loss.
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model: "str | Path | ResolvedModel", dtype=None, device: str | None = None, merge: bool = True):
    """Return (model, tokenizer). fp32 on CPU, bf16 on CUDA unless `dtype` says otherwise.

    A run's adapter is applied over its base; with `merge` it is folded into the weights, which
    makes inference as fast as the base model's.
    """
    import torch
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    resolved = _resolved(model)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        # Inference keeps fp32 weights on CPU: pure-bf16 weights (no autocast) lose accuracy in the
        # residual stream, and autocast would re-cast every weight at every generated token.
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        lm = AutoModelForCausalLM.from_pretrained(
            resolved.path, dtype=dtype, trust_remote_code=False, use_safetensors=True
        )
    except Exception as exc:
        raise TuneryError(f"{resolved.path}: cannot load model ({type(exc).__name__}: {exc})") from None
    if resolved.adapter is not None:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, resolved.adapter)
        if merge:
            lm = lm.merge_and_unload()
    lm.to(device)
    lm.eval()
    return lm, load_tokenizer(resolved)
