"""Data bigger than memory: the data doctor, the data cache and training start, at two file sizes.

    python bench/data_scale.py [--quick] [--json] [--rows 100000,1000000] [--model default] [--steps 6]

For each size, a generated chat JSONL file of short rows (a fixed seed, written to /tmp and deleted
after) goes through, each step in its own process so its peak RSS is its own:
  check  `tunery data check FILE --json`: wall time and peak RSS of the whole command;
  build  the data cache built (cold): seconds inside the call, cache size;
  load   the same call again (a hit, verified): seconds inside the call;
  train  `train()` for --steps optimizer steps from the warm cache: seconds until the examples are
         ready, peak RSS after loading the data and after the first step, tokens/s (median of
         steps 2..N), and one epoch's duration estimated as tokens per epoch / tokens/s.
Runs in a temporary TUNERY_HOME (the model is resolved once, in the caller's).
"""

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTIONS = ["What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} + {b}, please.", "How much is {a} and {b} together?"]
ANSWERS = ["{a} plus {b} is {c}.", "The sum is {c}.", "{c}", "Together they make {c}."]


def generate(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(rows):
            a, b, k = rng.randrange(10_000), rng.randrange(10_000), rng.randrange(4)
            f.write(json.dumps({"messages": [{"role": "user", "content": QUESTIONS[k].format(a=a, b=b)},
                                             {"role": "assistant", "content": ANSWERS[k].format(a=a, b=b, c=a + b)}]}))
            f.write("\n")


def _vm(key: str) -> int:
    """VmHWM (peak RSS) or VmRSS of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return round(int(line.split()[1]) / 1024)
    return -1


# -- the measurements, each run as a child process --------------------------------------------------

def child_encode(data: str, model: str) -> dict:
    from tunery.config import DataConfig
    from tunery.data.cache import cache_root, encode_cached
    from tunery.data.doctor import make_renderer
    from tunery.models import load_tokenizer

    cfg = DataConfig(model=model)
    renderer = make_renderer(load_tokenizer(model), cfg)
    t0 = time.perf_counter()
    enc = encode_cached(data, renderer, max_length=cfg.max_length, overlong=cfg.overlong, fmt=cfg.format)
    seconds = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in cache_root().rglob("*") if p.is_file())
    return {"seconds": round(seconds, 2), "hit": enc.hit, "examples": len(enc.examples),
            "tokens": int(enc.examples.lengths.sum()), "cache_mib": round(size / 2**20, 1), "peak_rss_mib": _vm("VmHWM")}


def child_train(data: str, model: str, steps: int, out: str) -> dict:
    from tunery.config import TrainConfig
    from tunery.training import loop, train

    marks, load_data = {}, loop.load_data
    t0 = time.perf_counter()

    def measured(*a, **k):
        result = load_data(*a, **k)
        marks.update(data_ready_s=round(time.perf_counter() - t0, 2), rss_after_load_mib=_vm("VmRSS"),
                     peak_after_load_mib=_vm("VmHWM"), epoch_tokens=int(result[0].lengths.sum()))
        return result

    def on_step(row):
        if row["step"] == 1:
            marks.update(first_step_s=round(time.perf_counter() - t0, 2), peak_after_step1_mib=_vm("VmHWM"))

    loop.load_data = measured
    run = train(TrainConfig(model=model, data=data, out=out, max_steps=steps, val_split=0, batch_size=8, lr=1e-4),
                progress=False, on_step=on_step)
    speeds = [r["tokens_per_s"] for r in run.metrics[1:]] or [run.metrics[0]["tokens_per_s"]]
    tokens_per_s = statistics.median(speeds)
    return marks | {"tokens_per_s": tokens_per_s, "epoch_hours": round(marks["epoch_tokens"] / tokens_per_s / 3600, 2),
                    "peak_rss_mib": _vm("VmHWM")}


def measure(rows: int, model: str, steps: int, work: Path) -> dict:
    data = work / f"chat-{rows}.jsonl"
    t0 = time.perf_counter()
    generate(data, rows)
    result = {"rows": rows, "file_mib": round(data.stat().st_size / 2**20, 1), "generate_s": round(time.perf_counter() - t0, 1)}
    env = dict(os.environ, TUNERY_HOME=str(work / f"home-{rows}"))
    me = [sys.executable, __file__]
    check = [sys.executable, "-c", "import sys; from tunery.cli import main; sys.argv[0] = 'tunery'; main()",
             "data", "check", str(data), "--model", model, "--json"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(check, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    report, usage = _wait(proc)
    result["check"] = {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mib": usage,
                       "good": report["good"], "duplicates": report["stats"]["duplicates"],
                       "warnings_listed": len(report["warnings"]), "warning_count": report["warning_count"]}
    for step in ("build", "load"):
        proc = subprocess.Popen(me + ["--child", "encode", str(data), model], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        answer, usage = _wait(proc)
        result[step] = answer | {"peak_rss_mib": usage}
    proc = subprocess.Popen(me + ["--child", "train", str(data), model, str(steps), str(work / f"run-{rows}")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    answer, usage = _wait(proc)
    result["train"] = answer | {"peak_rss_mib": usage}
    data.unlink()
    shutil.rmtree(work / f"home-{rows}", ignore_errors=True)
    shutil.rmtree(work / f"run-{rows}", ignore_errors=True)
    return result


def _wait(proc: subprocess.Popen) -> tuple[dict, int]:
    """The child's last stdout line as JSON, and its peak RSS in MiB (ru_maxrss, from wait4)."""
    import threading

    chunks = {}
    readers = [threading.Thread(target=lambda s=s, k=k: chunks.__setitem__(k, s.read()))
               for k, s in (("out", proc.stdout), ("err", proc.stderr))]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)
    for r in readers:
        r.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(proc.args[:6])} ... failed:\n{chunks['err'][-3000:]}")
    lines = chunks["out"].strip().splitlines()
    return (json.loads(lines[-1]) if lines else {}), round(usage.ru_maxrss / 1024)


