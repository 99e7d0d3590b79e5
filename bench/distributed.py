"""One process vs two on this machine: training throughput, and what the gradient all-reduce costs.

    python bench/distributed.py [--quick] [--json] [--model tiny-ish|default|PATH] [--steps 20] [--rounds 2]

1) `tunery train` (LoRA, fp32, batch 8, packed) with `--nproc 1` and `--nproc 2`, alternating, each
   its own run; tokens/s is the median of metrics.jsonl's per-step rate over steps 2..N (every
   process's tokens: the run's rate). The same global batch, so the same updates (tested).
2) the all-reduce, in two processes (torchrun): a step's forward and backward on each process's
   half of the batch, timed with DDP's gradient sync and without it (`no_sync`); the difference is
   what the sync adds to a step. Also an all-reduce of the trainable gradients' size on its own.
On a 2-core CPU two processes split the same two cores: parity and overhead are the point, not
speed; on GPUs each process has its own device.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples/contacts/train.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny random model, few steps: a smoke run")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--model", default="tiny-ish", help="tiny-ish (a random 4-layer Llama built here), default, or a folder")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # part 2, under torchrun
    args = ap.parse_args()
    if args.worker:
        return _worker(args)

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if args.quick or model == "tiny-ish":
            sys.path.insert(0, str(ROOT / "tests"))
            from tiny import build_model

            model = str(build_model(Path(tmp) / "model", layers=2 if args.quick else 4, hidden=32 if args.quick else 256))
        if args.quick:
            args.steps, args.rounds = 4, 1
        env = os.environ | {"TUNERY_HOME": str(Path(tmp) / "home")}
        rates = {1: [], 2: []}
        for r in range(args.rounds):
            for n in (1, 2):
                out = Path(tmp) / f"run-{n}-{r}"
                subprocess.run([sys.executable, "-m", "tunery", "train", "--model", model, "--data", str(DATA),
                                "--out", str(out), "--method", "lora", "--precision", "fp32", "--max-steps", str(args.steps),
                                "--batch-size", str(args.batch_size), "--val-split", "0", "--save-every", str(args.steps),
                                "--nproc", str(n)], env=env, check=True, capture_output=True)
                rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
                rates[n].append(statistics.median(r["tokens_per_s"] for r in rows[1:]))
        sync = json.loads(subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", __file__, "--worker", "--model", model,
             "--steps", str(args.steps), "--batch-size", str(args.batch_size)],
            env=env | {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // 2))}, check=True, capture_output=True,
            text=True).stdout.strip().splitlines()[-1])
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    report = {"model": "tiny random (quick)" if args.quick else args.model, "cpus": os.cpu_count(),
              "batch_size": args.batch_size, "steps": args.steps, "rounds": args.rounds,
              "tokens_per_s_1_process": round(one, 1), "tokens_per_s_2_processes": round(two, 1),
              "ratio_2_to_1": round(two / one, 3), **sync}
    print(json.dumps(report) if args.json else "\n".join(f"{k:32s} {v}" for k, v in report.items()))


def _worker(args) -> None:
    """Part 2, in each of two processes."""
    import torch
    import torch.distributed as dist

    from tunery.config import TrainConfig
    from tunery.models import load_tokenizer, resolve_model
    from tunery.training import attention
    from tunery.training.batches import collate, step_groups
    from tunery.training.distributed import World
    from tunery.training.loop import load_data
    from tunery.training.loss import TokenLoss
    from tunery.training.setup import build_model

    cfg = TrainConfig(model=args.model, data=str(DATA), method="lora", precision="fp32", val_split=0,
                      batch_size=args.batch_size)
    base = resolve_model(cfg.model)
    tokenizer = load_tokenizer(base)
    examples = load_data(cfg, tokenizer)[0]
    with World.joined() as world:
        torch.manual_seed(0)
        model = build_model(cfg, base)
        loss_fn = world.accelerator.prepare(TokenLoss(model))
        params = [p for p in model.parameters() if p.requires_grad]
        steps = [mbs[0] for mbs in step_groups(examples, 0, 0, args.batch_size, 1)][: args.steps]
        times = {"sync": [], "no_sync": []}
        for mode in ("sync", "no_sync") * 3:
            for i, mb in enumerate(steps):
                mine = world.shard(mb)
                batch = collate(mine, tokenizer.pad_token_id, world.device, attention.installed(model), True)
                dist.barrier()
                t0 = time.perf_counter()
                with world.no_sync(loss_fn, sync=mode == "sync"):
                    loss, n = loss_fn(**batch)
                    (loss * world.grad_scale / max(int(n), 1)).backward()
                if i:  # the first step of each pass warms up
                    times[mode].append(time.perf_counter() - t0)
                for p in params:
                    p.grad = None
        flat = torch.zeros(sum(p.numel() for p in params), device=world.device)
        reduce_s = []
        for _ in range(20):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(flat)
            reduce_s.append(time.perf_counter() - t0)
        sync, no_sync = statistics.median(times["sync"]), statistics.median(times["no_sync"])
        if world.main:
            print(json.dumps({"trainable_params": flat.numel(), "step_ms_with_sync": round(sync * 1e3, 2),
                              "step_ms_no_sync": round(no_sync * 1e3, 2),
                              "allreduce_share_of_step": round(max(sync - no_sync, 0) / sync, 3),
                              "allreduce_ms_alone": round(statistics.median(reduce_s) * 1e3, 3)}))


if __name__ == "__main__":
    main()
