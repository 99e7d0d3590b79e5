"""tunery vs Hugging Face TRL's SFTTrainer on the same job, side by side in one run.

    python bench/compare_trl.py [--quick] [--json] [--rounds 3] [--steps 10]

Both sides train the same model on the same tokens with the same loss mask (assistant tokens
only), LoRA r=16 on all linear layers, the same examples per optimizer step in the same order,
AdamW, cosine decay without warmup, clipping at 1.0. Each trial runs in its own process; trials
alternate (tunery, TRL tuned, TRL defaults) for --rounds rounds and medians are reported:
non-padding tokens trained per second, peak RSS, step-0 loss (must match: same math) and the
validation loss after the same training tokens (parity within 2%).

TRL baselines: "defaults" is SFTConfig as shipped (bf16, activation checkpointing) with only the
job's settings given; "tuned" follows TRL's advice for speed: padding-free batches, no activation
checkpointing, fp32 on CPU (bf16 and Liger kernels on GPU).

On a GPU (bench/gpu_check.sh): `--random-weights` builds the model's architecture with random
weights (throughput needs no trained weights; the bundled default's weights stay on the machine
that imported them), `--arch llama-1b` a ~1B Llama body under the model's tokenizer, `--data
synthetic --lengths 512-2048` long chats; peak memory is the GPU's, MFU is counted by the 4N
(adapters) / 6N (full) rule against the card's dense bf16 peak; extra sides: tunery_qlora,
tunery_gc, tunery_qlora_gc (activation checkpointing), trl_padded (TRL tuned without padding-free).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIDES = ("tunery", "tunery_unshared", "trl_tuned", "trl_default")
EXTRA_SIDES = ("tunery_qlora", "tunery_gc", "tunery_qlora_gc", "trl_padded")
EXTRA_STEPS = 3  # prepared beyond --steps: a profiled side runs them (one warm-up, two recorded), untimed

# Random-weight Llama bodies under the chosen model's tokenizer (vocabulary, chat template).
ARCHS = {
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=64, rope_theta=500000.0),  # Llama 3.2 1B's shape
    "llama-mini": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=32, rope_theta=10000.0),  # for dry runs on CPU
}

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by the name CUDA reports: MFU's denominator.
BF16_PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
                    ("GH200", 989.0), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("A10G", 70.0),
                    ("RTX 4090", 165.0), ("L4", 121.0))

WORDS = ("the of and to in is you that it he was for on are as with his they at be this have from or one had by "
         "word but not what all were we when your can said there use an each which she do how their if will up "
         "other about out many then them these so some her would make like him into time has look two more write "
         "go see number no way could people my than first water been call who oil its now find long down day did "
         "get come made may part over new sound take only little work know place year live me back give most very "
         "after thing our just name good sentence man think say great where help through much before line right "
         "too mean old any same tell boy follow came want show also around form three small set put end does "
         "another well large must big even such because turn here why ask went men read need land different home "
         "us move try kind hand picture again change off play spell air away animal house point page letter "
         "mother answer found study still learn should America world").split()


def prepare(args, folder: Path) -> dict:
    """Tokenise once with tunery's renderer; both sides train on exactly these ids and masks, in
    tunery's data order (so step k sees the same examples on both sides)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tunery.config import DataConfig
    from tunery.data import scan_file, split_examples
    from tunery.data.doctor import make_renderer
    from tunery.models import load_tokenizer, resolve_model
    from tunery.training.batches import step_groups

    if args.quick:
        from tiny import build_model

        model_path = build_model(folder / "tiny-model", layers=2, hidden=64, context=max(512, args.max_length))
    else:
        model_path = resolve_model(args.model).path
    if args.random_weights or args.arch:
        model_path = build_random(model_path, args.arch, folder / "model")
    tok = load_tokenizer(str(model_path))
    data = args.data
    n_rows = (args.steps + EXTRA_STEPS) * args.batch_size
    if data == "synthetic":
        data = synthetic_chats(tok, folder / "synthetic.jsonl", round(n_rows / 0.9) + 8, args.lengths)
    scan = scan_file(data, make_renderer(tok, DataConfig(max_length=args.max_length)), max_length=args.max_length,
                     keep=True)
    train, val = split_examples(scan.kept, 0.1, seed=0)
    order = []
    for epoch in range(100):
        for group in step_groups(train, 0, epoch, args.batch_size, 1, group_by_length=False):
            order += [e for mb in group for e in mb]
        if len(order) >= n_rows:
            break
    rows = order[:n_rows]
    with open(folder / "train.jsonl", "w") as f:
        f.writelines(json.dumps({"input_ids": e.input_ids, "completion_mask": e.loss_mask}) + "\n" for e in rows)
    with open(folder / "val.jsonl", "w") as f:
        f.writelines(json.dumps({"input_ids": e.input_ids, "completion_mask": e.loss_mask}) + "\n" for e in val)
    from tunery.models.hardware import default_dtype

    precision = args.precision
    if precision == "auto":
        import torch

        precision = "bf16" if default_dtype("cuda" if torch.cuda.is_available() else "cpu") == torch.bfloat16 else "fp32"
    lengths = [len(e.input_ids) for e in rows[: args.steps * args.batch_size]]
    return {"model": str(model_path), "params": _param_count(str(model_path)), "train_examples": len(rows),
            "val_examples": len(val), "precision": precision,
            "tokens_per_step": round(sum(lengths) / args.steps), "example_tokens": [min(lengths), max(lengths)]}


