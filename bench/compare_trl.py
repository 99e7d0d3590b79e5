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

        model_path = build_model(folder / "tiny-model", layers=2, hidden=64)
    else:
        model_path = resolve_model(args.model).path
    tok = load_tokenizer(str(model_path))
    scan = scan_file(args.data, make_renderer(tok, DataConfig(max_length=args.max_length)), max_length=args.max_length,
                     keep=True)
    train, val = split_examples(scan.kept, 0.1, seed=0)
    order = []
    for epoch in range(100):
        for group in step_groups(train, 0, epoch, args.batch_size, 1, group_by_length=False):
            order += [e for mb in group for e in mb]
        if len(order) >= args.steps * args.batch_size:
            break
    rows = order[: args.steps * args.batch_size]
    with open(folder / "train.jsonl", "w") as f:
        f.writelines(json.dumps({"input_ids": e.input_ids, "completion_mask": e.loss_mask}) + "\n" for e in rows)
    with open(folder / "val.jsonl", "w") as f:
        f.writelines(json.dumps({"input_ids": e.input_ids, "completion_mask": e.loss_mask}) + "\n" for e in val)
    from tunery.models.hardware import default_dtype

    precision = args.precision
    if precision == "auto":
        import torch

        precision = "bf16" if default_dtype("cuda" if torch.cuda.is_available() else "cpu") == torch.bfloat16 else "fp32"
    return {"model": str(model_path), "params": _param_count(str(model_path)), "train_examples": len(rows),
            "val_examples": len(val), "precision": precision}


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

    import torch

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
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _tunery(side, meta, folder, args, train_rows, val_rows) -> dict:
    """The real `tunery.train` loop, fed the prepared rows (same order as the TRL side)."""
    from tunery.config import TrainConfig
    from tunery.training import loop

    cfg = TrainConfig(model=meta["model"], data="(prepared)", out=str(folder / f"run-{side}"), method="lora",
                      precision=meta["precision"],
                      max_steps=args.steps, batch_size=args.batch_size, lr=2e-4, warmup=0, val_split=0,
                      eval_every=None, save_every=None, max_length=args.max_length, share_prefix=side == "tunery")
    from tunery.run_folder import DataRecord

    loop.load_data = lambda cfg, tok, **_: (train_rows, [], DataRecord(file="(prepared)", sha256="-", examples=len(train_rows),
                                                                  used=len(train_rows), format="chat"), None)
    # The prepared rows are already in step order: make epoch 0's order the identity.
    loop.step_groups = lambda ex, seed, epoch, bs, ga, *_: (
        [ex[i: i + bs]] for i in range(0, len(ex), bs * ga))
    run = loop.train(cfg, progress=False)
    rows = run.metrics
    times = [(rows[i]["tokens"] - (rows[i - 1]["tokens"] if i else 0)) / rows[i]["tokens_per_s"] for i in range(len(rows))]
    from tunery.models import load_model

    model, tok = load_model(str(run.dir), device="cpu" if not _cuda() else "cuda")
    return {"step0_loss": rows[0]["loss"], "step_times": times, "val_loss": val_loss(model, val_rows, tok.pad_token_id)}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _trl(side, meta, folder, args, train_rows, val_rows) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tuned = side == "trl_tuned"
    cuda = _cuda()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(meta["model"])
    model = AutoModelForCausalLM.from_pretrained(meta["model"], dtype=torch.float32)
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
        job |= dict(padding_free=True, gradient_checkpointing=False, bf16=meta["precision"] == "bf16",
                    use_liger_kernel=cuda, max_length=None)
    config = SFTConfig(**job)
    dataset = Dataset.from_list([{"input_ids": e.input_ids, "completion_mask": e.loss_mask} for e in train_rows])

    class InOrder(SFTTrainer):  # the same examples in the same order as the tunery side
        def _get_train_sampler(self, *a, **k):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    times, losses = [], []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

        def on_log(self, args_, state, control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    trainer = InOrder(model=model, args=config, train_dataset=dataset, processing_class=tok, callbacks=[Timer()])
    trainer.train()
    model = trainer.model.float().eval()
    return {"step0_loss": losses[0] if losses else None, "step_times": times,
            "val_loss": val_loss(model, val_rows, tok.pad_token_id)}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny random model and few steps: a smoke run")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default=str(ROOT / "examples/contacts/train.jsonl"))
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per trial (default 10; quick: 6)")
    ap.add_argument("--default-steps", type=int, default=3, help="steps for the (slow) TRL-defaults trials")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=None, help="alternating A/B rounds (default 3; quick: 1)")
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="compute precision of tunery and TRL-tuned (auto: bf16 where measured faster)")
    ap.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.steps = args.steps or (6 if args.quick else 10)
    args.rounds = args.rounds or (1 if args.quick else 3)

    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.folder), args)))
        return

    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    sides = [s for s in args.sides.split(",") if s]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        meta = prepare(args, folder)
        (folder / "meta.json").write_text(json.dumps(meta))
        results = {s: [] for s in sides}
        gflops = {"fp32": [matmul_gflops(1.5)], "bf16": [matmul_gflops(1.5, "bf16")]}
        for r in range(args.rounds):
            for side in sides:
                steps = args.default_steps if side == "trl_default" else args.steps
                cmd = [sys.executable, __file__, "--worker", side, "--folder", tmp, "--steps", str(steps),
                       "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
                env = os.environ | {"TUNERY_HOME": str(folder / "home"), "TOKENIZERS_PARALLELISM": "false"}
                for old in folder.glob(f"run-{side}"):
                    subprocess.run(["rm", "-rf", str(old)])
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    sys.exit(f"{side} trial failed:\n{proc.stderr[-3000:]}")
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                results[side].append(res)
                log(f"round {r + 1} {side:12s} {res['tokens_per_s']:8.1f} tok/s  peak {res['peak_rss_mb']:7.0f} MB  "
                    f"step0 loss {res['step0_loss']:.4f}  val {res['val_loss']:.4f}")
            for k in gflops:
                gflops[k].append(matmul_gflops(1.5, k))
    report = summarise(results, meta, args, {k: statistics.median(v) for k, v in gflops.items()})
    if args.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k:28s} {v}")


