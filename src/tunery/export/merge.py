"""Fold a run's adapter into its base weights: a standalone safetensors model folder."""

from pathlib import Path

from ..errors import TuneryError
from ..files import atomic_dir
from ..models import load_model, load_tokenizer, resolve_model
from ..progress import Task


def merge_run(run: str | Path, out: str | Path) -> Path:
    """Write OUT: base + adapter merged in fp32 (never into a quantised base), with the tokenizer
    and chat template the run trained with, and every end-of-turn id as EOS in generation_config.json."""
    resolved = resolve_model(str(run))
    if resolved.source != "run":
        raise TuneryError(f"{run} is not a tunery run folder (no run.json)")
    out = free_output(out)
    with Task("merge", 1, unit="stages", note="merge") as task:
        with atomic_dir(out) as tmp:
            save_merged(resolved, load_tokenizer(resolved), tmp)
        task.advance(note="")
    return out


def free_output(out: str | Path) -> Path:
    """An export's output folder: absent or empty, and no file where it or a folder above it goes."""
    out = Path(out)
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            raise TuneryError(f"{p} is a file, not a folder; choose another output folder")
    if out.exists() and any(out.iterdir()):
        raise TuneryError(f"{out} already exists and is not empty; choose another output folder")
    return out


def save_merged(resolved, tokenizer, folder: Path):
    """base + adapter folded in fp32, with the tokenizer and every end-of-turn id as EOS."""
    import torch

    merged, _ = load_model(resolved, dtype=torch.float32, device="cpu", merge=True)
    stop_ids_in_generation_config(merged, tokenizer)
    merged.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return merged


def stop_ids_in_generation_config(model, tokenizer) -> None:
    """Other runtimes stop where the generation config says: at every end-of-turn token."""
    from ..data.render import stop_token_ids
    from ..data.template import load_template

    template = load_template(tokenizer)
    if template is not None:
        model.generation_config.eos_token_id = sorted(stop_token_ids(tokenizer, template))
        model.generation_config.pad_token_id = tokenizer.pad_token_id
