"""A checkpoint as a model: step N of a run written out in the layout the run itself ships
(adapter/ over the base, or a full model/), so it can be served, evaluated or merged like the
final weights. Served checkpoint names look like `ft:...:ckpt-step-N` (the jobs API lists them).

The weights are those the checkpoint recorded (checked against their sha256); the model is built
exactly as training built it, from the run's resolved config, and saved with the tokenizer and
chat template training used. The result is written once, atomically, and reused.
"""

from pathlib import Path

from ..config import TrainConfig
from ..errors import NotFound
from ..models import load_tokenizer, resolve_model
from ..run_folder import RunFolder
from . import checkpoint as ckpt


def write_snapshot(folder: RunFolder, step: int, base_ref: str, dest: Path) -> Path:
    """dest/adapter or dest/model for checkpoint `step`; returns that folder."""
    config = TrainConfig(**folder.read_config())
    kind = "model" if config.method == "full" else "adapter"
    out = Path(dest) / kind
    if out.is_dir():
        return out
    path = folder.checkpoint_dir(step)
    if (step, path) not in folder.checkpoints() or ckpt.damage(path, (ckpt.WEIGHTS,)):
        raise NotFound(f"step {step} has no intact checkpoint")
    from ..data.template import load_template
    from .loop import export
    from .setup import build_model

    base = resolve_model(base_ref)
    model = build_model(config.model_copy(update={"gradient_checkpointing": False}), base)
    ckpt.load_weights(path, model)
    tokenizer = load_tokenizer(base)
    if config.template:
        tokenizer.chat_template = load_template(tokenizer, config.template).source
    export(model, tokenizer, out)
    return out
