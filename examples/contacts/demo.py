"""The main job: fine-tune the default model on the bundled contacts task and show before vs after.

    make demo            # or: .venv/bin/python examples/contacts/demo.py [--steps 40]

1. checks the data with the data doctor, 2. LoRA fine-tunes SmolLM2-135M-Instruct on CPU,
3. answers the held-out sentences with the base model and the tuned one and scores JSON exact match.
"""

import argparse
import json
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import tunery
from tunery.generation import Generator

HERE = Path(__file__).parent


def json_exact(answer: str, expected: str) -> bool:
    try:
        return json.loads(answer) == json.loads(expected)
    except json.JSONDecodeError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", default="runs/contacts-demo")
    ap.add_argument("--examples", type=int, default=60, help="held-out examples to score")
    args = ap.parse_args()
    console = Console(highlight=False)

    console.rule("1. data doctor")
    report = tunery.check_dataset(HERE / "train.jsonl", model="default")
    s = report["stats"]
    console.print(f"{report['examples']} examples, {report['good']} good, {len(report['errors'])} errors; "
                  f"median {s['tokens_per_example']['median']} tokens; {s['trainable_tokens']:,} trainable tokens")

    console.rule("2. LoRA fine-tune on CPU")
    shutil.rmtree(args.out, ignore_errors=True)
    run = tunery.train(dict(model="default", data=str(HERE / "train.jsonl"), method="lora", max_steps=args.steps,
                            batch_size=8, out=args.out))

    console.rule("3. base vs tuned on held-out examples")
    rows = [json.loads(line) for line in open(HERE / "test.jsonl")][: args.examples]
    prompts = [r["messages"][:-1] for r in rows]
    expected = [r["messages"][-1]["content"] for r in rows]
    scores, answers = {}, {}
    for name, ref in (("base", "default"), ("tuned", str(run.dir))):
        t0 = time.perf_counter()
        out = Generator(ref).chat(prompts, max_new_tokens=48, batch_size=30)
        answers[name] = [g.text for g in out]
        scores[name] = sum(json_exact(a, e) for a, e in zip(answers[name], expected)) / len(rows)
        console.print(f"{name}: {len(rows)} answers in {time.perf_counter() - t0:.1f} s")
    table = Table(title="held-out examples", show_lines=True)
    for col in ("input", "base", "tuned"):
        table.add_column(col, overflow="fold")
    for i in range(3):
        table.add_row(prompts[i][-1]["content"], answers["base"][i], answers["tuned"][i])
    console.print(table)
    console.print(f"[bold]JSON exact match on {len(rows)} held-out examples: base {scores['base']:.0%} → "
                  f"tuned {scores['tuned']:.0%}[/]   (run folder: {run.dir})")


if __name__ == "__main__":
    main()