def build_random(source, arch: str | None, dest: Path) -> Path:
    """`source`'s architecture (or `arch`, a Llama body under `source`'s tokenizer) with random
    weights, saved to `dest`: bf16 built on the GPU, fp32 on CPU."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    config = AutoConfig.from_pretrained(source)
    if arch:
        config = LlamaConfig(vocab_size=config.vocab_size, bos_token_id=config.bos_token_id,
                             eos_token_id=config.eos_token_id, pad_token_id=getattr(config, "pad_token_id", None),
                             tie_word_embeddings=True, max_position_embeddings=8192, initializer_range=0.02,
                             **{k: v for k, v in ARCHS[arch].items() if k != "rope_theta"},
                             rope_parameters={"rope_type": "default", "rope_theta": ARCHS[arch]["rope_theta"]})
    cuda = _cuda()
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(source).save_pretrained(dest)
    del model
    if cuda:
        torch.cuda.empty_cache()
    return dest


def synthetic_chats(tok, path: Path, n: int, lengths: str, seed: int = 0) -> Path:
    """`n` chats of random common words, each about a length drawn uniformly from `lengths`
    ("A-B" tokens, the template's own tokens included): a third question, the rest answer."""
    import random

    lo, hi = (int(x) for x in lengths.split("-"))
    rnd = random.Random(seed)
    sample = " ".join(rnd.choice(WORDS) for _ in range(2000))
    per_word = len(tok(sample, add_special_tokens=False)["input_ids"]) / 2000
    with open(path, "w") as f:
        for _ in range(n):
            words = max(8, int((rnd.randint(lo, hi) - 48) / per_word))  # ~48: the template and system prompt
            text = [rnd.choice(WORDS) for _ in range(words)]
            q = words // 3
            f.write(json.dumps({"messages": [{"role": "user", "content": " ".join(text[:q])},
                                             {"role": "assistant", "content": " ".join(text[q:])}]}) + "\n")
    return path


def load_rows(path: Path):
    from tunery.data import Example

    return [Example(i, r["input_ids"], r["completion_mask"]) for i, r in
            enumerate(json.loads(x) for x in path.read_text().splitlines())]


def val_loss(model, val_rows, pad_id) -> float:
    import torch

    from tunery.training.batches import collate
    from tunery.training.loss import TokenLoss

    loss_fn = TokenLoss(model).eval()
    total = count = 0
    with torch.no_grad():
        for i in range(0, len(val_rows), 8):
            s, n = loss_fn(**collate(val_rows[i: i + 8], pad_id, next(model.parameters()).device))
            total += s.item()
            count += int(n)
    return total / count


def worker(side: str, folder: Path, args) -> dict:
    """One trial in this process; prints one JSON line."""
    import resource

    meta = json.loads((folder / "meta.json").read_text())
    train_rows, val_rows = load_rows(folder / "train.jsonl"), load_rows(folder / "val.jsonl")
    n_tokens = [len(e.input_ids) for e in train_rows]
    if side.startswith("tunery"):
        out = _tunery(side, meta, folder, args, train_rows, val_rows)
    else:
        out = _trl(side, meta, folder, args, train_rows, val_rows)
    # Steady state: the first step pays one-off costs (allocation, lazy init) on both sides.
    bs = args.batch_size
    step_tokens = [sum(n_tokens[i * bs:(i + 1) * bs]) for i in range(len(out["step_times"]))]
    out["tokens_per_s"] = sum(step_tokens[1:]) / sum(out["step_times"][1:])
    out["tokens_per_step"] = round(sum(step_tokens) / len(step_tokens))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _tunery(side, meta, folder, args, train_rows, val_rows) -> dict:
    """The real `tunery.train` loop, fed the prepared rows (same order as the TRL side). With
    --profile-out, EXTRA_STEPS more steps run under torch.profiler after the timed ones."""
    import torch

    from tunery.config import TrainConfig
    from tunery.training import loop

    profile = bool(args.profile_out)
    steps = args.steps + (EXTRA_STEPS if profile else 0)
    cfg = TrainConfig(model=meta["model"], data="(prepared)", out=str(folder / f"run-{side}"),
                      method="qlora" if "qlora" in side else "lora", precision=meta["precision"],
                      gradient_checkpointing=side.endswith("_gc"),
                      max_steps=steps, batch_size=args.batch_size, lr=2e-4, warmup=0, val_split=0,
                      eval_every=None, save_every=None, max_length=args.max_length, share_prefix=side != "tunery_unshared")
    from tunery.run_folder import DataRecord

    rows_used = train_rows[: steps * args.batch_size]
    loop.load_data = lambda cfg, tok, **_: (rows_used, [], DataRecord(file="(prepared)", sha256="-", examples=len(rows_used),
                                                                 used=len(rows_used), format="chat"), None)
    # The prepared rows are already in step order: make epoch 0's order the identity.
    loop.step_groups = lambda ex, seed, epoch, bs, ga, *_: (
        [ex[i: i + bs]] for i in range(0, len(ex), bs * ga))
    on_step, prof = None, None
    if profile:  # steps args.steps+1 .. +EXTRA_STEPS: one warm-up, then recorded
        from torch.profiler import ProfilerActivity, profile as profiler, schedule

        prof = profiler(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if _cuda() else []),
                        schedule=schedule(wait=args.steps, warmup=1, active=EXTRA_STEPS - 1))
        prof.start()
        on_step = lambda row: prof.step()  # noqa: E731
    try:
        run = loop.train(cfg, progress=False, on_step=on_step)
    finally:
        if prof is not None:
            prof.stop()
    out = {"peak_cuda_mb": _peak_cuda_mb()}  # before anything else is loaded
    rows = run.metrics[: args.steps]
    out["step_times"] = [(rows[i]["tokens"] - (rows[i - 1]["tokens"] if i else 0)) / rows[i]["tokens_per_s"]
                         for i in range(len(rows))]
    out["step0_loss"] = rows[0]["loss"]
    if prof is not None:
        _write_profile(prof, side, meta, args)
    if not args.no_val:
        from tunery.models import load_model

        model, tok = load_model(str(run.dir), device="cuda" if _cuda() else "cpu", dtype=torch.float32)
        out["val_loss"] = val_loss(model, val_rows, tok.pad_token_id)
    return out


