"""What the API may name as a model: the bundled default, the bases the operator configured
(`tunery serve --base NAME=REF`), and fine-tunes in the registry by name or id. Never a server
path or a hub id a client makes up: a request cannot probe the filesystem, load an arbitrary
folder, or see another client's lookups in `/v1/models`.

Answers never include server paths; an unknown name and a path that exists on the server get
the same answer.
"""

import json
import re
from pathlib import Path

from ..errors import ModelNotFound, TuneryError
from ..models import DEFAULT_ALIASES, ResolvedModel, resolve_model

REGISTRY_REF = re.compile(r"^(ft:[A-Za-z0-9._:-]+|[0-9a-f]{8,32})$")
CHECKPOINT_REF = re.compile(r"^(?P<owner>ft:[A-Za-z0-9._:-]+|[0-9a-f]{8,32}|ftjob-[0-9a-f]{24}):ckpt-step-(?P<step>[0-9]{1,9})$")
BASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def parse_bases(specs: list[str]) -> dict[str, str]:
    """`NAME=REF` (or a bare REF, named after its last path part) -> {name: reference}."""
    from pathlib import Path

    from ..errors import ConfigError

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
    def __init__(self, bases: dict[str, str] | None = None):
        self.bases = dict(bases or {})

    def check(self) -> None:
        """Resolve every configured base once, at startup: a typo fails `tunery serve`, not a request."""
        for name, ref in self.bases.items():
            try:
                resolve_model(ref)
            except TuneryError as exc:
                raise type(exc)(f"base {name}={ref}: {exc}", "base") from None

    def reference(self, name: str) -> str:
        """The model reference a training job records for `name` (checked by `resolve`)."""
        self.resolve(name)
        return self.bases.get(name, name)

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

    def names(self) -> list[str]:
        """Every model a client may name: the default, the configured bases, completed fine-tunes."""
        from ..registry import store
        from ..registry.db import connect

        names = ["default", *self.bases]
        with connect(create=False) as conn:
            if conn is not None:
                names += [m["name"] for m in store.list_models(conn) if m["status"] == "completed" and m["files"] == "ok"]
        return list(dict.fromkeys(names))