def machine() -> str:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return f"{os.cpu_count()}-core {model} ({', '.join(wanted) or 'no avx2'})"


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        kind, rest = sys.argv[2], sys.argv[3:]
        answer = child_encode(*rest) if kind == "encode" else child_train(rest[0], rest[1], int(rest[2]), rest[3])
        print(json.dumps(answer))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="100000,1000000", help="comma-separated file sizes in rows")
    p.add_argument("--model", default="default")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps of the training measurement")
    p.add_argument("--quick", action="store_true", help="2,000 and 20,000 rows, 3 steps (a smoke run)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    sizes = [2_000, 20_000] if args.quick else [int(n) for n in args.rows.split(",")]
    steps = 3 if args.quick else args.steps
    from tunery.models import resolve_model

    model = str(resolve_model(args.model).path)  # in the caller's TUNERY_HOME: imported once
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tunery-data-scale-", dir="/tmp") as work:
        results = [measure(n, model, steps, Path(work)) for n in sizes]
    report = {"machine": machine(), "model": args.model, "load_average": [round(load, 1), round(os.getloadavg()[0], 1)],
              "sizes": results}
    if args.json:
        print(json.dumps(report))
        return
    print(f"machine {report['machine']}, model {args.model}, load average before/after {report['load_average']}")
    for r in results:
        c, b, ld, t = r["check"], r["build"], r["load"], r["train"]
        print(f"{r['rows']:>9,} rows ({r['file_mib']} MiB): check {c['seconds']} s (peak {c['peak_rss_mib']} MiB), "
              f"build {b['seconds']} s ({b['cache_mib']} MiB cache, peak {b['peak_rss_mib']} MiB), load {ld['seconds']} s, "
              f"train: data ready {t['data_ready_s']} s, peak after load {t['peak_after_load_mib']} MiB, after step 1 "
              f"{t['peak_after_step1_mib']} MiB, {t['tokens_per_s']} tok/s, epoch ~{t['epoch_hours']} h")


if __name__ == "__main__":
    main()