def _write_profile(prof, side: str, meta: dict, args) -> None:
    """The profiled steps' top kernels (by GPU time; CPU time without a GPU), appended to --profile-out."""
    cuda = _cuda()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = prof.key_averages()
    total = sum(getattr(e, key) for e in events)
    head = (f"== {side} on {Path(meta['model']).name} ({meta['params'] / 1e6:.0f}M params), {EXTRA_STEPS - 1} steps of "
            f"{args.batch_size} examples, total {'GPU' if cuda else 'CPU'} kernel time {total / 1e3:.1f} ms\n")
    table = events.table(sort_by=key, row_limit=30, max_name_column_width=70)
    with open(args.profile_out, "a") as f:
        f.write(head + table + "\n")


def _peak_cuda_mb():
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _trl(side, meta, folder, args, train_rows, val_rows) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tuned = side in ("trl_tuned", "trl_padded")
    cuda = _cuda()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(meta["model"])
    # On a GPU the frozen base is stored in bf16 (as TRL loads a bf16 checkpoint with dtype "auto",
    # and as tunery stores it); on CPU fp32 under autocast, as tunery keeps it there.
    model = AutoModelForCausalLM.from_pretrained(meta["model"], dtype=torch.bfloat16 if cuda else torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    job = dict(output_dir=str(folder / f"run-{side}"), per_device_train_batch_size=args.batch_size,
               gradient_accumulation_steps=1, max_steps=args.steps, learning_rate=2e-4, lr_scheduler_type="cosine",
               warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, max_length=args.max_length, seed=0,
               completion_only_loss=True, report_to=[], save_strategy="no", logging_steps=1, dataloader_num_workers=0,
               use_cpu=not cuda)
    if tuned:
        # Rows are already cut to max_length; TRL refuses padding_free with a max_length it cannot enforce.
        # Same precision as the tunery side: bf16 autocast where this machine runs it fast.
        job |= dict(padding_free=side == "trl_tuned", gradient_checkpointing=False, bf16=meta["precision"] == "bf16",
                    use_liger_kernel=cuda, max_length=None)
    config = SFTConfig(**job)
    dataset = Dataset.from_list([{"input_ids": e.input_ids, "completion_mask": e.loss_mask}
                                 for e in train_rows[: args.steps * args.batch_size]])

    class InOrder(SFTTrainer):  # the same examples in the same order as the tunery side
        def _get_train_sampler(self, *a, **k):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    times, losses = [], []

    def now():
        if cuda:
            torch.cuda.synchronize()  # the GPU's work, not only its launch
        return time.perf_counter()

    class Timer(TrainerCallback):
        """Step k's time: from the end of step k-1 (its start for the first) to the end of step k,
        after the GPU finished: the batch's collation and the trainer's logging are in it, as
        tunery's steps hold its collation and its one read of the loss."""

        def on_step_begin(self, *a, **k):
            if not times and not hasattr(self, "t"):
                self.t = now()

        def on_step_end(self, *a, **k):
            t = now()
            times.append(t - self.t)
            self.t = t

        def on_log(self, args_, state, control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    trainer = InOrder(model=model, args=config, train_dataset=dataset, processing_class=tok, callbacks=[Timer()])
    trainer.train()
    out = {"peak_cuda_mb": _peak_cuda_mb(), "step0_loss": losses[0] if losses else None, "step_times": times}
    if not args.no_val:
        model = trainer.model.float().eval()
        out["val_loss"] = val_loss(model, val_rows, tok.pad_token_id)
    return out


def matmul_gflops(seconds: float = 3.0, dtype: str = "fp32") -> float:
    """The matmul rate at 2048³; a bf16 that is not native (no AVX512-BF16/AMX, or held below
    them) is timed at 512³ instead, since one 2048³ product takes about a minute there."""
    import torch

    from tunery.models.hardware import cpu_bf16_is_fast

    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    size = 512 if dtype == "bf16" and not cpu_bf16_is_fast() else 2048
    a, b = torch.randn(size, size, dtype=dt), torch.randn(size, size, dtype=dt)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * size**3 * n / (time.perf_counter() - t0) / 1e9


def cuda_matmul_tflops(size: int = 8192, reps: int = 20) -> float:
    """bf16 matmul rate on the GPU (random data, median of `reps` products after warm-up)."""
    import torch

    a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * size**3 / statistics.median(times) / 1e12


def card_peak_tflops(name: str) -> float | None:
    """The card's dense bf16 peak, from the name CUDA reports (None for a card not listed)."""
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in name), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny random model and few steps: a smoke run")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--model", default="default")
    ap.add_argument("--random-weights", action="store_true", help="the model's architecture with random weights")
    ap.add_argument("--arch", choices=sorted(ARCHS), help="a random-weight Llama body under the model's tokenizer")
    ap.add_argument("--data", default=str(ROOT / "examples/contacts/train.jsonl"), help="a chat file, or `synthetic`")
    ap.add_argument("--lengths", default="512-2048", help="synthetic data: example lengths in tokens, A-B")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per trial (default 10; quick: 6)")
    ap.add_argument("--default-steps", type=int, default=3, help="steps for the (slow) TRL-defaults trials")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=None, help="alternating A/B rounds (default 3; quick: 1)")
    ap.add_argument("--sides", default=",".join(SIDES), help=f"of {', '.join(SIDES + EXTRA_SIDES)}")
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="compute precision of tunery and TRL-tuned (auto: bf16 where measured faster)")
    ap.add_argument("--no-val", action="store_true", help="skip the validation loss after training")
    ap.add_argument("--workdir", help="keep the prepared model and data here (reused when present)")
    ap.add_argument("--trials-jsonl", help="append each trial's result here as it finishes")
    ap.add_argument("--results-jsonl", help="append the summary here, as {stage: --tag, summary}")
    ap.add_argument("--tag", default="", help="the stage name in --results-jsonl")
    ap.add_argument("--profile", default="", help="sides to profile (after their timed steps)")
    ap.add_argument("--profile-out", help="where profiles' top-kernel tables are appended")
    ap.add_argument("--worker", choices=SIDES + EXTRA_SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.steps = args.steps or (6 if args.quick else 10)
    args.rounds = args.rounds or (1 if args.quick else 3)

    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.folder), args)))
        return

    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    sides = [s for s in args.sides.split(",") if s]
    profiled = {s for s in args.profile.split(",") if s}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.workdir or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / "meta.json").is_file():
            meta = json.loads((folder / "meta.json").read_text())
        else:
            meta = prepare(args, folder)
            (folder / "meta.json").write_text(json.dumps(meta))
        log(f"model {meta['model']} ({meta['params'] / 1e6:.1f}M params), {meta['tokens_per_step']} tokens per step, "
            f"examples of {meta['example_tokens'][0]}-{meta['example_tokens'][1]} tokens, {meta['precision']}")
        results = {s: [] for s in sides}
        cuda = _cuda()
        rates = ({"bf16_tflops": [cuda_matmul_tflops()]} if cuda else
                 {"fp32": [matmul_gflops(1.5)], "bf16": [matmul_gflops(1.5, "bf16")]})
        for r in range(args.rounds):
            for side in sides:
                steps = args.default_steps if side == "trl_default" else args.steps
                cmd = [sys.executable, __file__, "--worker", side, "--folder", str(folder), "--steps", str(steps),
                       "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
                cmd += ["--no-val"] if args.no_val else []
                if side in profiled and r == 0 and args.profile_out:
                    cmd += ["--profile-out", args.profile_out]
                env = os.environ | {"TUNERY_HOME": str(folder / "home"), "TOKENIZERS_PARALLELISM": "false"}
                for old in folder.glob(f"run-{side}"):
                    subprocess.run(["rm", "-rf", str(old)])
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    log(f"{side} trial failed:\n{proc.stderr[-3000:]}")
                    if args.trials_jsonl:
                        with open(args.trials_jsonl, "a") as f:
                            f.write(json.dumps({"side": side, "model": meta["model"], "failed": proc.stderr[-3000:]}) + "\n")
                    continue
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                res["process_s"] = round(time.perf_counter() - t0, 1)
                results[side].append(res)
                if args.trials_jsonl:
                    with open(args.trials_jsonl, "a") as f:
                        f.write(json.dumps({"side": side, "round": r + 1, "model": meta["model"], "params": meta["params"],
                                            "tokens_per_step": meta["tokens_per_step"],
                                            **{k: v for k, v in res.items() if k != "step_times"},
                                            "step_times": [round(t, 4) for t in res["step_times"]]}) + "\n")
                mem = f"GPU {res['peak_cuda_mb']:7.0f} MB" if res.get("peak_cuda_mb") else f"peak {res['peak_rss_mb']:7.0f} MB"
                val = f"  val {res['val_loss']:.4f}" if "val_loss" in res else ""
                log(f"round {r + 1} {side:15s} {res['tokens_per_s']:9.1f} tok/s  {mem}  "
                    f"step0 loss {res['step0_loss']:.4f}{val}  ({res['process_s']} s)")
            if not cuda:
                for k in rates:
                    rates[k].append(matmul_gflops(1.5, k))
    if not any(results.values()):
        sys.exit("every trial failed")
    report = summarise(results, meta, args, {k: statistics.median(v) for k, v in rates.items()})
    if args.results_jsonl:
        with open(args.results_jsonl, "a") as f:
            f.write(json.dumps({"stage": args.tag, "summary": report}) + "\n")
    if args.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k:28s} {v}")


