"""The training loop: one file, read top to bottom.

  1) resolve everything (model, data, auto values) and refuse bad input before any compute
  2) build the model (full | LoRA | DoRA | QLoRA), AdamW, warmup + cosine/linear schedule
  3) resume from the newest intact checkpoint that loads, if asked (damaged ones are skipped with a
     warning); only then is the run recorded (run.json, the registry) as running
  4) loop: for each optimizer step, micro-batches whose summed losses are divided by the step's
     total units, trained tokens (sft) or pairs (dpo, simpo; objectives.py), so batch 4 x
     accumulation 2 == batch 8; clip, step, log; evaluate, checkpoint, early-stop on schedule
  5) ship the selected weights (best or last) with tokenizer, config and model card

With several processes (`--nproc N`, accelerate launch, torchrun) every process runs this same
function: each trains its shard of every micro-batch, the loss is normalised by the step's
trained tokens across all of them, and rank 0 alone records and writes (distributed.py says how).

A caller may watch and steer the run through `on_step(row) -> Signal | None`, called after each
optimizer step: Signal.PAUSE checkpoints that step and stops, Signal.CANCEL stops; both raise
TrainingStopped, which the registry records as an interruption, not a failure. Progress (a "train"
task in steps, the loss as its note) and status lines go to whoever listens (progress.py).
"""

import functools
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..config import TrainConfig, steps_per_epoch
from ..data.render import stop_token_ids
from ..data.template import load_template
from ..errors import ConfigError, TuneryError
from ..files import now
from ..models import load_tokenizer, resolve_model
from ..models.hardware import keep_freed_memory
from ..progress import Task, say as status
from ..registry import recorder as registry
from ..run_folder import BaseRecord, DataRecord, FinalRecord, RunFolder, RunInfo
from . import attention, autotune, launch
from . import checkpoint as ckpt
from .batches import collate, step_groups
from .card import write_model_card
from .checkpoint import TrainState
from .control import OnStep, Signal, TrainingStopped, step_note
from .distributed import World, full, shard_model
from .generate_eval import generation_score
from .loss import TokenLoss
from .objectives import PREFERENCE_STATS, objective_for
from .setup import base_parameters, build_model, check_method_supported, count_parameters, device_and_dtype

__all__ = ["Run", "Signal", "TrainingStopped", "train"]


@dataclass
class Run:
    dir: Path
    config: dict  # the resolved recipe, as config.yaml holds it
    info: RunInfo
    metrics: list[dict] = field(default_factory=list)

    @property
    def val_loss(self):
        return self.info.final.val_loss if self.info.final else None


