"""The training loop: one file, read top to bottom.

  1) resolve everything (model, data, auto values) and refuse bad input before any compute
  2) build the model (full | LoRA | DoRA | QLoRA), AdamW, warmup + cosine/linear schedule
  3) resume from the latest complete checkpoint, if asked
  4) loop: for each optimizer step, micro-batches whose summed token losses are divided by the
     step's total trained tokens (so batch 4 x accumulation 2 == batch 8), clip, step, log;
     evaluate, checkpoint, early-stop on schedule
  5) ship the selected weights (best or last) with tokenizer, config and model card
"""

import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import AUTO_LR, TrainConfig, suggest_epochs
from ..errors import ConfigError, TuneryError
from ..models import load_tokenizer, resolve_model
from ..models.hardware import keep_freed_memory
from ..registry import recorder as registry
from . import checkpoint as ckpt
from ..data.render import stop_token_ids
from ..data.template import load_template
from .batches import collate, step_groups, steps_per_epoch
from . import attention
from .loss import TokenLoss
from .generate_eval import generation_score
from .run_dir import (Metrics, data_record, default_run_dir, now, read_metrics, read_run, write_config,
                      write_json_atomic, write_model_card, RUN_FILE)
from .setup import build_model, check_method_supported, count_parameters, device_and_dtype


@dataclass
class Run:
    dir: Path
    config: dict
    info: dict
    metrics: list[dict] = field(default_factory=list)

    @property
    def val_loss(self):
        return self.info.get("final", {}).get("val_loss")


class TrainingStopped(Exception):
    """Raised out of `train` when `on_step` asked to pause (after a checkpoint) or cancel."""

    def __init__(self, action: str, step: int):
        super().__init__(f"training {action} at step {step}")
        self.action, self.step = action, step


def train(config: "TrainConfig | dict", progress: bool = True, on_step=None, **overrides) -> Run:
    """Fine-tune; the run is recorded in the registry as it starts, ends, or fails."""
    with registry.tracking():
        return _train(config, progress, on_step, **overrides)


