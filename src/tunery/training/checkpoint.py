"""Atomic checkpoints with everything an exact resume needs.

RUN/checkpoints/step-N/ holds the trainable weights (safetensors), optimizer and scheduler state,
RNG states and state.json (step, epoch, best validation loss, ...). It is written into a
temporary folder and renamed into place, then marked complete; a folder without the marker (a
crash mid-write) is never loaded.
"""

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ..home import atomic_dir

COMPLETE = "COMPLETE"


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, state: dict) -> Path:
    from safetensors.torch import save_file

    dest = run_dir / "checkpoints" / f"step-{step}"
    with atomic_dir(dest) as tmp:
        save_file(trainable_state(model), tmp / "trainable.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(_rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        (tmp / COMPLETE).write_text("")
    return dest


def complete_checkpoints(run_dir: Path) -> list[Path]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("step-*") if (p / COMPLETE).is_file() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    from safetensors.torch import load_file

    weights = load_file(path / "trainable.safetensors")
    load_trainable(model, weights)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    _set_rng_state(torch.load(path / "rng.pt", weights_only=False))  # our own file: python/numpy states
    return json.loads((path / "state.json").read_text())


def load_trainable(model, weights: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise RuntimeError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {missing[0]}")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)


def prune_checkpoints(run_dir: Path, keep: int, protect: set[int]) -> None:
    """Keep the newest `keep` complete checkpoints plus those in `protect` (the best one)."""
    ckpts = complete_checkpoints(run_dir)
    for path in ckpts[:-keep] if keep else ckpts:
        if int(path.name[5:]) not in protect:
            shutil.rmtree(path, ignore_errors=True)
    for stray in (run_dir / "checkpoints").glob(".tmp-*"):  # left by a crash mid-write
        shutil.rmtree(stray, ignore_errors=True)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
