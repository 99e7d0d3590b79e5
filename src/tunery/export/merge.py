"""Fold a run's adapter into its base weights: a standalone safetensors model folder."""

from pathlib import Path

from ..errors import TuneryError
from ..files import atomic_dir
from ..models import load_model, resolve_model
from ..progress import Task


def merge_run(run: str | Path, out: str | Path) -> Path:
    """Write OUT: base + adapter merged in fp32 (never into a quantised base), with the tokenizer
    and chat template the run trained with."""
    import torch

    resolved = resolve_model(str(run))
    if resolved.source != "run":
        raise TuneryError(f"{run} is not a tunery run folder (no run.json)")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise TuneryError(f"{out} already exists and is not empty; choose another output folder")
    with Task("merge", 2, unit="stages", note="merge") as task:
        model, tokenizer = load_model(resolved, dtype=torch.float32, device="cpu", merge=True)
        task.advance(note="save")
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        task.advance(note="")
    return out