def _train(config: "TrainConfig | dict", progress: bool = True, on_step=None, **overrides) -> Run:
    import torch

    cfg = config if isinstance(config, TrainConfig) else TrainConfig(**config)
    if overrides:
        cfg = cfg.model_copy(update=overrides)
    say = _printer(progress)

    # 1) resolve inputs -------------------------------------------------------------------------
    check_method_supported(cfg)
    device_and_dtype(cfg)
    metric_key = _check_eval_metric(cfg)
    base = resolve_model(cfg.model)
    tokenizer = load_tokenizer(base)
    train_set, val_set, data_info = load_data(cfg, tokenizer)
    for note in data_info["data"].get("warnings", []):
        from rich.markup import escape

        say(f"[yellow]warning[/] {escape(note)}")
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg.data, cfg.method)
    resume_from = None
    if cfg.resume:
        found = ckpt.complete_checkpoints(run_dir)
        if not found and not (run_dir / RUN_FILE).exists():
            raise ConfigError(f"resume: {run_dir} holds no run to resume")
        resume_from = found[-1] if found else None
    elif (run_dir / RUN_FILE).exists():
        raise ConfigError(f"out: {run_dir} already holds a run; pass --resume to continue it or choose another --out")

    per_epoch = steps_per_epoch(len(train_set), cfg.batch_size, cfg.grad_accum)
    epochs = suggest_epochs(len(train_set)) if cfg.epochs == "auto" else cfg.epochs
    total_steps = cfg.max_steps or per_epoch * epochs
    lr = AUTO_LR[cfg.method] if cfg.lr == "auto" else cfg.lr
    eval_every = max(1, total_steps // 10) if cfg.eval_every == "auto" else cfg.eval_every
    save_every = eval_every if cfg.save_every == "auto" else cfg.save_every
    resolved = cfg.model_dump() | {
        "epochs": math.ceil(total_steps / per_epoch), "lr": lr, "eval_every": eval_every, "save_every": save_every,
        "out": str(run_dir), "resume": False, "max_steps": total_steps, "format": data_info["data"]["format"],
        "precision": "bf16" if device_and_dtype(cfg)[1] == torch.bfloat16 else "fp32",
    }
    if not val_set:
        resolved["eval_every"] = None

    # 2) model, optimizer, schedule ---------------------------------------------------------------
    from accelerate import Accelerator

    device, dtype = device_and_dtype(cfg)
    if device == "cpu":
        keep_freed_memory()
    # Mixed precision by plain torch.autocast: accelerate's is process-global and would pin every
    # later run in this process (tests, the jobs worker) to the first run's precision.
    accelerator = Accelerator(cpu=device == "cpu")
    autocast = functools.partial(torch.autocast, device_type=device, dtype=torch.bfloat16,
                                 enabled=dtype == torch.bfloat16)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, base)
    packed = attention.installed(model)
    trainable, total = count_parameters(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999),
                                  fused=device == "cuda")
    warmup = round(cfg.warmup * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg.schedule, warmup, total_steps))
    loss_fn, optimizer = accelerator.prepare(TokenLoss(model), optimizer)

    run_dir.mkdir(parents=True, exist_ok=True)
    info = read_run(run_dir) if resume_from or cfg.resume else {}
    info.update({
        "status": "running", "method": cfg.method, "started": info.get("started", now()),
        "base": {"reference": cfg.model, "name": base.name, "path": str(base.path), "source": base.source},
        **data_info, "parameters": {"trainable": trainable, "total": total},
        "artifact": "model" if cfg.method == "full" else "adapter",
    })
    info.update(registry.started(run_dir, resolved, info, base))  # {"id", "name"}, saved in run.json too
    write_config(run_dir, resolved)
    write_json_atomic(run_dir / RUN_FILE, info)

    # 3) resume -----------------------------------------------------------------------------------
    state = {"step": 0, "best_score": None, "best_step": None, "evals_since_best": 0, "trained_tokens": 0, "tokens": 0}
    if resume_from is not None:
        state = ckpt.load_checkpoint(resume_from, model, optimizer, scheduler)
        say(f"resuming {run_dir} from {resume_from.name}")
    metrics = Metrics(run_dir / "metrics.jsonl", resume_step=state["step"] if cfg.resume else None)

    say(f"[bold]train[/] {cfg.method} on {base.name}: {len(train_set)} train / {len(val_set)} val examples, "
        f"{epochs if cfg.max_steps is None else resolved['epochs']} epochs, {total_steps} steps, lr {lr:g}, "
        f"batch {cfg.batch_size}x{cfg.grad_accum}, trainable {trainable:,} of {total:,} params, {device} "
        f"{str(dtype).replace('torch.', '')} → {run_dir}")

    # 4) loop -------------------------------------------------------------------------------------
    batch_of = functools.partial(collate, pad_id=tokenizer.pad_token_id, device=accelerator.device, packed=packed,
                                 share_prefix=cfg.share_prefix)
    template = load_template(tokenizer, cfg.template)  # the one training renders with
    stop_ids = stop_token_ids(tokenizer, template)
    bar = _progress(progress, total_steps, state["step"])
    started = time.perf_counter()
    step, stop = state["step"], False
    try:
        model.train()
        while step < total_steps and not stop:
            epoch = step // per_epoch
            for k, micro_batches in enumerate(step_groups(train_set, cfg.seed, epoch, cfg.batch_size, cfg.grad_accum,
                                                                cfg.group_by_length)):
                if k < step - epoch * per_epoch:
                    continue  # already trained before the resume
                t0 = time.perf_counter()
                group_tokens = sum(sum(e.loss_mask[1:]) for mb in micro_batches for e in mb)
                step_loss, step_tokens = 0.0, 0
                for mb in micro_batches:
                    batch = batch_of(mb)
                    with autocast():
                        loss_sum, _ = loss_fn(**batch)
                    accelerator.backward(loss_sum / group_tokens)
                    step_loss += loss_sum.detach()  # read once per step: no device sync per micro-batch
                    step_tokens += sum(len(e.input_ids) for e in mb)
                grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                lr_now = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                state["step"] = step
                state["trained_tokens"] += group_tokens
                state["tokens"] += step_tokens
                row = {"step": step, "epoch": round(step / per_epoch, 4), "loss": float(step_loss) / group_tokens,
                       "lr": lr_now, "grad_norm": float(grad_norm), "tokens": state["tokens"],
                       "trained_tokens": state["trained_tokens"],
                       "tokens_per_s": round(step_tokens / (time.perf_counter() - t0), 1)}
                last = step == total_steps
                if val_set and (step % eval_every == 0 or last):
                    row["val_loss"] = evaluate(loss_fn, val_set, cfg.batch_size, batch_of, autocast)
                    model.train()
                if metric_key and val_set and (step % cfg.eval_generate_every == 0 or last):
                    with autocast():  # the frozen base may be stored in bf16 (setup.py)
                        row[metric_key] = generation_score(
                            model, tokenizer, val_set[: cfg.eval_samples], cfg.eval_metric, stop_ids,
                            max_new_tokens=cfg.eval_max_new_tokens, batch_size=cfg.batch_size,
                            device=accelerator.device)
                # Lower is better: validation loss, or the negated generation metric.
                score = row.get("val_loss") if cfg.best_by == "val_loss" else (
                    -row[metric_key] if metric_key in row else None)
                if score is not None:
                    if state["best_score"] is None or score < state["best_score"]:
                        state.update(best_score=score, best_step=step, evals_since_best=0)
                    else:
                        state["evals_since_best"] += 1
                        stop = cfg.early_stopping is not None and state["evals_since_best"] >= cfg.early_stopping
                metrics.log(row)
                # A caller (the jobs worker) may pause or cancel between steps; pausing first
                # checkpoints this step so resuming loses nothing.
                action = on_step(row | {"total_steps": total_steps}) if on_step else None
                if (save_every and step % save_every == 0) or last or stop or state["best_step"] == step \
                        or action == "pause":
                    ckpt.save_checkpoint(run_dir, step, model, optimizer, scheduler, state)
                    ckpt.prune_checkpoints(run_dir, cfg.keep_checkpoints, {state["best_step"]} - {None})
                if action in ("pause", "cancel"):
                    raise TrainingStopped(action, step)
                bar.update(row)
                if last or stop:
                    break
    except torch.OutOfMemoryError:
        raise TuneryError(f"out of memory at step {step + 1} (batch {cfg.batch_size}, max_length {cfg.max_length}): "
                          "lower --batch-size (raise --grad-accum to keep the effective batch) or --max-length, "
                          "or use --method lora / qlora") from None
    finally:
        bar.close()
        metrics.close()
    if stop:
        say(f"early stopping at step {step}: no better {cfg.best_by} in {cfg.early_stopping} evaluations")

    # 5) ship the selected weights ----------------------------------------------------------------
    shipped = step
    if cfg.select == "best" and state["best_step"] and state["best_step"] != step:
        best = run_dir / "checkpoints" / f"step-{state['best_step']}"
        from safetensors.torch import load_file

        ckpt.load_trainable(model, load_file(best / "trainable.safetensors"))
        shipped = state["best_step"]
    if cfg.template:  # inference must use the template training used: ship it with the weights
        tokenizer.chat_template = template.source
    export(model, tokenizer, run_dir, cfg.method)
    rows = read_metrics(run_dir)
    at_shipped = next((r for r in rows if r["step"] == shipped), {})
    final = {"steps": step, "shipped_step": shipped, "trained_tokens": state["trained_tokens"],
             "train_loss": rows[-1]["loss"] if rows else None, "val_loss": at_shipped.get("val_loss"),
             "best_step": state["best_step"], "best_by": cfg.best_by, "seconds": round(time.perf_counter() - started, 1)}
    if metric_key:
        final[metric_key] = at_shipped.get(metric_key)
    info.update(status="completed", finished=now(), final=final)
    write_json_atomic(run_dir / RUN_FILE, info)
    registry.finished(info)
    write_model_card(run_dir, info, resolved)
    say(f"[green]done[/]: {info['name']} in {run_dir} (val_loss {final['val_loss']}, shipped step {shipped})")
    return Run(run_dir, resolved, info, rows)