def summarise(results: dict, meta: dict, args, gflops: float) -> dict:
    import torch

    from tunery.models.hardware import cpu_kind

    med = {s: {k: statistics.median(r[k] for r in rs) for k in ("tokens_per_s", "peak_rss_mb", "val_loss", "step0_loss")}
           for s, rs in results.items() if rs}
    t = med.get("tunery")
    n_params = meta["params"]
    out = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores" + (f", {torch.cuda.get_device_name()}" if _cuda() else ""),
        "torch_threads": torch.get_num_threads(), "model": "tiny random (quick)" if args.quick else args.model,
        "params": n_params,
        "steps": args.steps, "batch_size": args.batch_size, "rounds": args.rounds, "date": time.strftime("%Y-%m-%d"),
        "precision": meta["precision"], "cpu": cpu_kind(),
        "matmul_gflops": {k: round(v, 1) for k, v in gflops.items()},
    }
    if t:
        out["tunery_tokens_per_s"] = round(t["tokens_per_s"], 1)
        # LoRA: about 4N FLOPs per trained token (forward 2N, backward through activations 2N).
        out["tunery_matmul_utilisation"] = round(4 * n_params * t["tokens_per_s"] / (gflops[meta["precision"]] * 1e9), 3)
    if t and "tunery_unshared" in med:
        # the same packed batches without computing a shared prefix once: what packing alone gives
        out["tunery_unshared_tokens_per_s"] = round(med["tunery_unshared"]["tokens_per_s"], 1)
    for side, name in (("trl_tuned", "trl"), ("trl_default", "trl_default")):
        if t and side in med:
            o = med[side]
            out[f"{name}_tokens_per_s"] = round(o["tokens_per_s"], 1)
            out[f"speedup{'' if name == 'trl' else '_vs_default'}"] = round(t["tokens_per_s"] / o["tokens_per_s"], 2)
            out[f"peak_mem_ratio{'' if name == 'trl' else '_vs_default'}"] = round(t["peak_rss_mb"] / o["peak_rss_mb"], 3)
            out[f"step0_loss_{name}"] = round(o["step0_loss"], 5)
    if t and "trl_tuned" in med:
        out["step0_loss_tunery"] = round(t["step0_loss"], 5)
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