def train(config: "TrainConfig | dict", progress: bool = True, on_step: OnStep | None = None, **overrides) -> Run:
    """Fine-tune; the run is recorded in the registry as it starts, ends, or fails."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig(**config)
    if overrides:
        cfg = cfg.model_copy(update=overrides)
    if launch.wanted(cfg):  # --nproc N: start N processes, each of which runs this function
        folder = launch.run(cfg, progress, on_step)
        return Run(folder.path, folder.read_config(), folder.read_info(), folder.read_metrics())
    with registry.tracking(interrupted=(KeyboardInterrupt, TrainingStopped)), World.joined() as world:
        return _train(cfg, world, progress, on_step)


def _train(cfg: TrainConfig, world: World, progress: bool = True, on_step: OnStep | None = None) -> Run:
    """`world`: this process alone, or its rank among the processes a launcher started."""
    import torch

    # 1) resolve inputs -------------------------------------------------------------------------
    check_method_supported(cfg)
    world.refuse_unsupported(cfg.grad_accum)
    device, dtype = device_and_dtype(cfg)
    if device == "cpu":
        keep_freed_memory()
    say = _printer(progress and world.main)
    warn = _warner(say)
    resume_from, candidates, skipped = None, iter(()), []

    def skip(problem: str) -> None:  # a damaged or unloadable checkpoint
        skipped.append(problem)
        warn(f"skipping checkpoint {problem}")

    with world.agreeing():  # an error in any process stops them all; rank 0 names it
        metric_key = _check_eval_metric(cfg)
        base = resolve_model(cfg.model)
        tokenizer = load_tokenizer(base)
        loaded = load_data(cfg, tokenizer, warn=warn) if world.main else None  # rank 0 encodes, into the cache
    with world.agreeing():  # the others then read what rank 0 encoded (data/cache.py), not encode it again
        train_set, val_set, data, val = loaded or load_data(cfg, tokenizer, warn=warn)
        for note in data.warnings or []:
            warn(note)
        folder = RunFolder(cfg.out) if cfg.out else RunFolder.default(cfg.data, cfg.method)
        if world.main:  # the run folder is rank 0's: it alone reads and writes it
            if cfg.resume:
                found = folder.checkpoints()
                if not found and not folder.is_run():
                    raise ConfigError(f"resume: {folder.path} holds no run to resume", field="resume")
                candidates = ckpt.intact(found, skip)  # newest first, each verified against its sha256
                resume_from = next(candidates, None)
                if found and resume_from is None:
                    raise ConfigError(f"resume: no intact checkpoint in {folder.path}: {_first(skipped)}; move "
                                      f"{folder.checkpoints_dir} away to start over, or train into a new --out",
                                      field="resume")
            elif folder.is_run():
                raise ConfigError(f"out: {folder.path} already holds a run; pass --resume to continue it or choose "
                                  "another --out", field="out")
            elif not folder.is_free():  # someone's files: a run would overwrite README.md, adapter/, ...
                raise ConfigError(f"out: {folder.path} exists and is not empty but holds no tunery run (no run.json); "
                                  "choose a new or empty folder", field="out")
    folder = RunFolder(world.broadcast(str(folder.path)))  # a default folder's time stamp is rank 0's
    # Every auto value, once: the loop, config.yaml, the registry and the jobs API all read this.
    run_cfg = cfg.model_copy(update={"out": str(folder.path)}).resolve(
        len(train_set), len(val_set), precision="bf16" if dtype == torch.bfloat16 else "fp32", format=data.format,
        processes=world.size, parameters=base_parameters(base))
    if world.size > 1 and run_cfg.strategy == "fsdp" and cfg.eval_generate_every:
        raise ConfigError("eval_generate_every: generating from a sharded (fsdp) model is not supported yet; "
                          "use --strategy ddp, or evaluate the shipped model with tunery eval", field="eval_generate_every")
    resolved = run_cfg.model_dump()
    total_steps, per_epoch = run_cfg.max_steps, steps_per_epoch(len(train_set), cfg.batch_size, cfg.grad_accum)

    # 2) model, optimizer, schedule ---------------------------------------------------------------
    # Mixed precision by plain torch.autocast: accelerate's is process-global and would pin every
    # later run in this process (tests, the jobs worker) to the first run's precision.
    accelerator = world.accelerator
    autocast = functools.partial(torch.autocast, device_type=device, dtype=torch.bfloat16,
                                 enabled=dtype == torch.bfloat16)
    torch.manual_seed(cfg.seed)  # the same initial weights in every process
    with world.agreeing():
        model = build_model(cfg, base)
    if world.rank:
        torch.manual_seed(cfg.seed + world.rank)  # each process its own dropout
    packed = attention.installed(model)
    trainable, total = count_parameters(model)
    token_loss = TokenLoss(model)
    objective = objective_for(run_cfg)
    fsdp = world.size > 1 and run_cfg.strategy == "fsdp"
    if fsdp:
        shard_model(token_loss)  # before the optimizer: its state is sharded as the weights are
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=run_cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999),
                                  fused=device == "cuda")
    warmup = round(cfg.warmup * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg.schedule, warmup, total_steps))
    if fsdp:
        loss_fn, optimizer = token_loss, accelerator.prepare(optimizer)
    else:
        loss_fn, optimizer = accelerator.prepare(token_loss, optimizer)  # DDP-wrapped with several processes

    # 3) resume -----------------------------------------------------------------------------------
    state = TrainState()
    if cfg.resume:
        with world.agreeing():
            if world.main and resume_from is not None:
                loaded = ckpt.load_newest(itertools.chain([resume_from], candidates), model, optimizer, scheduler, skip)
                if loaded is None:
                    raise TuneryError(f"resume: no checkpoint in {folder.path} loads: {_first(skipped)}; move "
                                      f"{folder.checkpoints_dir} away to start over, or train into a new --out")
                resume_from, state = loaded
                if ckpt.processes_saved(resume_from) != world.size:
                    warn(f"{resume_from.name} was saved by {ckpt.processes_saved(resume_from)} processes, this run has "
                         f"{world.size}: dropout will not repeat the interrupted run's")
        resume_from = world.broadcast(resume_from)
        with world.agreeing():  # every process loads the checkpoint rank 0 chose, and its own RNG state
            if not world.main and resume_from is not None:
                state = ckpt.load_checkpoint(resume_from, model, optimizer, scheduler, rank=world.rank)

    # Same math, not the same speed everywhere: measured once on this run's first micro-batch, then recorded.
    share, why = _share_prefix(cfg, folder, world, packed, train_set, objective, token_loss, autocast, params, total,
                               tokenizer, run_cfg.max_steps * cfg.grad_accum)
    run_cfg = run_cfg.model_copy(update={"share_prefix": share})
    resolved["share_prefix"] = share
    if why:
        say(f"share_prefix {str(share).lower()}: {why}")

    # Recorded only now, with nothing left to refuse: a run that cannot start leaves its record as it was.
    earlier = folder.read_info() if world.main and cfg.resume and folder.is_run() else None
    info = RunInfo(
        id=earlier and earlier.id, name=earlier and earlier.name, status="running", method=cfg.method,
        started=earlier.started if earlier else now(),
        base=BaseRecord(reference=cfg.model, name=base.name, path=str(base.path), source=base.source),
        data=data, val=val, parameters={"trainable": trainable, "total": total},
        artifact="model" if cfg.method == "full" else "adapter")
    if world.main:
        folder.path.mkdir(parents=True, exist_ok=True)
        info.id, info.name = registry.started(folder.path, resolved, info, base)  # saved in run.json too
        folder.write_info(info)  # first: a folder tunery writes into is a run from its first file on
        folder.write_config(resolved)
        if resume_from is not None:
            say(f"resuming {folder.path} from {resume_from.name}")
    metrics = folder.open_metrics(resume_step=state.step if cfg.resume else None) if world.main else None

    processes = f", {world.size} processes ({run_cfg.strategy})" if world.size > 1 else ""
    what = f"{cfg.objective} pairs" if cfg.preference else "examples"
    epochs = total_steps / per_epoch  # max_steps may end an epoch part way
    epochs_text = f"{epochs:g} epoch{'s' * (epochs != 1)}" if epochs == int(epochs) else f"{epochs:.2f} epochs"
    held = f", answers held to {cfg.constraint.describe()}" if cfg.constraint is not None else ""
    say(f"train {cfg.method} on {base.name}: {len(train_set)} train / {len(val_set)} val {what}, "
        f"{epochs_text}, {total_steps} steps, lr {run_cfg.lr:g}, "
        f"batch {cfg.batch_size}x{cfg.grad_accum}, trainable {trainable:,} of {total:,} params, {device} "
        f"{str(dtype).replace('torch.', '')}{processes}{held} → {folder.path}")

    # 4) loop -------------------------------------------------------------------------------------
    batch_of = functools.partial(collate, pad_id=tokenizer.pad_token_id, device=accelerator.device, packed=packed,
                                 share_prefix=share)
    if cfg.preference:  # dpo: the starting model's log-probabilities of every pair, before the first step
        objective.prepare(token_loss, {"train": train_set, "val": val_set} if val_set else {"train": train_set},
                          batch_of, autocast, folder, cfg.batch_size, world, resume=state.step > 0)
    template = load_template(tokenizer, cfg.template)  # the one training renders with
    stop_ids = stop_token_ids(tokenizer, template)
    select_by = "val_loss" if cfg.best_by == "val_loss" else metric_key  # the metrics row key checkpoints are chosen by
    eval_every, save_every = run_cfg.eval_every, run_cfg.save_every
    bar = Task("train", total_steps, done=state.step, unit="steps") if world.main else None
    started = time.perf_counter()
    stop = False
    try:
        model.train()
        while state.step < total_steps and not stop:
            epoch = state.step // per_epoch
            for k, micro_batches in enumerate(step_groups(train_set, cfg.seed, epoch, cfg.batch_size, cfg.grad_accum,
                                                                cfg.group_by_length)):
                if k < state.step - epoch * per_epoch:
                    continue  # already trained before the resume
                t0 = time.perf_counter()
                mine = [world.shard(mb) for mb in micro_batches]  # this process's examples of each micro-batch
                # the whole step's units (trained tokens or pairs) and trained tokens, over every process
                group_units, group_tokens = (int(v) for v in world.sum(
                    sum(objective.units(mb) for mb in mine), sum(objective.trained(mb) for mb in mine)))
                step_loss, step_tokens, step_stats = 0.0, 0, {}
                for i, mb in enumerate(mine):
                    with world.no_sync(loss_fn, sync=i == len(mine) - 1):  # gradients cross processes once per step
                        joined = mb or micro_batches[i][:1]  # an empty shard joins in at weight 0
                        batch = batch_of(objective.rows(joined), sequences=objective.sequences)
                        with autocast():
                            loss_sum, stats = objective.loss(loss_fn, batch, joined)
                        accelerator.backward(loss_sum * (world.grad_scale if mb else 0) / group_units)
                    if mb:
                        step_loss += loss_sum.detach()  # read once per step: no device sync per micro-batch
                        step_tokens += objective.tokens(mb)
                        step_stats = {k: step_stats.get(k, 0) + v for k, v in stats.items()}
                grad_norm = full(accelerator.clip_grad_norm_(params, cfg.max_grad_norm))
                lr_now = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                # the step's one host-device sync: its device numbers read together
                step_loss, grad_norm, *stat_sums = _read(step_loss, grad_norm,
                                                         *(step_stats.get(k, 0) for k in PREFERENCE_STATS))
                step_loss, step_tokens, *stat_sums = world.sum(step_loss, step_tokens, *stat_sums)
                state.step += 1
                state.trained_tokens += group_tokens
                state.tokens += int(step_tokens)
                step = state.step
                row = {"step": step, "epoch": round(step / per_epoch, 4), "loss": step_loss / group_units,
                       **({k: v / group_units for k, v in zip(PREFERENCE_STATS, stat_sums)} if cfg.preference else {}),
                       "lr": lr_now, "grad_norm": grad_norm, "tokens": state.tokens,
                       "trained_tokens": state.trained_tokens,
                       "tokens_per_s": round(step_tokens / (time.perf_counter() - t0), 1)}
                last = step == total_steps
                if val_set and ((eval_every and step % eval_every == 0) or last):  # None: at the end only
                    row |= evaluate(token_loss, val_set, cfg.batch_size, batch_of, autocast, world, objective)
                    model.train()
                if metric_key and val_set and (step % cfg.eval_generate_every == 0 or last):
                    answers = [p.chosen for p in val_set[: cfg.eval_samples]] if cfg.preference \
                        else val_set[: cfg.eval_samples]  # a pair's chosen answer is the reference
                    samples = world.shard(answers)  # each process scores its share
                    with autocast():  # the frozen base may be stored in bf16 (setup.py)
                        score = generation_score(
                            model, tokenizer, samples, cfg.eval_metric, stop_ids,
                            max_new_tokens=cfg.eval_max_new_tokens, batch_size=cfg.batch_size,
                            device=accelerator.device, fmt=cfg.constraint) if samples else 0.0
                    total_score, scored = world.sum(score * len(samples), len(samples))
                    row[metric_key] = total_score / max(scored, 1)
                if select_by in row:
                    state.observe(select_by, row[select_by])
                    stop = cfg.early_stopping is not None and state.evals_since_best >= cfg.early_stopping
                if world.main:
                    metrics.log(row)
                # A caller (the jobs worker) may pause or cancel between steps; pausing first
                # checkpoints this step so resuming loses nothing. Rank 0 asks; every process acts.
                signal = on_step(row | {"total_steps": total_steps}) if on_step and world.main else None
                if signal is not None and not isinstance(signal, Signal):
                    raise TypeError(f"on_step must return a Signal or None, not {signal!r}")
                signal = world.broadcast(signal)
                if (save_every and step % save_every == 0) or last or stop or state.best_step == step \
                        or signal is Signal.PAUSE:
                    ckpt.save_checkpoint(folder, model, optimizer, scheduler, state, world)
                    if world.main:
                        ckpt.prune_checkpoints(folder, cfg.keep_checkpoints, {state.best_step} - {None})
                if signal is not None:
                    raise TrainingStopped(signal, step)
                if bar:
                    bar.update(step, note=step_note(row))
                if last or stop:
                    break
    except torch.OutOfMemoryError:
        raise TuneryError(f"out of memory at step {state.step + 1} (batch {cfg.batch_size}, max_length {cfg.max_length}): "
                          "lower --batch-size (raise --grad-accum to keep the effective batch) or --max-length, "
                          "or use --method lora / qlora") from None
    finally:
        if bar:
            bar.close()
        if metrics:
            metrics.close()
    step = state.step
    if stop:
        say(f"early stopping at step {step}: no better {cfg.best_by} in {cfg.early_stopping} evaluations")
    if not world.main and not fsdp:  # what follows writes the run: rank 0's
        return Run(folder.path, resolved, info)

    # 5) ship the selected weights ----------------------------------------------------------------
    shipped = step
    if cfg.select == "best" and state.best_step and state.best_step != step:
        ckpt.load_weights(folder.checkpoint_dir(state.best_step), model)
        shipped = state.best_step
    whole = _whole_state(model, keep=world.main) if fsdp else None  # every process hands rank 0 its shards
    if not world.main:
        return Run(folder.path, resolved, info)
    if cfg.template:  # inference must use the template training used: ship it with the weights
        tokenizer.chat_template = template.source
    export(model, tokenizer, folder.artifact(info.artifact), state_dict=whole)
    rows = folder.read_metrics()
    at_shipped = next((r for r in rows if r["step"] == shipped), {})
    final = FinalRecord(steps=step, shipped_step=shipped, trained_tokens=state.trained_tokens,
                        train_loss=rows[-1]["loss"] if rows else None, val_loss=at_shipped.get("val_loss"),
                        best_step=state.best_step, best_by=cfg.best_by,
                        seconds=round(time.perf_counter() - started, 1),
                        **({metric_key: at_shipped.get(metric_key)} if metric_key else {}))
    info.status, info.finished, info.final = "completed", now(), final
    folder.write_info(info)
    registry.finished(info)
    write_model_card(folder, info, resolved)
    say(f"done: {info.name} in {folder.path} (val_loss {final.val_loss}, shipped step {shipped})")
    return Run(folder.path, resolved, info, rows)


def _read(*values) -> list[float]:
    """Numbers, some of them device scalars, as floats: the device ones copied to the host in one
    transfer (one sync, where reading each would wait for the GPU once per value)."""
    import torch

    on_device = [v for v in values if isinstance(v, torch.Tensor)]
    if not on_device:
        return [float(v) for v in values]
    device = on_device[0].device
    return torch.stack([v.detach().float().reshape(()).to(device) if isinstance(v, torch.Tensor)
                        else torch.full((), float(v), device=device) for v in values]).tolist()


def _check_eval_metric(cfg: TrainConfig) -> str | None:
    """The metrics.jsonl key of the generation metric, after checking it exists (before compute)."""
    from ..metrics import resolve_metrics

    if cfg.best_by == "metric" and not cfg.eval_generate_every:
        raise ConfigError("best_by: metric needs --eval-generate-every N")
    if cfg.constraint is not None:
        from ..constrain import check_format

        check_format(cfg.constraint, "constraint")  # a regex that does not compile: before any compute
    if cfg.eval_metric == "valid" and cfg.constraint is None and cfg.eval_generate_every:
        raise ConfigError("eval_metric: valid scores answers against the recipe's constraint; set --constraint",
                          "eval_metric")
    if not cfg.eval_generate_every:
        return None
    resolve_metrics([cfg.eval_metric])
    return f"eval_{cfg.eval_metric}"


def evaluate(loss_fn, examples, batch_size, batch_of, autocast, world: World | None = None, objective=None) -> dict:
    """{"val_loss"}: the mean loss per trained token over the validation set (per pair for the
    preference objectives, with their rewards, margin and accuracy as val_*). Each process takes
    its share of every batch; the sums are the world's."""
    import torch

    from .objectives import SFT

    world = world or World()
    objective = objective or SFT()
    loss_fn.eval()
    total, count, sums = 0.0, 0, {}
    ordered = sorted(examples, key=lambda e: e.size)
    with torch.no_grad():
        for i in range(0, len(ordered), batch_size):
            whole = ordered[i: i + batch_size]
            mine = world.shard(whole)
            joined = mine or whole[:1]
            batch = batch_of(objective.rows(joined), sequences=objective.sequences)  # every process runs every batch
            with autocast():
                loss_sum, stats = objective.loss(loss_fn, batch, joined, split="val")
            if mine:
                total += loss_sum.item()
                count += objective.units(mine)
                sums = {k: sums.get(k, 0.0) + float(v) for k, v in stats.items()}
    names = sorted(sums)
    total, count, *values = world.sum(total, count, *(sums[k] for k in names))
    return {"val_loss": total / max(count, 1)} | {f"val_{k}": v / max(count, 1) for k, v in zip(names, values)}


