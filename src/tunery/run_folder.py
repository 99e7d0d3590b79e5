"""The run folder: the one owner of its layout and of its record, `run.json`.

    RUN/config.yaml            the fully resolved recipe (auto values replaced by what was used)
    RUN/run.json               RunInfo: status, base model, data hashes and counts, final metrics,
                               and the registry id and name (a folder reused by a later run names
                               that run, which is how the registry tells its rows apart)
    RUN/metrics.jsonl          one line per optimizer step (and val_loss when computed)
    RUN/checkpoints/step-N/    resume points; complete once they hold the COMPLETE marker
    RUN/reference.safetensors  dpo: the starting model's log-probabilities of every pair, written
                               before the first step (a resumed run reads them, never recomputes)
    RUN/adapter/ | RUN/model/  PEFT adapter (LoRA/DoRA/QLoRA) or full weights, with tokenizer + template
    RUN/README.md              model card
    RUN/report/                `tunery compare`'s report.json and report.html
    RUN/eval-set.jsonl         the validation split written out for `retrain` / `reeval`

Only this module spells these names. Everything here is a plain file read or write: no model,
no registry, so every floor above may use it.

A run starts only in a folder that is absent or empty (`is_free`), and run.json is the first file
written into it: a folder that holds files but no run.json is someone else's, and tunery writes
nothing there (resuming and training both refuse it).
"""

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict

from .files import file_digest, write_json_atomic, write_text_atomic

CHECKPOINT_PREFIX = "step-"
COMPLETE = "COMPLETE"  # written last into a checkpoint folder: without it the folder is never loaded


class _Record(BaseModel):
    # Older run.json files may carry keys this tunery no longer writes: ignored, not an error.
    model_config = ConfigDict(extra="ignore")


class BaseRecord(_Record):
    reference: str  # what the run was given (--model)
    name: str
    path: str  # the resolved folder at training time
    source: str  # default | folder | gguf | hf-cache | run


class DataRecord(_Record):
    """One dataset as a run used it: a file (with its content hash) or a split of the training file."""

    file: str | None = None  # absolute; None for a split of the training file
    sha256: str | None = None
    examples: int | None = None  # rows in the file
    used: int  # examples trained (or validated) on
    format: str | None = None
    warnings: list[str] | None = None  # whole-file warnings (the template against the tokenizer)
    split: float | None = None  # the fraction held out, for a split
    lines: list[int] | None = None  # the held-out lines of the training file, for a split
    retrieval: dict | None = None  # grounded by an index: its path, fingerprint, documents' sha256, layout, k, hit rate

    @classmethod
    def of_file(cls, path: str, examples: int, used: int, **extra) -> "DataRecord":
        return cls(file=str(Path(path).resolve()), sha256=file_digest(Path(path)), examples=examples, used=used,
                   **extra)

    def public(self) -> dict:
        """As the registry records it: without the held-out line numbers, which stay in run.json."""
        return self.model_dump(exclude_none=True, exclude={"lines"})


class FinalRecord(_Record):
    model_config = ConfigDict(extra="allow")  # eval_<metric>: the generation metric at the shipped step

    steps: int
    shipped_step: int
    trained_tokens: int
    train_loss: float | None = None
    val_loss: float | None = None
    best_step: int | None = None
    best_by: str
    seconds: float


class RunInfo(_Record):
    """run.json. Written when the run starts (status running) and when it ships (completed); a run
    that raises after it started says so here as in the registry (failed, or interrupted: Ctrl-C,
    pause, cancel), with the error. A process killed outright cannot: its run.json stays running."""

    id: str | None = None  # registry id
    name: str | None = None  # registry name, ft:<base>:<suffix>:<short id>
    status: Literal["running", "completed", "failed", "interrupted", "cancelled"] = "running"
    method: str
    started: str
    finished: str | None = None
    error: str | None = None  # why a failed or interrupted run stopped
    base: BaseRecord
    data: DataRecord
    val: DataRecord | None = None
    parameters: dict[str, int]  # trainable, total
    artifact: Literal["adapter", "model"]
    final: FinalRecord | None = None


