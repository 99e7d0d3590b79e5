"""One fine-tune served by both engines: tunery's PyTorch engine on the run, llama.cpp on its f16 GGUF export.

    python bench/serve_engines.py [--quick] [--json] [--steps 5] [--max-tokens 32] [--concurrent 8] [--single 3] [--rounds 3]

Trains a LoRA of the default model for --steps steps on examples/contacts (a temporary
TUNERY_HOME), exports it at f16 with `tunery export --format gguf`, starts
`python -m tunery.cli serve --no-jobs --engine E` for both engines (each warmed up by one request,
which loads its model) and asks one server at a time, alternating for --rounds rounds, with the
same prompts (held-out contacts questions), greedy, --max-tokens tokens at most:
  - single: --single requests one after another (tokens/s = their completion tokens / their time);
  - concurrent: --concurrent requests at once (tokens/s = all completion tokens / the burst's wall time);
  - first token: --single streamed requests one after another, time to the first chunk with text.
Medians over the rounds are reported, each round's figures beside them. Completion tokens are the
servers' own usage counts (the end-of-turn token included, by both engines). Also reported: how
many of the burst's answers are the same text from both engines (PyTorch serves the run in fp32,
base + unmerged adapter; llama.cpp the merged f16 file), the CPU, and the load average at the end
(the machine may be shared). With --quick: a tiny random Llama with the default model's
tokenizer, one full fine-tuning step, a smoke run.
"""

import argparse
import concurrent.futures
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("pytorch", "llamacpp")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _first_token_s(url: str, body: dict) -> float:
    """Seconds from sending a streamed request to the first chunk that carries text."""
    req = urllib.request.Request(url, data=json.dumps(body | {"stream": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first = None
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            line = line.decode().strip()
            if first is None and line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    first = time.perf_counter() - t0
    if first is None:
        raise SystemExit("a streamed answer carried no text")
    return first


def _cpu() -> dict:
    try:
        flags = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        flags = []
    try:
        name = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                     .stdout.splitlines() if ln.startswith("Model name")), "unknown")
    except OSError:
        name = "unknown"
    return {"model_name": name, "cores": os.cpu_count(),
            "flags": " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)}


def _fine_tune(home: Path, args) -> tuple[str, Path]:
    """(registry name of a fine-tune, its f16 GGUF file), made in `home`."""
    os.environ["TUNERY_HOME"] = str(home)
    from tunery.export import export
    from tunery.training import train

    data = ROOT / "examples/contacts/train.jsonl"
    if args.quick:  # a tiny Llama with the default model's tokenizer (one llama.cpp knows)
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        from tunery.models import resolve_model

        tok = AutoTokenizer.from_pretrained(resolve_model("default").path)
        tok.save_pretrained(home / "tiny")
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, tie_word_embeddings=True)).save_pretrained(home / "tiny")
        recipe = dict(model=str(home / "tiny"), method="full")
    else:
        recipe = dict(model="default", method="lora")
    run = train(recipe | dict(data=str(data), out=str(home / "run"), max_steps=args.steps, batch_size=4, val_split=0),
                progress=False)
    record = export(run.dir, "gguf", home / "gguf", verify=False)
    return run.info.name, home / "gguf" / record["gguf"]