def _check_eval_metric(cfg: TrainConfig) -> str | None:
    """The metrics.jsonl key of the generation metric, after checking it exists (before compute)."""
    from ..evaluate.metrics import resolve_metrics

    if cfg.best_by == "metric" and not cfg.eval_generate_every:
        raise ConfigError("best_by: metric needs --eval-generate-every N")
    if not cfg.eval_generate_every:
        return None
    resolve_metrics([cfg.eval_metric])
    return f"eval_{cfg.eval_metric}"


def evaluate(loss_fn, examples, batch_size, batch_of, autocast) -> float:
    """Mean loss per trained token over the validation set."""
    import torch

    loss_fn.eval()
    total, count = 0.0, 0
    ordered = sorted(examples, key=lambda e: len(e.input_ids))
    with torch.no_grad():
        for i in range(0, len(ordered), batch_size):
            batch = batch_of(ordered[i: i + batch_size])
            with autocast():
                loss_sum, n = loss_fn(**batch)
            total += loss_sum.item()
            count += int(n)
    return total / max(count, 1)


def load_data(cfg: TrainConfig, tokenizer):
    """Check and encode the training (and validation) data; any error stops here, before compute."""
    from ..data import scan_file, split_examples
    from ..data.doctor import make_renderer

    renderer = make_renderer(tokenizer, cfg)

    def scan(path):
        s = scan_file(path, renderer, max_length=cfg.max_length, overlong=cfg.overlong, fmt=cfg.format, keep=True)
        s.raise_if_errors()
        if not s.kept:
            raise TuneryError(f"{path}: no usable examples (all dropped as longer than max_length {cfg.max_length})")
        return s

    train_scan = scan(cfg.data)
    train_set, val_set = train_scan.kept, []
    info = {"data": data_record(cfg.data, train_scan.examples, len(train_scan.kept)) | {"format": train_scan.format}}
    # Whole-file warnings (the template's end-of-turn marker against the tokenizer) travel with the run.
    if notes := [f"{w.code}: {w.message}" for w in train_scan.warnings if w.line == 0]:
        info["data"]["warnings"] = notes
    if cfg.val_data:
        val_scan = scan(cfg.val_data)
        val_set = val_scan.kept
        info["val"] = data_record(cfg.val_data, val_scan.examples, len(val_set))
    elif cfg.val_split > 0:
        train_set, val_set = split_examples(train_set, cfg.val_split, cfg.seed)
        info["val"] = {"file": None, "split": cfg.val_split, "used": len(val_set),
                       "lines": [e.line for e in val_set]}
        info["data"]["used"] = len(train_set)
    return train_set, val_set, info


def export(model, tokenizer, run_dir: Path, method: str) -> None:
    """Write adapter/ (PEFT format, no embedding copies) or model/ (full weights), atomically."""
    from ..home import atomic_dir
    attention.uninstall(model)
    with atomic_dir(run_dir / ("model" if method == "full" else "adapter")) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def _schedule(kind: str, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else max(0.0, 1 - progress)
    return factor


def _printer(enabled: bool):
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    return (lambda msg: console.print(msg)) if enabled else (lambda msg: None)


class _progress:
    """A rich progress bar with loss, tokens/s and ETA; silent when disabled."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.p = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.p = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                          TimeRemainingColumn(), console=__import__("rich.console").console.Console(stderr=True))
        self.task = self.p.add_task("train", total=total, completed=done, info="")
        self.p.start()

    def update(self, row: dict) -> None:
        if self.p:
            val = f" val {row['val_loss']:.4f}" if "val_loss" in row else ""
            self.p.update(self.task, advance=1, info=f"loss {row['loss']:.4f}{val} {row['tokens_per_s']:.0f} tok/s")

    def close(self) -> None:
        if self.p:
            self.p.stop()
