"""What an answer format costs in batched generation: tokens/s and time per decoding step with and
without a constraint, and how long a format takes to compile.

    python bench/constrained_generation.py [--quick] [--json] [--prompts 32] [--batch-size 16] [--rounds 3]

The same prompts (held-out contacts sentences), greedy, batched as `tunery eval` batches them, in
alternating trials (medians reported): free generation, then each row held to the contacts JSON
schema, then to one of 60 labels. Counts generated tokens (the end-of-turn token included). The
format changes the answers' lengths, so tokens/s alone mixes the prompt's forward pass (amortised
over fewer tokens when answers are short) with the mask's cost: `decode_ms_per_step` is the median
time between two new tokens of a batch (clocked by a stopping criterion, so the prompts' pass is
not in it), and `mask_ms_per_step` the mean time inside the mask processor per step (each row's
grammar advanced, its bitmask filled, the batch's logits masked). Compile: llguidance's view of the
tokenizer (once per tokenizer, cached), then a format to its first mask (once per request or
evaluation).
"""

import json
import statistics
import tempfile
import time
from pathlib import Path

from common import generation_options, tiny_model

CONTACT = {"type": "object", "additionalProperties": False, "required": ["name", "age", "city", "job"],
           "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 130},
                          "city": {"type": "string"}, "job": {"type": "string"}}}
LABELS = [f"{verb}_{noun}" for verb in ("check", "change", "cancel", "report", "request", "activate")
          for noun in ("card", "pin", "transfer", "balance", "address", "limit", "statement", "loan", "fee", "account")]


def main() -> None:
    ap = generation_options(__doc__.splitlines()[0])
    args = ap.parse_args()

    import torch

    from tunery import constrain, generation
    from tunery.config import AnswerFormat
    from tunery.evaluate.evaluator import load_cases
    from tunery.generation import Generator
    from tunery.models.hardware import cpu_flags

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if args.quick:
            model = tiny_model(Path(tmp) / "tiny")
            args.rounds, args.prompts = 1, 8
        gen = Generator(model)
        prompts = [c.prompt for c in load_cases(args.data, limit=args.prompts)]
        formats = {"free": None, "json_schema": AnswerFormat(json_schema=CONTACT), "choices_60": AnswerFormat(choices=LABELS)}

        t0 = time.perf_counter()
        constrain._ll_tokenizer(gen.tokenizer, tuple(sorted(gen.stop_ids)))
        tokenizer_s = time.perf_counter() - t0
        compile_ms = {}
        for name, fmt in formats.items():
            if fmt is None:
                continue
            times = []
            for r in range(5):  # a new schema each time (a description that differs), to its first mask
                varied = fmt.model_copy(update={"json_schema": fmt.json_schema | {"description": str(r)}}) \
                    if fmt.json_schema else fmt
                t0 = time.perf_counter()
                c = constrain.Constraint.from_format(varied, gen.tokenizer, gen.stop_ids, "bench")
                c.fill(torch.zeros(c.words, dtype=torch.int32))
                times.append(time.perf_counter() - t0)
            compile_ms[name] = round(1000 * statistics.median(times), 2)

        # Time inside the mask processor, and the clock of every decoding step.
        inside, calls, gaps = [0.0], [0], []
        real_masks, real_batch = generation.row_masks, generation.generate_batch

        def timed_masks(constraints):
            processor = real_masks(constraints)
            call = processor.__call__

            class Timed:
                def __call__(self, input_ids, scores):
                    t = time.perf_counter()
                    out = call(input_ids, scores)
                    inside[0] += time.perf_counter() - t
                    calls[0] += 1
                    return out
            return Timed()

        def clocked_batch(*a, **kw):
            from transformers import StoppingCriteria

            class Clock(StoppingCriteria):
                last = None

                def __call__(self, input_ids, scores, **kwargs):
                    now = time.perf_counter()
                    if self.last is not None:  # the first call follows the prompts' pass
                        gaps.append(now - self.last)
                    self.last = now
                    return torch.zeros(input_ids.shape[0], dtype=torch.bool)

            return real_batch(*a, **kw, stopping_criteria=[Clock()])

        generation.row_masks, generation.generate_batch = timed_masks, clocked_batch
        stats = {name: {"tok_s": [], "ms_step": [], "mask_ms_step": [], "valid": None, "cut": 0} for name in formats}
        for _ in range(args.rounds):
            for name, fmt in formats.items():
                constraints = None
                if fmt is not None:
                    first = constrain.Constraint.from_format(fmt, gen.tokenizer, gen.stop_ids, "bench")
                    constraints = [first.copy() for _ in prompts]
                inside[0], calls[0] = 0.0, 0
                gaps.clear()
                t0 = time.perf_counter()
                out = gen.chat(prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                               constraints=constraints)
                seconds = time.perf_counter() - t0
                s = stats[name]
                s["tok_s"].append(sum(o.completion_tokens for o in out) / seconds)
                s["ms_step"].append(1000 * statistics.median(gaps) if gaps else 0.0)
                s["mask_ms_step"].append(1000 * inside[0] / max(calls[0], 1))
                if fmt is not None:
                    from tunery.metrics import valid

                    s["valid"] = f"{sum(valid(o.text, '', {'format': fmt}) for o in out):.0f}/{len(out)}"
                    s["cut"] = sum(o.finish_reason == "length" for o in out)  # at max_new_tokens: unfinished
        generation.row_masks, generation.generate_batch = real_masks, real_batch
    report = {"model": "tiny random (quick)" if args.quick else args.model, "prompts": len(prompts),
              "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
              "cpu_flags": sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
              "llguidance_tokenizer_s": round(tokenizer_s, 3), "compile_ms_to_first_mask": compile_ms}
    for name, s in stats.items():
        report[name] = {"tokens_per_s": round(statistics.median(s["tok_s"]), 1),
                        "decode_ms_per_step": round(statistics.median(s["ms_step"]), 2),
                        "mask_ms_per_step": round(statistics.median(s["mask_ms_step"]), 3)} | (
            {"valid": s["valid"], "cut_at_max_tokens": s["cut"]} if s["valid"] else {})
    print(json.dumps(report) if args.json else "\n".join(f"{k:26s} {v}" for k, v in report.items()))


if __name__ == "__main__":
    main()
