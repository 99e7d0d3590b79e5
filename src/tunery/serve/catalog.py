"""What the API may name as a model: the bundled default, the bases the operator configured
(`tunery serve --base NAME=REF`), and fine-tunes in the registry by name or id. Never a server
path or a hub id a client makes up: a request cannot probe the filesystem, load an arbitrary
folder, or see another client's lookups in `/v1/models`.

Two engines serve different files for the same names. `resolve` gives the model folder the
PyTorch engine loads (and a fine-tuning job trains from, whichever engine serves). `gguf` gives
the GGUF file the llama.cpp engine loads: a configured base must then be a .gguf file, and a
fine-tune is served from its most recent gguf/ollama export (the registry's `exports` table)
whose file still exists. `names` lists what the catalog's own engine can serve.

Answers never include server paths; an unknown name and a path that exists on the server get
the same answer.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, ModelNotFound, TuneryError
from ..models import DEFAULT_ALIASES, ResolvedModel, resolve_model

REGISTRY_REF = re.compile(r"^(ft:[A-Za-z0-9._:-]+|[0-9a-f]{8,32})$")
CHECKPOINT_REF = re.compile(r"^(?P<owner>ft:[A-Za-z0-9._:-]+|[0-9a-f]{8,32}|ftjob-[0-9a-f]{24}):ckpt-step-(?P<step>[0-9]{1,9})$")
BASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ENGINES = ("pytorch", "llamacpp")
GGUF_FORMATS = ("gguf", "ollama")  # exports that hold a GGUF file
DEFAULT_NOT_GGUF = ("The model '{name}' is not served by the llamacpp engine: the bundled default is a Q4_1 GGUF, and "
                    "llama.cpp multiplies quantized weights with 8-bit-quantized activations, which SmolLM2-135M's "
                    "(reaching ~3000) ruin, so it answers wrongly there. Fine-tune it and serve the fine-tune's f16 "
                    "export (`tunery export NAME --format gguf`), or use --engine pytorch")


@dataclass(frozen=True)
class ServedGGUF:
    """What the llama.cpp engine serves for a name: a GGUF file, and the run it came from (if any)."""

    reference: str  # the name the request gave
    path: Path  # the .gguf file
    run: Path | None = None  # the fine-tune's run folder (its recorded retrieval grounds requests)


def parse_bases(specs: list[str]) -> dict[str, str]:
    """`NAME=REF` (or a bare REF, named after its last path part) -> {name: reference}."""
    bases: dict[str, str] = {}
    for spec in specs:
        name, sep, ref = spec.partition("=")
        if not sep:
            name, ref = Path(spec.rstrip("/")).name, spec
        if not BASE_NAME.match(name) or name.startswith("ft:") or name in DEFAULT_ALIASES:
            raise ConfigError(f"base: {name!r} is not a usable model name (letters, digits, . _ -; not a built-in "
                              "alias)", "base")
        if name in bases:
            raise ConfigError(f"base: {name!r} is given twice", "base")
        bases[name] = ref
    return bases


class Catalog:
    def __init__(self, bases: dict[str, str] | None = None, engine: str = "pytorch"):
        if engine not in ENGINES:
            raise ConfigError(f"engine: {engine!r} is not one of {', '.join(ENGINES)}", "engine")
        self.bases, self.engine = dict(bases or {}), engine

    def check(self) -> None:
        """Resolve every configured base once, at startup: a typo fails `tunery serve`, not a request."""
        if self.engine == "llamacpp":
            for name, ref in self.bases.items():
                if not _is_gguf(Path(ref).expanduser()):
                    raise ConfigError(f"base {name}={ref}: the llamacpp engine serves GGUF files; give NAME=FILE.gguf "
                                      "(or use --engine pytorch)", "base")
            return
        for name, ref in self.bases.items():
            try:
                resolve_model(ref)
            except TuneryError as exc:
                raise type(exc)(f"base {name}={ref}: {exc}", "base") from None

    def reference(self, name: str) -> str:
        """The model reference a training job records for `name` (checked by `resolve`)."""
        self.resolve(name)
        return self.bases.get(name, name)

    def name_for(self, reference: str) -> str | None:
        """The name this catalog serves a recorded base reference under (a fine-tune's base), or
        None when it serves no such base: the default by its alias, a configured base by its name."""
        if self.engine == "llamacpp":
            return next((n for n, ref in self.bases.items() if _same_path(ref, reference)), None)
        if str(reference).lower() in DEFAULT_ALIASES:
            return "default"
        if REGISTRY_REF.match(str(reference)):  # a fine-tune of a fine-tune: served by its name
            return str(reference)
        return next((n for n, ref in self.bases.items() if ref == reference or _same_path(ref, reference)), None)

    def resolve(self, name: str) -> ResolvedModel:
        if not isinstance(name, str) or not name:
            raise ModelNotFound("model is required", "model")
        if name.lower() in DEFAULT_ALIASES:
            return resolve_model(name)
        if name in self.bases:
            return resolve_model(self.bases[name])
        if m := CHECKPOINT_REF.match(name):
            return self._checkpoint(name, m["owner"], int(m["step"]))
        if REGISTRY_REF.match(name):
            from ..models.resolve import resolve_registered

            try:
                found = resolve_registered(name)
            except TuneryError:
                raise ModelNotFound(f"The model '{name}' has no servable weights (still training, removed, or "
                                    "replaced)", "model") from None
            if found is not None:
                return found
        raise ModelNotFound(f"The model '{name}' does not exist", "model")

    def _checkpoint(self, name: str, owner: str, step: int) -> ResolvedModel:
        """`<fine-tune or job>:ckpt-step-N`: that checkpoint, written out once as a model."""
        from ..home import tunery_home
        from ..registry import jobs, store
        from ..registry.db import connect
        from ..run_folder import RunFolder
        from ..training.snapshot import write_snapshot

        with connect(create=False) as conn:
            if conn is None:
                row = None
            elif owner.startswith("ftjob-"):
                job = jobs.get_job(conn, owner)
                row = job and job["run_dir"] and {"id": owner, "run_dir": job["run_dir"],
                                                  "base_ref": json.loads(job["config"] or "{}").get("model")}
            else:
                row = store.find(conn, owner)
        if not row or not row.get("base_ref"):
            raise ModelNotFound(f"The model '{name}' does not exist", "model")
        try:
            snapshot = write_snapshot(RunFolder(row["run_dir"]), step, row["base_ref"],
                                      tunery_home() / "snapshots" / f"{row['id']}-step-{step}")
        except TuneryError:
            raise ModelNotFound(f"The model '{name}' does not exist (no intact checkpoint at step {step})",
                                "model") from None
        if snapshot.name == "model":
            return ResolvedModel(name, snapshot.parent.name, snapshot, "run", run=Path(row["run_dir"]))
        base = resolve_model(row["base_ref"])
        return ResolvedModel(name, snapshot.parent.name, base.path, "run", adapter=snapshot, run=Path(row["run_dir"]))

    def gguf(self, name: str) -> ServedGGUF:
        """The GGUF file the llama.cpp engine serves for `name` (a configured base or a fine-tune's
        export), or ModelNotFound saying what to do."""
        if not isinstance(name, str) or not name:
            raise ModelNotFound("model is required", "model")
        if name.lower() in DEFAULT_ALIASES:
            raise ModelNotFound(DEFAULT_NOT_GGUF.format(name=name), "model")
        if name in self.bases:
            path = Path(self.bases[name]).expanduser()
            if not _is_gguf(path):
                raise ModelNotFound(f"The model '{name}' does not exist", "model")
            return ServedGGUF(name, path)
        if CHECKPOINT_REF.match(name):
            raise ModelNotFound(f"The model '{name}' is a training checkpoint: the llamacpp engine serves GGUF exports "
                                "of fine-tunes only (`tunery export NAME --format gguf`)", "model")
        if REGISTRY_REF.match(name) and not Path(name).expanduser().exists():
            from ..registry import store
            from ..registry.db import connect

            try:
                with connect(create=False) as conn:
                    row = store.find(conn, name)
                    path = _latest_gguf(conn, row["id"]) if row else None
            except TuneryError:
                row = None
            if row is not None:
                if path is None:
                    raise ModelNotFound(f"The model '{name}' has no GGUF export; run `tunery export {name} --format gguf`",
                                        "model")
                return ServedGGUF(name, path, Path(row["run_dir"]) if row["files"] == "ok" else None)
        raise ModelNotFound(f"The model '{name}' does not exist", "model")

    def names(self) -> list[str]:
        """Every model a client may name and this catalog's engine can serve: for PyTorch the default,
        the configured bases and completed fine-tunes; for llama.cpp the configured GGUF bases and
        the fine-tunes with a GGUF export on disk."""
        from ..registry import store
        from ..registry.db import connect

        gguf = self.engine == "llamacpp"
        names = [*self.bases] if gguf else ["default", *self.bases]
        with connect(create=False) as conn:
            if conn is not None:
                for m in store.list_models(conn):
                    if gguf and _latest_gguf(conn, m["id"]) is not None:
                        names.append(m["name"])
                    elif not gguf and m["status"] == "completed" and m["files"] == "ok":
                        names.append(m["name"])
        return list(dict.fromkeys(names))


def _latest_gguf(conn, model_id: str) -> Path | None:
    """The GGUF file of a model's most recent gguf/ollama export that is still on disk."""
    from ..registry import store

    for export in reversed(store.exports(conn, model_id)):
        if export["format"] in GGUF_FORMATS:
            files = [Path(export["path"]) / f for f in export["files"] if f.endswith(".gguf")]
            if files and files[0].is_file():
                return files[0]
    return None


def _is_gguf(path: Path) -> bool:
    """A .gguf file that starts as one does."""
    if path.suffix.lower() != ".gguf" or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _same_path(a: str, b: str) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except (OSError, RuntimeError):
        return False