def _share_prefix(cfg: TrainConfig, folder: RunFolder, world: World, packed: bool, train_set, objective, token_loss,
                  autocast, params, parameters: int, tokenizer, micro_batches: int) -> tuple[bool, str | None]:
    """share_prefix as given; auto: as the resumed run recorded it, else measured (autotune.py)
    where the run is long enough to repay the measurement."""
    if cfg.share_prefix != "auto":
        return cfg.share_prefix, None
    if cfg.resume:  # every process joins the broadcast
        recorded = world.broadcast(folder.read_config().get("share_prefix")
                                   if world.main and folder.config_file.is_file() else None)
        if isinstance(recorded, bool):
            return recorded, None
    if world.size > 1 or not packed or cfg.preference:  # several processes would each measure their own
        return True, None
    if micro_batches < autotune.MIN_MICRO_BATCHES:  # three passes would cost more than a tenth of the run
        return True, None
    first = next(iter(step_groups(train_set, cfg.seed, 0, cfg.batch_size, cfg.grad_accum, cfg.group_by_length)))[0]
    rows = functools.partial(collate, pad_id=tokenizer.pad_token_id, device=world.accelerator.device, packed=True)
    return autotune.share_prefix(first, rows, objective, token_loss, autocast, params, parameters)


def load_data(cfg: TrainConfig, tokenizer, warn=None) -> tuple[Sequence, Sequence, DataRecord, DataRecord | None]:
    """Check and encode the training (and validation) data; any error stops here, before compute.
    Returns (train examples, validation examples, their records for run.json). The examples are
    lazy sequences over the memory-mapped data cache (data/cache.py): encoded once per file,
    tokenizer, template and length settings, read an example at a time."""
    from ..data import split_examples
    from ..data.dataset import sample_examples
    from ..data.cache import encode_cached
    from ..data.doctor import make_renderer

    renderer = make_renderer(tokenizer, cfg)
    ground = val_ground = None
    if cfg.retrieval:  # each example's question retrieves its context, in the one layout
        from ..retrieval import grounding_for

        ground, val_ground = grounding_for(cfg), grounding_for(cfg, distractors=False)

    def encode(path, ground=None):
        enc = encode_cached(path, renderer, max_length=cfg.max_length, overlong=cfg.overlong, fmt=cfg.format,
                            ground=ground, cache=cfg.data_cache)
        if enc.warning and warn:
            warn(enc.warning)
        return enc

    train_enc = encode(cfg.data, ground)
    train_set, val_set, val = _examples(cfg, train_enc, cfg.data), [], None
    # Whole-file warnings (the template's end-of-turn marker against the tokenizer) travel with the run.
    data = DataRecord.of_file(cfg.data, train_enc.rows, len(train_set), format=train_enc.format,
                              warnings=train_enc.notes or None, retrieval=ground.record() if ground else None)
    if cfg.val_data:
        val_enc = encode(cfg.val_data, val_ground)
        val_set = _examples(cfg, val_enc, cfg.val_data)
        n_file = len(val_set)
        val_set = sample_examples(val_set, cfg.val_cap, cfg.seed)
        val = DataRecord.of_file(cfg.val_data, val_enc.rows, len(val_set))
        if warn and len(val_set) < n_file:
            warn(f"validation: {len(val_set)} of the {n_file} examples in {cfg.val_data} (val_max {cfg.val_cap}; "
                 "--val-max 0 evaluates all)")
    elif cfg.val_split > 0:
        train_set, val_set = split_examples(train_set, cfg.val_split, cfg.seed, max_val=cfg.val_cap)
        val = DataRecord(split=cfg.val_split, used=len(val_set), lines=val_set.lines.tolist())
        data.used = len(train_set)
    return train_set, val_set, data, val


