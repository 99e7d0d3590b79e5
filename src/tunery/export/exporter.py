"""`tunery export`: a run's weights in a format other tools load, checked before they are handed over.

    merged  base + adapter folded into one safetensors model, with the tokenizer, the chat template
            and a generation_config.json whose eos_token_id lists every end-of-turn token; verified:
            the merged model's logits against base + adapter's on rendered prompts of the run's data
    peft    the adapter alone, in the shape vLLM's LoRA loader takes (target modules only: no
            embedding, output-layer or modules_to_save tensors); verified: it loads over the base
            with peft and gives the logits the run's own adapter gives, and its rank is reported
            against vLLM's --max-lora-rank

Every export writes OUT/export.json (format, file sha256s, the verification figures, the source
run's registry id and name). OUT is written atomically and must not exist or be empty.
"""

import json
from pathlib import Path

from ..errors import ConfigError, TuneryError
from ..files import atomic_dir, file_digest, now
from ..models import load_model, load_tokenizer, resolve_model
from ..run_folder import RunFolder

FORMATS = ("merged", "peft")
TOLERANCE = 1e-3  # max |logit difference| a verified export may show (fp32, CPU)
VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # --max-lora-rank values vLLM accepts


def export(run: str | Path, fmt: str, out: str | Path, *, verify: bool = True) -> dict:
    """Write the export and return what export.json records."""
    import torch

    if fmt not in FORMATS:
        raise ConfigError(f"format: {fmt!r} is not one of {', '.join(FORMATS)}", "format")
    resolved = resolve_model(str(run))
    if resolved.source != "run":
        raise TuneryError(f"{run} is not a tunery run (a run folder or a registered fine-tune)")
    if fmt == "peft" and resolved.adapter is None:
        raise TuneryError(f"{run} is a full fine-tune: it has no adapter to export; use --format merged")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise TuneryError(f"{out} already exists and is not empty; choose another output folder")
    info = RunFolder(resolved.run).read_info()
    reference, tokenizer = load_model(resolved, dtype=torch.float32, device="cpu", merge=False) if verify \
        else (None, load_tokenizer(resolved))
    prompts = _prompts(info, tokenizer) if verify else []
    record = {"format": fmt, "source": {"run": str(resolved.run), "id": info.id, "name": info.name},
              "created": now()}
    with atomic_dir(out) as tmp:
        if fmt == "merged":
            merged, _ = load_model(resolved, dtype=torch.float32, device="cpu", merge=True)
            _stop_ids_in_generation_config(merged, tokenizer)
            merged.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            check = (lambda: _max_logit_diff(reference, _load(tmp), tokenizer, prompts)) if verify else None
        else:
            record["adapter"] = _copy_adapter(resolved.adapter, tmp)
            tokenizer.save_pretrained(tmp)
            check = (lambda: _max_logit_diff(reference, _load(resolved.path, adapter=tmp), tokenizer, prompts)) \
                if verify else None
        if check is not None:
            diff = check()
            record["verification"] = {"prompts": len(prompts), "max_abs_logit_diff": diff, "tolerance": TOLERANCE}
            if not diff <= TOLERANCE:
                raise TuneryError(f"export verification failed: logits differ by up to {diff:.2e} from the run's own "
                                  f"weights (tolerance {TOLERANCE:g}); nothing was written")
        record["files"] = {p.name: file_digest(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / "export.json").write_text(json.dumps(record, indent=2))
    return record | {"out": str(out)}


def _prompts(info, tokenizer, n: int = 4) -> list[str]:
    """A few prompts of the run's own data, rendered through the chat template it trained with."""
    from ..data.formats import normalise, rows_with_format
    from ..data.template import load_template

    template = load_template(tokenizer)
    texts = []
    try:
        fmt, rows = rows_with_format(info.data.file, "auto")
        for line, row in rows:
            conv, _ = normalise(line, row, fmt)
            if conv is None:
                continue
            texts.append(conv.text if conv.text is not None or template is None else template.render(conv.messages, conv.tools))
            if len(texts) >= n:
                break
    except (OSError, TuneryError):
        pass
    return texts or ["Hello! How are you today?"]


def _load(path: Path, adapter: Path | None = None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False, use_safetensors=True)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()


def _max_logit_diff(a, b, tokenizer, prompts: list[str]) -> float:
    import torch

    worst = 0.0
    with torch.no_grad():
        for text in prompts:
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][:, :256]
            worst = max(worst, float((a(ids).logits - b(ids).logits).abs().max()))
    return worst


def _stop_ids_in_generation_config(model, tokenizer) -> None:
    """Other runtimes stop where the generation config says: at every end-of-turn token."""
    from ..data.render import stop_token_ids
    from ..data.template import load_template

    template = load_template(tokenizer)
    if template is not None:
        model.generation_config.eos_token_id = sorted(stop_token_ids(tokenizer, template))
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def _copy_adapter(adapter: Path, dest: Path) -> dict:
    """The adapter's config and weights, refusing what vLLM's LoRA loader does not take."""
    from safetensors import safe_open

    config = json.loads((adapter / "adapter_config.json").read_text())
    if config.get("use_dora"):
        raise TuneryError(f"{adapter}: a DoRA adapter (magnitude vectors), which vLLM's LoRA loader does not take; "
                          "use --format merged")
    if config.get("modules_to_save"):
        raise TuneryError(f"{adapter}: the adapter saves whole modules ({config['modules_to_save']}), which vLLM's "
                          "LoRA loader does not take; use --format merged")
    weights = adapter / "adapter_model.safetensors"
    with safe_open(str(weights), "pt") as f:
        keys = list(f.keys())
    extra = [k for k in keys if "lora_" not in k]
    if extra:
        raise TuneryError(f"{adapter}: the adapter holds {len(extra)} non-LoRA tensors (e.g. {extra[0]}), which "
                          "vLLM's LoRA loader does not take; use --format merged")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (dest / name).write_bytes((adapter / name).read_bytes())
    r = int(config.get("r", 0))
    return {"r": r, "alpha": config.get("lora_alpha"), "target_modules": config.get("target_modules"),
            "dora": bool(config.get("use_dora")), "tensors": len(keys),
            "vllm_max_lora_rank": next((v for v in VLLM_RANKS if v >= r), None)}
