"""Atomic checkpoints with everything an exact resume needs.

RUN/checkpoints/step-N/ holds the trainable weights (safetensors), optimizer and scheduler state,
RNG states and state.json (TrainState: step, best score, tokens, ...). It is written into a
temporary folder and renamed into place, then marked complete; a folder without the marker (a
crash mid-write) is never loaded. Where checkpoints live is RunFolder's to say; the names inside
one are this module's.

A run of several processes is checkpointed by rank 0, with every process's RNG state (rng.* is
rank 0's, rng-R.* rank R's): each process's dropout resumes where it stopped. The position in
the data is the step (batches.py), the same for all. Each process loads the checkpoint rank 0
chose, so resuming across machines needs the run folder on a filesystem they share.

sha256.json, written just before the marker, records the sha256 of every file the checkpoint
holds. A checkpoint is loaded only after its files match it (`intact`): one damaged later (a
truncated copy, a full disk, an edit) is skipped with a warning naming it, never half-loaded.

Nothing in a checkpoint is unpickled: RNG states are tensors (rng.safetensors: torch, cuda.N) and
JSON (rng.json: Python's and numpy's Mersenne Twister states as lists), optimizer and scheduler
state load with `weights_only=True`. A file of any other name (an old or planted rng.pt) is ignored.
"""

import json
import random
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from ..errors import TuneryError
from ..files import atomic_dir, file_digest
from ..metrics import worse_by
from ..run_folder import COMPLETE, RunFolder
from .distributed import World, full, is_sharded, like

WEIGHTS, OPTIMIZER, SCHEDULER, STATE = "trainable.safetensors", "optimizer.pt", "scheduler.pt", "state.json"
RNG_TENSORS, RNG_JSON = "rng.safetensors", "rng.json"
FILES = (WEIGHTS, OPTIMIZER, SCHEDULER, RNG_TENSORS, RNG_JSON, STATE)  # what every checkpoint holds
MANIFEST = "sha256.json"  # {file: sha256} for every file, written last before the COMPLETE marker


@dataclass
class TrainState:
    """What the loop carries from step to step, and what a checkpoint restores."""

    step: int = 0  # optimizer steps done
    best_score: float | None = None  # the best value of the selection metric (best_by) so far
    best_step: int | None = None
    evals_since_best: int = 0  # evaluations without improvement (early stopping counts these)
    trained_tokens: int = 0  # tokens that carried loss
    tokens: int = 0  # every token seen, prompts included

    def observe(self, metric: str, value: float) -> None:
        """An evaluation of the selection metric at this step: a new best, or one more without."""
        if self.best_score is None or worse_by(metric, self.best_score, value) < 0:
            self.best_score, self.best_step, self.evals_since_best = value, self.step, 0
        else:
            self.evals_since_best += 1

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def trainable_state(model, keep: bool = True) -> dict[str, torch.Tensor]:
    """Whole tensors, also of a sharded model: then every process calls this, and those that do not
    `keep` them (all but rank 0) drop each one as soon as it is gathered."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            whole = full(p.detach())
            if keep:
                out[name] = whole.to("cpu", copy=True).contiguous()
    return out


def optimizer_state(optimizer, keep: bool = True) -> dict:
    """The optimizer's state dict with whole tensors, also of a sharded model (as above)."""
    sd = optimizer.state_dict()
    state = {}
    for i, st in sd["state"].items():
        whole = {k: full(v).cpu() if isinstance(v, torch.Tensor) else v for k, v in st.items()}
        if keep:
            state[i] = whole
    return {**sd, "state": state}


def save_checkpoint(folder: RunFolder, model, optimizer, scheduler, state: TrainState,
                    world: World | None = None) -> Path | None:
    """Every process calls this (their RNG states are gathered, a sharded model's tensors too);
    rank 0 writes, and returns the folder."""
    from safetensors.torch import save_file

    world = world or World()
    rngs = world.gather(_rng_state())
    sharded = any(is_sharded(p) for p in model.parameters())
    if sharded or world.main:
        weights, optim = trainable_state(model, keep=world.main), optimizer_state(optimizer, keep=world.main)
    if not world.main:
        return None
    dest = folder.checkpoint_dir(state.step)
    with atomic_dir(dest) as tmp:
        save_file(weights, tmp / WEIGHTS)
        torch.save(optim, tmp / OPTIMIZER)
        torch.save(scheduler.state_dict(), tmp / SCHEDULER)
        for rank, rng in enumerate(rngs):
            _write_rng(tmp, rng, rank)
        (tmp / STATE).write_text(json.dumps(state.state_dict(), indent=2))
        names = sorted(p.name for p in tmp.iterdir())
        (tmp / MANIFEST).write_text(json.dumps({name: file_digest(tmp / name) for name in names}, indent=2))
        (tmp / COMPLETE).write_text("")
    return dest


def processes_saved(path: Path) -> int:
    """How many processes' RNG states a checkpoint holds."""
    n = 1
    while (path / _rng_names(n)[0]).is_file():
        n += 1
    return n


