"""A bounded burst against `tunery serve`: N concurrent chat completions, latency and throughput.

    python bench/serve_burst.py [--requests 32] [--max-tokens 16] [--long-tokens 0] [--model default] [--json]

Starts `python -m tunery.cli serve --no-jobs` (so PYTHONPATH picks the code under test: run it
once per version to compare), sends one warm-up request, then N requests at once from N threads,
each a different short question, greedy. With --long-tokens T, one request asking for T tokens
goes first (a second earlier), and the burst's latencies show whether it holds the others up.
Reports p50 / p95 / max latency of the burst's requests, the wall time of the burst and
completion tokens per second over it, and the CPU flags it ran on.
"""

import argparse
import concurrent.futures
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _cpu_flags() -> str:
    try:
        flags = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--long-tokens", type=int, default=0, help="one long request first, asking for this many tokens")
    ap.add_argument("--model", default="default")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    port = _port()
    home = os.environ.get("TUNERY_HOME") or tempfile.mkdtemp(prefix="tunery-burst-")
    env = os.environ | {"TUNERY_HOME": home}
    server = subprocess.Popen([sys.executable, "-m", "tunery.cli", "serve", "--port", str(port), "--no-jobs"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        deadline = time.time() + 300
        while True:
            try:
                _post(url, {"model": args.model, "messages": [{"role": "user", "content": "Hello"}],
                            "max_tokens": 4, "temperature": 0})
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"server did not start: {server.stderr.read()[-2000:]}")
                time.sleep(0.5)

        def one(i: int) -> tuple[float, int]:
            t0 = time.perf_counter()
            r = _post(url, {"model": args.model, "max_tokens": args.max_tokens, "temperature": 0,
                            "messages": [{"role": "user", "content": f"Name one fact about the number {i}."}]})
            return time.perf_counter() - t0, r["usage"]["completion_tokens"]

        with concurrent.futures.ThreadPoolExecutor(args.requests + 1) as pool:
            long = None
            if args.long_tokens:
                long = pool.submit(_post, url, {"model": args.model, "max_tokens": args.long_tokens, "temperature": 0,
                                                "messages": [{"role": "user", "content": "Tell a long story."}]})
                time.sleep(1)
            t0 = time.perf_counter()
            results = list(pool.map(one, range(args.requests)))
            wall = time.perf_counter() - t0
            long_s = None
            if long is not None:
                long.result()
                long_s = round(time.perf_counter() - t0 + 1, 3)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    latencies = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    out = {"requests": args.requests, "max_tokens": args.max_tokens, "model": args.model,
           "p50_s": round(statistics.median(latencies), 3),
           "p95_s": round(latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))], 3),
           "max_s": round(latencies[-1], 3), "wall_s": round(wall, 3), "completion_tokens": tokens,
           "tokens_per_s": round(tokens / wall, 1), "long_tokens": args.long_tokens, "long_s": long_s,
           "cpu_flags": _cpu_flags()}
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
