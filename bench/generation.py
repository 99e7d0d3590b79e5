"""Generation throughput for evaluation: batched (left padding, KV cache) vs one prompt at a time.

    python bench/generation.py [--quick] [--json] [--prompts 32] [--batch-size 16]

Same prompts, same greedy decoding, same max_new_tokens; alternating trials, medians reported.
Counts generated tokens (up to and including the end-of-turn token).
"""

import json
import statistics
import tempfile
import time
from pathlib import Path

from common import generation_options, tiny_model


def main() -> None:
    ap = generation_options(__doc__.splitlines()[0])
    args = ap.parse_args()

    from tunery.evaluate.evaluator import load_cases
    from tunery.generation import Generator

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if args.quick:
            model = tiny_model(Path(tmp) / "tiny")
            args.rounds = 1
        gen = Generator(model)
        prompts = [c.prompt for c in load_cases(args.data, limit=args.prompts)]
        rates = {"batched": [], "sequential": []}
        for _ in range(args.rounds):
            for mode, bs in (("batched", args.batch_size), ("sequential", 1)):
                t0 = time.perf_counter()
                out = gen.chat(prompts, max_new_tokens=args.max_new_tokens, batch_size=bs)
                rates[mode].append(sum(o.completion_tokens for o in out) / (time.perf_counter() - t0))
    b, s = statistics.median(rates["batched"]), statistics.median(rates["sequential"])
    report = {"model": "tiny random (quick)" if args.quick else args.model, "prompts": len(prompts),
              "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
              "batched_tokens_per_s": round(b, 1), "sequential_tokens_per_s": round(s, 1), "speedup": round(b / s, 2)}
    print(json.dumps(report) if args.json else "\n".join(f"{k:24s} {v}" for k, v in report.items()))


if __name__ == "__main__":
    main()