def damage(path: Path, files: Iterable[str] | None = None) -> str | None:
    """What is wrong with a checkpoint's `files` (default: FILES and every other file its manifest
    records) against the sha256 recorded when it was written, or None when they all match."""
    try:
        recorded = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return f"no readable {MANIFEST} (damaged, or written by an older tunery)"
    if files is None:
        files = dict.fromkeys([*FILES, *(recorded if isinstance(recorded, dict) else ())])
    for name in files:
        digest = recorded.get(name) if isinstance(recorded, dict) else None
        if not isinstance(digest, str):
            return f"{MANIFEST} records no sha256 for {name}"
        if not (path / name).is_file():
            return f"{name} is missing"
        if file_digest(path / name) != digest:
            return f"{name} does not match the sha256 recorded when it was written (damaged or changed)"
    return None


def intact(found: Iterable[tuple[int, Path]], warn: Callable[[str], None]) -> Iterator[Path]:
    """The checkpoints among `found` (oldest first, as RunFolder.checkpoints gives them) whose
    files match their recorded sha256, newest first; each one that does not is named through
    `warn` ("PATH: what is wrong") and skipped. Lazy: the newest intact one costs no more hashing."""
    for _, path in reversed(list(found)):
        problem = damage(path)
        if problem is None:
            yield path
        else:
            warn(f"{path}: {problem}")


def load_newest(candidates: Iterable[Path], model, optimizer, scheduler,
                warn: Callable[[str], None]) -> tuple[Path, TrainState] | None:
    """Load the first of `candidates` (intact checkpoints, newest first) that loads; each one that
    fails is named through `warn` and the next is tried. None when none loads."""
    for path in candidates:
        try:
            return path, load_checkpoint(path, model, optimizer, scheduler)
        except Exception as exc:  # noqa: BLE001 - e.g. written for another recipe: try an older one
            first = (str(exc).strip().splitlines() or [""])[0]
            warn(f"{path}: does not load ({type(exc).__name__}: {first})")
    return None


def load_checkpoint(path: Path, model, optimizer, scheduler, rank: int = 0) -> TrainState:
    """Into this process (`rank`: whose RNG state it takes; one the checkpoint lacks keeps its own)."""
    from safetensors.torch import load_file

    weights = load_file(path / WEIGHTS)
    load_trainable(model, weights)
    optimizer.load_state_dict(_sharded_like(torch.load(path / OPTIMIZER, weights_only=True), optimizer))
    scheduler.load_state_dict(torch.load(path / SCHEDULER, weights_only=True))
    if rank < processes_saved(path):
        _load_rng(path, rank)
    return TrainState.from_dict(json.loads((path / STATE).read_text()))


def load_weights(path: Path, model) -> None:
    """Only a checkpoint's trainable weights (shipping the best step), after checking their sha256."""
    from safetensors.torch import load_file

    problem = damage(path, (WEIGHTS,))
    if problem:
        raise TuneryError(f"{path}: {problem}; cannot ship this step's weights")
    load_trainable(model, load_file(path / WEIGHTS))


def load_trainable(model, weights: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise RuntimeError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {missing[0]}")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(like(params[name], tensor))  # a sharded model: this process's slice


def _sharded_like(sd: dict, optimizer) -> dict:
    """A saved optimizer state (whole tensors) with each parameter's moments sliced as it is sharded."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {**sd, "state": {i: {k: like(params[int(i)], v) if isinstance(v, torch.Tensor) and v.dim() else v
                                for k, v in st.items()} for i, st in sd["state"].items()}}


def prune_checkpoints(folder: RunFolder, keep: int, protect: set[int]) -> None:
    """Keep the newest `keep` complete checkpoints plus those in `protect` (the best one)."""
    ckpts = folder.checkpoints()
    for step, path in ckpts[:-keep] if keep else ckpts:
        if step not in protect:
            shutil.rmtree(path, ignore_errors=True)
    for stray in folder.stray_checkpoints():  # left by a crash mid-write
        shutil.rmtree(stray, ignore_errors=True)


def _rng_names(rank: int) -> tuple[str, str]:
    return (RNG_TENSORS, RNG_JSON) if rank == 0 else (f"rng-{rank}.safetensors", f"rng-{rank}.json")


def _rng_state() -> dict:
    """This process's RNG states: tensors and plain lists, nothing that needs unpickling."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"tensors": tensors, "python": [version, list(internal), gauss],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def _write_rng(folder: Path, state: dict, rank: int) -> None:
    from safetensors.torch import save_file

    tensors_file, json_file = _rng_names(rank)
    save_file(state["tensors"], folder / tensors_file)
    (folder / json_file).write_text(json.dumps({"python": state["python"], "numpy": state["numpy"]}))


def _save_rng(folder: Path) -> None:
    _write_rng(folder, _rng_state(), 0)


def _load_rng(folder: Path, rank: int = 0) -> None:
    from safetensors.torch import load_file

    tensors_file, json_file = _rng_names(rank)
    tensors = load_file(folder / tensors_file)
    plain = json.loads((folder / json_file).read_text())
    version, internal, gauss = plain["python"]
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in tensors))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
