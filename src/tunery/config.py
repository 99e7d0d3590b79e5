"""The typed recipe: one definition feeds CLI flags, YAML files, the Python API and the jobs API.

Each field's description is its help text. Values given as the string "auto" are resolved once,
by `TrainConfig.resolve`, when the training data has been counted; the resolved config is what
the loop runs, what config.yaml and the registry record, and what the jobs API reports.

`AnswerFormat` is what every generated answer must be (a JSON schema, any JSON object, a regex, one
of a closed list of choices): a recipe's `constraint`, which eval, compare and serve apply to the
fine-tune by default, and what `--schema`, `--regex` and `--choices` give on the command line. A
schema or choices file is read when the format is built, so the recipe records its content.
"""

import json
import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

MAX_CHOICES = 10_000  # choices of one format
MAX_CHOICE_CHARS = 1_000  # characters of one choice
MAX_FORMAT_BYTES = 256_000  # a schema (as JSON), a regex, or all choices together


class AnswerFormat(BaseModel):
    """What every answer must be: exactly one of a JSON schema, any JSON object, a regex matching the
    whole answer, or one of `choices`. Written as {kind: value} (YAML, config.yaml, the registry)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    json_schema: dict | None = None
    json_object: bool = False
    regex: Annotated[str, Field(min_length=1, max_length=MAX_FORMAT_BYTES)] | None = None
    choices: Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_CHOICE_CHARS)]],
                       Field(min_length=1, max_length=MAX_CHOICES)] | None = None

    @model_validator(mode="after")
    def _one(self):
        given = [k for k in ("json_schema", "json_object", "regex", "choices") if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise ValueError("give exactly one of json_schema, json_object, regex, choices"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.json_schema is not None and len(json.dumps(self.json_schema)) > MAX_FORMAT_BYTES:
            raise ValueError(f"the JSON schema is larger than {MAX_FORMAT_BYTES} bytes")
        if self.choices is not None:
            if len(set(self.choices)) != len(self.choices):
                raise ValueError("a choice is given twice")
            if sum(len(c) for c in self.choices) > MAX_FORMAT_BYTES:
                raise ValueError(f"the choices are longer than {MAX_FORMAT_BYTES} characters together")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("json_schema", "json_object", "regex", "choices") if getattr(self, k) not in (None, False))

    @model_serializer
    def _as_dict(self) -> dict:
        return {self.kind: getattr(self, self.kind)}

    def describe(self) -> str:
        """A short name of the format for tables: json_schema, json_object, regex /.../, choices (N)."""
        if self.regex is not None:
            return f"regex /{self.regex[:40]}/"
        if self.choices is not None:
            return f"choices ({len(self.choices)})"
        return self.kind


def answer_format(*, schema: str | Path | None = None, regex: str | None = None, choices: str | None = None,
                  json_object: bool = False) -> AnswerFormat | None:
    """The format the command line asks for (`--schema FILE`, `--regex P`, `--choices FILE|a,b,c`), or
    None. Unreadable files, empty choices and bad combinations are one-line ConfigErrors naming the flag."""
    from .errors import ConfigError, validated

    given = {k: v for k, v in (("--schema", schema), ("--regex", regex), ("--choices", choices)) if v is not None}
    if json_object:
        given["--json-object"] = True
    if len(given) > 1:
        raise ConfigError(f"{' and '.join(given)}: give one format, not {len(given)}", next(iter(given)))
    if not given:
        return None
    if schema is not None:
        return validated(AnswerFormat, "--schema: ", json_schema=_read_schema(schema, "--schema"))
    if regex is not None:
        if not regex:
            raise ConfigError("--regex: empty pattern", "--regex")
        return validated(AnswerFormat, "--regex: ", regex=regex)
    if choices is not None:
        return validated(AnswerFormat, "--choices: ", choices=_read_choices(choices, "--choices"))
    return AnswerFormat(json_object=True)


def _read_schema(path: str | Path, field: str) -> dict:
    from .errors import ConfigError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{field} {path}: no such file", field) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{field} {path}: cannot be read ({exc})", field) from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{field} {path}:{exc.lineno}: not JSON ({exc.msg})", field) from None
    if not isinstance(schema, dict):
        raise ConfigError(f"{field} {path}: a JSON schema must be an object", field)
    return schema


def _read_choices(value: str, field: str) -> list[str]:
    """`a,b,c` (a comma makes it a list), else a file: a JSON array of strings (.json) or one choice a
    line (blank lines skipped). Duplicates are kept once, in order."""
    from .errors import ConfigError

    if "," in value or not value.strip():
        items = [c.strip() for c in value.split(",")]
    else:
        path = Path(value)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{field} {value}: no such file (a list is written a,b,c)", field) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{field} {value}: cannot be read ({exc})", field) from None
        if path.suffix == ".json":
            try:
                items = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{field} {value}:{exc.lineno}: not JSON ({exc.msg})", field) from None
            if not isinstance(items, list) or not all(isinstance(c, str) for c in items):
                raise ConfigError(f"{field} {value}: must be a JSON array of strings", field)
        else:
            items = [line.strip() for line in text.splitlines()]
    items = list(dict.fromkeys(c for c in items if c))
    if not items:
        raise ConfigError(f"{field} {value}: no choices", field)
    return items


def _format_of(value) -> AnswerFormat | None:
    """A recipe's `constraint` as written: an AnswerFormat, {kind: value} (a schema or choices may
    name a file), or a string: json, schema:FILE, regex:PATTERN, choices:FILE|a,b,c; none/null: off."""
    if value is None or isinstance(value, AnswerFormat):
        return value
    if isinstance(value, str):
        kind, _, rest = value.partition(":")
        if value.strip().lower() in ("none", "null", ""):
            return None
        if value.strip() == "json":
            return AnswerFormat(json_object=True)
        if kind == "schema" and rest:
            return AnswerFormat(json_schema=_read_schema(rest, "constraint"))
        if kind == "regex" and rest:
            return AnswerFormat(regex=rest)
        if kind == "choices" and rest:
            return AnswerFormat(choices=_read_choices(rest, "constraint"))
        raise ValueError("write json, schema:FILE, regex:PATTERN or choices:FILE|a,b,c")
    if isinstance(value, dict):
        value = dict(value)
        if isinstance(value.get("json_schema"), str):
            value["json_schema"] = _read_schema(value["json_schema"], "constraint.json_schema")
        if isinstance(value.get("choices"), str):
            value["choices"] = _read_choices(value["choices"], "constraint.choices")
        return AnswerFormat(**value)
    raise ValueError("must be a format: json, schema:FILE, regex:PATTERN, choices:FILE|a,b,c, or a mapping")


class DataConfig(BaseModel):
    """How a dataset file becomes token sequences with loss masks."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = Field("default", description="Base model: default, a model folder, a .gguf file or a cached hub id")
    format: Literal["auto", "chat", "completion", "alpaca", "sharegpt", "text", "preference"] = Field(
        "auto", description="Dataset format; auto detects it from the file's rows")
    template: str | None = Field(None, description="A Jinja chat template file to use instead of the model's own")
    mask: Literal["assistant", "last", "all"] = Field(
        "assistant", description="Which tokens carry loss: every assistant turn, the last one, or all tokens")
    max_length: int = Field(2048, ge=8, description="Longest example in tokens")
    overlong: Literal["drop", "truncate", "error"] = Field(
        "drop", description="What happens to examples longer than max_length")
    retrieval: str | None = Field(
        None, description="A retrieval index (registered name or folder): each example's last user message retrieves "
        "its top chunks into the prompt, in the one layout training, eval and serving share")
    retrieval_k: int = Field(3, ge=1, le=20, description="Chunks retrieved per example")
    retrieval_distractors: float = Field(
        0.2, ge=0, lt=1, description="Fraction of training examples given only chunks that lack their answer (RAFT), "
        "so the model learns not to trust bad context")
    retrieval_unknown: str | None = Field(
        None, description="The answer a distractor example teaches (e.g. \"I don't know.\"); default: its own answer")