@contextlib.contextmanager
def _server(engine: str, model: str, home: Path):
    """`tunery serve --engine ENGINE` on a free port, warmed up (the first request loads the model):
    (its chat URL, seconds until it answered)."""
    port = _port()
    server = subprocess.Popen([sys.executable, "-m", "tunery.cli", "serve", "--port", str(port), "--no-jobs",
                               "--engine", engine], env=os.environ | {"TUNERY_HOME": str(home)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        t0, deadline = time.perf_counter(), time.time() + 300
        while True:
            try:
                _post(url, _ask(model, "Hello", 4))
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"{engine} server did not start: {server.stderr.read()[-2000:]}")
                time.sleep(0.5)
        yield url, time.perf_counter() - t0
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def _ask(model: str, prompt: str, max_tokens: int) -> dict:
    return {"model": model, "max_tokens": max_tokens, "temperature": 0, "messages": [{"role": "user", "content": prompt}]}


def _round(url: str, model: str, prompts: list[str], args) -> dict:
    """One round of the three measurements against one server."""
    single_tokens, single_s = 0, 0.0
    for p in prompts[: args.single]:
        t0 = time.perf_counter()
        single_tokens += _post(url, _ask(model, p, args.max_tokens))["usage"]["completion_tokens"]
        single_s += time.perf_counter() - t0
    burst = prompts[: args.concurrent]
    with concurrent.futures.ThreadPoolExecutor(len(burst)) as pool:
        t0 = time.perf_counter()
        answers = list(pool.map(lambda p: _post(url, _ask(model, p, args.max_tokens)), burst))
        wall = time.perf_counter() - t0
    burst_tokens = sum(a["usage"]["completion_tokens"] for a in answers)
    ttft = [_first_token_s(url, _ask(model, p, args.max_tokens)) for p in prompts[: args.single]]
    return {"single_tokens_per_s": single_tokens / single_s, "concurrent_tokens_per_s": burst_tokens / wall,
            "first_token_ms": statistics.median(ttft) * 1000, "completion_tokens": (single_tokens, burst_tokens),
            "answers": [a["choices"][0]["message"]["content"] for a in answers]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny random Llama, 1 step: a smoke run")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--steps", type=int, default=5, help="LoRA steps of the default model")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--concurrent", type=int, default=8)
    ap.add_argument("--single", type=int, default=3, help="sequential requests, plain and streamed")
    ap.add_argument("--rounds", type=int, default=3, help="rounds alternating the engines; medians reported")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.max_tokens, args.rounds = 1, 8, 1

    prompts = [json.loads(line)["messages"][0]["content"]
               for line in (ROOT / "examples/contacts/test.jsonl").read_text().splitlines()[: max(args.concurrent, args.single)]]
    with tempfile.TemporaryDirectory(prefix="tunery-engines-") as tmp:
        home = Path(tmp)
        t0 = time.perf_counter()
        model, gguf = _fine_tune(home, args)
        prepare_s, gguf_mib = time.perf_counter() - t0, gguf.stat().st_size / 2**20
        with contextlib.ExitStack() as stack:  # both servers up; only one is asked at a time
            servers = {e: stack.enter_context(_server(e, model, home)) for e in ENGINES}
            rounds = {e: [] for e in ENGINES}
            for _ in range(args.rounds):  # alternating, so a slow spell on a shared machine hits both
                for e in ENGINES:
                    rounds[e].append(_round(servers[e][0], model, prompts, args))
    results = {e: {"ready_s": round(servers[e][1], 2), "completion_tokens_single_burst": rounds[e][0]["completion_tokens"],
                   **{k: round(statistics.median(r[k] for r in rounds[e]), 1)
                      for k in ("single_tokens_per_s", "concurrent_tokens_per_s", "first_token_ms")},
                   "per_round": {k: [round(r[k], 1) for r in rounds[e]]
                                 for k in ("single_tokens_per_s", "concurrent_tokens_per_s", "first_token_ms")}}
               for e in ENGINES}
    pt, ll = results["pytorch"], results["llamacpp"]
    same = sum(a == b for a, b in zip(rounds["pytorch"][0]["answers"], rounds["llamacpp"][0]["answers"]))
    report = {"model": "tiny random Llama (quick)" if args.quick else f"default + LoRA ({args.steps} steps)",
              "gguf": f"{gguf.name} ({gguf_mib:.0f} MiB)", "max_tokens": args.max_tokens,
              "concurrent": args.concurrent, "single": args.single, "rounds": args.rounds,
              "same_answers": f"{same}/{len(prompts[: args.concurrent])}",
              "prepare_s": round(prepare_s, 1), "engines": results,
              "speedup_single": round(ll["single_tokens_per_s"] / pt["single_tokens_per_s"], 2),
              "speedup_concurrent": round(ll["concurrent_tokens_per_s"] / pt["concurrent_tokens_per_s"], 2),
              "cpu": _cpu(), "load_average": os.getloadavg()[0]}
    if args.json:
        print(json.dumps(report))
        return
    rows = [("tokens/s, 1 request", "single_tokens_per_s"), (f"tokens/s, {args.concurrent} concurrent", "concurrent_tokens_per_s"),
            ("first token (ms, streamed)", "first_token_ms"), ("server ready (s, incl. load)", "ready_s")]
    print(f"{report['model']}, greedy, max_tokens {args.max_tokens}; GGUF {report['gguf']}; "
          f"same answers {report['same_answers']}; CPU {report['cpu']}")
    print(f"{'':38s} {'pytorch':>10s} {'llamacpp':>10s}")
    for label, key in rows:
        print(f"{label:38s} {pt[key]:>10} {ll[key]:>10}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