def _examples(cfg: TrainConfig, enc, path: str):
    """What the objective trains on: a preference file's pairs (dpo, simpo), or examples (sft; of a
    preference file, its chosen answers)."""
    from ..data.dataset import Pairs

    if enc.format != "preference":
        if cfg.preference:
            raise ConfigError(f"objective: {cfg.objective} trains on preference pairs, but {path} holds {enc.format} "
                              "examples; give rows with prompt/chosen/rejected (or the hosted API's input/"
                              "preferred_output/non_preferred_output)", field="objective")
        return enc.examples
    if cfg.preference:
        return Pairs(enc.examples)
    return enc.examples.subset(range(0, len(enc.examples), 2))  # stored two by two: chosen, rejected


def export(model, tokenizer, dest: Path, state_dict: dict | None = None) -> None:
    """Write adapter/ (PEFT format, no embedding copies) or model/ (full weights), atomically.
    `state_dict`: whole tensors of a sharded model."""
    from ..files import atomic_dir

    attention.uninstall(model)
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}))
        tokenizer.save_pretrained(tmp)


def _whole_state(model, keep: bool) -> dict:
    """A sharded model's state dict as whole tensors, kept by rank 0 only; tied weights (one
    parameter under two names) stay one tensor, so save_pretrained writes them once as it does for
    an unsharded model."""
    whole, gathered = {}, {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) not in gathered:
            gathered[id(t)] = full(t.detach())  # a collective: every process, the same order
            if not keep:
                gathered[id(t)] = None  # dropped at once: only rank 0 holds the whole model
        whole[name] = gathered[id(t)]
    return whole


def _schedule(kind: str, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else max(0.0, 1 - progress)
    return factor


def _warner(say):
    return lambda msg: say(f"warning: {msg}")


def _first(problems: list[str]) -> str:
    """The first of several problems, in one line."""
    return problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")


def _printer(enabled: bool):
    return status if enabled else (lambda msg: None)