def summarise(results: dict, meta: dict, args, rates: dict) -> dict:
    import torch

    from tunery.models.hardware import cpu_kind

    cuda = _cuda()
    mem_key = "peak_cuda_mb" if cuda else "peak_rss_mb"
    keys = ("tokens_per_s", "peak_rss_mb", "step0_loss") + (("peak_cuda_mb",) if cuda else ()) + \
        (() if args.no_val else ("val_loss",))
    med = {s: {k: statistics.median(r[k] for r in rs) for k in keys} for s, rs in results.items() if rs}
    t = med.get("tunery")
    n_params = meta["params"]
    card = torch.cuda.get_device_name() if cuda else None
    out = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores" + (f", {card}" if cuda else ""),
        "torch_threads": torch.get_num_threads(), "model": "tiny random (quick)" if args.quick else args.model,
        "params": n_params,
        "tokens_per_step": next((r[0]["tokens_per_step"] for r in results.values() if r), meta.get("tokens_per_step")), "example_tokens": meta.get("example_tokens"),
        "steps": args.steps, "batch_size": args.batch_size, "rounds": args.rounds, "date": time.strftime("%Y-%m-%d"),
        "precision": meta["precision"], "cpu": cpu_kind(),
    }
    if cuda:
        peak = card_peak_tflops(card)
        out |= {"gpu": card, "torch": torch.__version__, "bf16_peak_tflops": peak,
                "matmul_tflops_bf16": round(rates["bf16_tflops"], 1)}
    else:
        out["matmul_gflops"] = {k: round(v, 1) for k, v in rates.items()}
    # Per side: LoRA/QLoRA cost about 4N FLOPs per token (forward 2N, backward through the
    # activations 2N; the frozen weights get no gradient), counted on every token of the job.
    out["sides"] = {}
    for side, m in med.items():
        row = {"tokens_per_s": round(m["tokens_per_s"], 1), "peak_mem_mb": round(m[mem_key], 1),
               "step0_loss": round(m["step0_loss"], 5)}
        if "val_loss" in m:
            row["val_loss"] = round(m["val_loss"], 5)
        flops = 4 * n_params * m["tokens_per_s"]
        if cuda:
            row["mfu"] = round(flops / (out["bf16_peak_tflops"] * 1e12), 3) if out["bf16_peak_tflops"] else None
            row["of_measured_matmul"] = round(flops / (rates["bf16_tflops"] * 1e12), 3)
        out["sides"][side] = row
    if t:
        out["tunery_tokens_per_s"] = round(t["tokens_per_s"], 1)
        if cuda:
            out["tunery_mfu"] = out["sides"]["tunery"]["mfu"]
        else:  # the matmul rate at the run's precision
            out["tunery_matmul_utilisation"] = round(4 * n_params * t["tokens_per_s"] / (rates[meta["precision"]] * 1e9), 3)
    if t and "tunery_unshared" in med:
        # the same packed batches without computing a shared prefix once: what packing alone gives
        out["tunery_unshared_tokens_per_s"] = round(med["tunery_unshared"]["tokens_per_s"], 1)
    for side, name in (("trl_tuned", "trl"), ("trl_default", "trl_default")):
        if t and side in med:
            o = med[side]
            out[f"{name}_tokens_per_s"] = round(o["tokens_per_s"], 1)
            out[f"speedup{'' if name == 'trl' else '_vs_default'}"] = round(t["tokens_per_s"] / o["tokens_per_s"], 2)
            out[f"peak_mem_ratio{'' if name == 'trl' else '_vs_default'}"] = round(t[mem_key] / o[mem_key], 3)
            out[f"step0_loss_{name}"] = round(o["step0_loss"], 5)
    for q, lora in (("tunery_qlora", "tunery"), ("tunery_qlora_gc", "tunery_gc")):
        if q in med and lora in med:  # QLoRA against LoRA, the same job
            out[f"{q}_mem_ratio"] = round(med[q][mem_key] / med[lora][mem_key], 3)
            out[f"{q}_speed_ratio"] = round(med[q]["tokens_per_s"] / med[lora]["tokens_per_s"], 3)
    if t and "trl_tuned" in med:
        out["step0_loss_tunery"] = round(t["step0_loss"], 5)
        if not args.no_val:
            out["val_loss_tunery"] = round(t["val_loss"], 5)
            out["val_loss_trl"] = round(med["trl_tuned"]["val_loss"], 5)
            out["val_loss_rel_diff"] = round(abs(t["val_loss"] - med["trl_tuned"]["val_loss"]) / med["trl_tuned"]["val_loss"], 4)
    return out


def _param_count(path: str) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    import torch

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    main()