class RunFolder:
    """A run's folder. Cheap to make: nothing is read until asked."""

    CONFIG, INFO, METRICS, CHECKPOINTS = "config.yaml", "run.json", "metrics.jsonl", "checkpoints"
    CARD, REPORT, EVAL_SET, REFERENCE = "README.md", "report", "eval-set.jsonl", "reference.safetensors"
    ARTIFACTS = ("adapter", "model")
    # Everything tunery writes into a run folder; removing a model deletes only folders made of these.
    ENTRIES = frozenset({CONFIG, INFO, METRICS, CHECKPOINTS, CARD, REPORT, EVAL_SET, REFERENCE, *ARTIFACTS})

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @classmethod
    def default(cls, data: str, method: str) -> "RunFolder":
        """runs/<data>-<method>-<time>, when no --out is given."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        return cls(Path("runs") / f"{Path(data).stem}-{method}-{stamp}")

    # -- layout --------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def info_file(self) -> Path:
        return self.path / self.INFO

    @property
    def metrics_file(self) -> Path:
        return self.path / self.METRICS

    @property
    def card_file(self) -> Path:
        return self.path / self.CARD

    @property
    def report_dir(self) -> Path:
        return self.path / self.REPORT

    @property
    def eval_set_file(self) -> Path:
        return self.path / self.EVAL_SET

    @property
    def reference_file(self) -> Path:
        return self.path / self.REFERENCE

    def artifact(self, kind: str) -> Path:
        """adapter/ or model/: where the run's weights go."""
        if kind not in self.ARTIFACTS:
            raise ValueError(f"artifact must be one of {self.ARTIFACTS}, not {kind!r}")
        return self.path / kind

    @property
    def model_dir(self) -> Path | None:
        """Full weights, once shipped."""
        return self.path / "model" if (self.path / "model" / "config.json").is_file() else None

    @property
    def adapter_dir(self) -> Path | None:
        """A PEFT adapter, once shipped."""
        return self.path / "adapter" if (self.path / "adapter" / "adapter_config.json").is_file() else None

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / self.CHECKPOINTS

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / f"{CHECKPOINT_PREFIX}{step}"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints as (step, folder), oldest first."""
        folder = self.checkpoints_dir
        if not folder.is_dir():
            return []
        found = []
        for p in folder.glob(f"{CHECKPOINT_PREFIX}*"):
            step = p.name[len(CHECKPOINT_PREFIX):]
            if step.isdigit() and (p / COMPLETE).is_file():
                found.append((int(step), p))
        return sorted(found)

    def stray_checkpoints(self) -> list[Path]:
        """Temporary folders a crash mid-write left behind."""
        folder = self.checkpoints_dir
        return list(folder.glob(".tmp-*")) if folder.is_dir() else []

    # -- the records ---------------------------------------------------------------------------
    def is_run(self) -> bool:
        """A run folder: it has a run.json (a run that started)."""
        return self.info_file.is_file()

    def is_free(self) -> bool:
        """No such path, or an empty folder: where a new run may start without touching anyone's files."""
        return not self.path.exists() or (self.path.is_dir() and not any(self.path.iterdir()))

    def read_info(self) -> RunInfo:
        return RunInfo.model_validate_json(self.info_file.read_text())

    def write_info(self, info: RunInfo) -> None:
        write_json_atomic(self.info_file, info.model_dump(mode="json"))

    def owner_id(self) -> str | None:
        """The registry id run.json names, or None when there is no readable run.json."""
        try:
            return json.loads(self.info_file.read_text()).get("id")
        except (OSError, ValueError, AttributeError):
            return None

    def read_config(self) -> dict:
        return yaml.safe_load(self.config_file.read_text())

    def write_config(self, resolved: dict) -> None:
        write_text_atomic(self.config_file, yaml.safe_dump(resolved, sort_keys=False))

    def read_metrics(self) -> list[dict]:
        path = self.metrics_file
        return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []

    def open_metrics(self, resume_step: int | None) -> "MetricsLog":
        return MetricsLog(self.metrics_file, resume_step)


class MetricsLog:
    """metrics.jsonl, appended and flushed per step; on resume, cut back to the checkpoint's step."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is None:
            path.write_text("")
        else:
            kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= resume_step] \
                if path.exists() else []
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text("".join(ln + "\n" for ln in kept))
            os.replace(tmp, path)
        self._f = open(path, "a", encoding="utf-8")

    def log(self, row: dict) -> None:
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()