def suggest_epochs(n_examples: int) -> int:
    """Small sets are seen several times, large ones about once.

    Aim for roughly 1,000 example visits, within 1..10 epochs, and never more than ~25,000.
    """
    if n_examples <= 0:
        return 1
    if n_examples * 3 < 1000:
        return min(10, math.ceil(1000 / n_examples))
    if n_examples * 3 > 25000:
        return max(1, 25000 // n_examples)
    return 3


def steps_per_epoch(n_examples: int, batch_size: int, grad_accum: int) -> int:
    return math.ceil(n_examples / (batch_size * grad_accum))


Method = Literal["full", "lora", "dora", "qlora"]
AUTO_LR = {"full": 2e-5, "lora": 2e-4, "dora": 2e-4, "qlora": 2e-4}
Objective = Literal["sft", "dpo", "simpo"]
PREFERENCE_OBJECTIVES = ("dpo", "simpo")  # trained on preference pairs
AUTO_BETA = {"dpo": 0.1, "simpo": 2.0}
# Validation examples a run evaluates (val_max auto): a loss over a few hundred examples is precise
# enough to pick a checkpoint, and evaluating a thousand ten times a run costs about what training does.
AUTO_VAL_MAX = 256
# What preference objectives log per step (and as val_* on validation), each averaged per pair.
PREFERENCE_STATS = ("rewards_chosen", "rewards_rejected", "rewards_margin", "accuracy")
# Preference objectives start from a model that already does the task and nudge it: a tenth of
# the supervised learning rate (TRL's DPO default is 1e-6 for full fine-tunes, 5e-6..5e-5 with LoRA).
PREFERENCE_LR_FACTOR = 0.1


def auto_lr(method: str, objective: str = "sft") -> float:
    return AUTO_LR[method] * (PREFERENCE_LR_FACTOR if objective in PREFERENCE_OBJECTIVES else 1.0)
# Full fine-tunes from this size shard across processes (strategy auto): weights, gradients and
# AdamW's two moments are 16 bytes per parameter in fp32, 16 GB at 1B, more than most GPUs spare.
FSDP_FROM_PARAMETERS = 1_000_000_000


def auto_strategy(method: str, parameters: int) -> str:
    return "fsdp" if method == "full" and parameters >= FSDP_FROM_PARAMETERS else "ddp"


class TrainConfig(DataConfig):
    """A fine-tuning recipe. `tunery train --help` lists these fields as flags."""

    data: str = Field(..., description="Training dataset file (.jsonl, .json, .csv, .parquet)")
    val_data: str | None = Field(None, description="Validation dataset file (instead of --val-split)")
    val_split: float = Field(0.1, ge=0, lt=1, description="Fraction of the training file held out for validation when no --val-data (0: none)")
    val_max: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description=f"Most validation examples: a --val-split holds out at most this many (the rest "
        f"train), a --val-data file is sampled down to it; auto: {AUTO_VAL_MAX}; 0: no limit")
    method: Method = Field("lora", description="full | lora | dora | qlora")
    objective: Objective = Field(
        "sft", description="sft: learn the answers (supervised); dpo: prefer each pair's chosen answer to its rejected "
        "one, against the starting model as reference; simpo: the same without a reference (length-normalised)")
    beta: Annotated[float, Field(gt=0)] | Literal["auto"] | None = Field(
        "auto", description="Preference strength (dpo, simpo): how far from the reference the model may move; "
        "auto: 0.1 for dpo, 2.0 for simpo")
    simpo_gamma: float = Field(1.0, ge=0, description="SimPO's target margin between chosen and rejected rewards")
    epochs: int | Literal["auto"] = Field("auto", description="Passes over the data; auto picks from the dataset size")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs)")
    lr: float | Literal["auto"] = Field(
        "auto", description="Peak learning rate; auto: 2e-4 for LoRA/DoRA/QLoRA, 2e-5 for full, a tenth of that for dpo/simpo")
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch, across all processes (each takes its share)")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step")
    group_by_length: bool = Field(True, description="Put examples of similar length in the same step (less padding)")
    share_prefix: bool | Literal["auto"] = Field(
        "auto", description="Run a prefix all examples of a micro-batch share (a system prompt) once; same loss. auto: "
        "unless the run's first micro-batch measures it slower on this machine")
    gradient_checkpointing: bool = Field(False, description="Recompute each layer's activations in backward: much less memory, somewhat slower")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="Learning-rate decay after warmup")
    warmup: float = Field(0.05, ge=0, lt=1, description="Fraction of steps spent warming up the learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha (scale = alpha / r)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA path")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get adapters: all-linear, or a comma-separated list")
    eval_every: int | Literal["auto"] | None = Field("auto", description="Validation loss every N steps (and at the end); auto: about 10 times per run")
    save_every: int | Literal["auto"] | None = Field("auto", description="Checkpoint every N steps (and at the end); auto: with each evaluation")
    keep_checkpoints: int = Field(2, ge=1, description="Newest checkpoints kept (the best one is always kept too)")
    early_stopping: int | None = Field(None, ge=1, description="Stop after this many evaluations without a better validation loss")
    select: Literal["best", "last"] = Field("best", description="Which weights the run ships: the best checkpoint or the last step")
    best_by: Literal["val_loss", "metric"] = Field(
        "val_loss", description="What makes a checkpoint best: validation loss, or the generation metric (--eval-metric)")
    eval_generate_every: int | None = Field(
        None, ge=1, description="Every N steps (and at the end), generate answers for validation examples and score them")
    eval_metric: str = Field("exact", description="Metric for --eval-generate-every: exact, json_exact, rougeL, ... or module:function")
    eval_samples: int = Field(32, ge=1, description="Validation examples used for the generation metric")
    eval_max_new_tokens: int = Field(128, ge=1, description="Longest generated answer during --eval-generate-every")
    nproc: int = Field(1, ge=1, description="Processes to train with on this machine, started through accelerate's "
                       "launcher (under accelerate launch or torchrun, the launcher's processes count instead)")
    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="How processes share the work: ddp (each holds the whole model), fsdp (weights, gradients "
        "and optimizer state sharded; full fine-tuning); auto: fsdp for full fine-tunes of 1B+ parameters, else ddp")
    seed: int = Field(42, description="Seeds data order, split, initialisation and dropout")
    out: str | None = Field(None, description="Run folder (default: runs/<data>-<method>-<time>)")
    resume: bool = Field(False, description="Continue from the latest complete checkpoint in --out")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA and on CPUs measured faster in bf16, else fp32")
    suffix: str | None = Field(
        None, pattern=r"^[A-Za-z0-9._-]{1,40}$",
        description="Part of the registry name ft:<base>:<suffix>:<id>; default: the data file's name")
    derived_from: str | None = Field(None, description="Registry id of the model this run re-trains (set by tunery retrain)")
    data_cache: bool = Field(
        True, description="Keep the encoded data in a memory-mapped cache under TUNERY_HOME, reused while the file, "
        "tokenizer, template and length settings are unchanged (off: encode afresh each run)")
    constraint: AnswerFormat | None = Field(
        None, description="The format every answer must have, applied by generate, eval, compare and serve to this fine-tune "
        "unless asked otherwise: json, schema:FILE, regex:PATTERN or choices:FILE|a,b,c (files are read and recorded)")

    def resolve(self, n_examples: int, n_val: int, *, precision: Literal["fp32", "bf16"], format: str,
                processes: int = 1, parameters: int = 0) -> "TrainConfig":
        """This recipe with every auto value replaced by what a run on `n_examples` training (and
        `n_val` validation) examples uses: epochs, max_steps (the total), lr, eval_every (None
        without validation data), save_every, the precision measured for this machine, the
        detected data format, the run folder, the processes training together and the strategy
        (by method and the base's `parameters`). share_prefix auto is left to the loop, which times
        it on the built model (training/autotune.py) and records the answer."""
        from .run_folder import RunFolder

        per_epoch = steps_per_epoch(n_examples, self.batch_size, self.grad_accum)
        epochs = suggest_epochs(n_examples) if self.epochs == "auto" else self.epochs
        total = self.max_steps or per_epoch * epochs
        eval_every = max(1, total // 10) if self.eval_every == "auto" else self.eval_every
        return self.model_copy(update={
            "epochs": math.ceil(total / per_epoch), "max_steps": total,
            "lr": auto_lr(self.method, self.objective) if self.lr == "auto" else self.lr,
            "beta": (AUTO_BETA.get(self.objective) if self.beta == "auto" else self.beta)
            if self.objective in PREFERENCE_OBJECTIVES else None,
            "val_max": self.val_cap,
            "eval_every": eval_every if n_val else None, "save_every": eval_every if self.save_every == "auto" else self.save_every,
            "precision": precision, "format": format, "resume": False, "nproc": processes,
            "strategy": auto_strategy(self.method, parameters) if self.strategy == "auto" else self.strategy,
            "out": self.out or str(RunFolder.default(self.data, self.method).path),
        })

    @property
    def is_resolved(self) -> bool:
        return "auto" not in (self.epochs, self.lr, self.eval_every, self.save_every, self.precision, self.format,
                              self.strategy, self.beta, self.val_max)  # share_prefix: the loop measures it

    @property
    def val_cap(self) -> int:
        """The most validation examples a run uses (0: no limit)."""
        return AUTO_VAL_MAX if self.val_max == "auto" else self.val_max

    @property
    def preference(self) -> bool:
        """Trained on preference pairs (dpo, simpo) rather than answers."""
        return self.objective in PREFERENCE_OBJECTIVES

    @field_validator("constraint", mode="before")
    @classmethod
    def _constraint(cls, v):
        from .errors import ConfigError

        try:
            return _format_of(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split_modules(cls, v):
        if isinstance(v, str) and v != "all-linear":
            return [m.strip() for m in v.split(",") if m.strip()]
        return v

    @field_validator("epochs", "eval_every", "save_every", mode="before")
    @classmethod
    def _positive_or_auto(cls, v, info):
        if isinstance(v, str) and v != "auto" and v.strip().lstrip("-").isdigit():
            v = int(v)
        if isinstance(v, int) and not isinstance(v, bool) and v < 1:
            raise ValueError(f"{info.field_name} must be at least 1 or auto")
        return v

    @field_validator("lr", mode="before")
    @classmethod
    def _lr(cls, v):
        if isinstance(v, str) and v != "auto":
            try:
                v = float(v)
            except ValueError:
                raise ValueError("lr must be a number or auto") from None
        if isinstance(v, (int, float)) and not 0 < v < 1:
            raise ValueError("lr must be between 0 and 1")
        return v


def load_train_config(yaml_path: str | None = None, **flags) -> TrainConfig:
    """CLI > YAML > defaults. Unknown YAML keys and bad values are one-line errors naming the field."""
    import yaml
    from pydantic import ValidationError

    from .errors import ConfigError, config_error

    values: dict = {}
    if yaml_path:
        try:
            with open(yaml_path, encoding="utf-8") as f:
                loaded = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"{yaml_path}: no such config file") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{yaml_path}:{mark.line + 1}" if mark else yaml_path
            raise ConfigError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{yaml_path}: a config file must be a mapping of field: value")
        values.update({k.replace("-", "_"): v for k, v in loaded.items()})
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        field = str(exc.errors()[0]["loc"][0]) if exc.errors()[0]["loc"] else ""
        source = f"{yaml_path}: " if yaml_path and field in values and field not in flags else ""
        raise config_error(exc, source) from None
