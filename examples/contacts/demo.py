"""The main job: fine-tune the default model on the bundled contacts task and show before vs after.

    make demo            # or: .venv/bin/python examples/contacts/demo.py [--steps 40] [--examples 60]

1. the data doctor checks the training file,
2. LoRA fine-tunes SmolLM2-135M-Instruct on CPU,
3. compares, on held-out sentences: the base model, the base model prompted with a system prompt
   and few-shot examples, and the fine-tune with the bare sentence, on JSON exact match.
"""

import argparse
import shutil
from pathlib import Path

from rich.console import Console

import tunery
from tunery.evaluate import compare
from tunery.evaluate.report import print_comparison, write_report
from tunery.run_folder import RunFolder

HERE = Path(__file__).parent
SYSTEM = ("Extract the person described in the user's sentence as one JSON object with the keys "
          "name, age, city and job. Answer with the JSON only.")


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
                            suffix="contacts", batch_size=8, out=args.out))

    console.rule("3. base vs prompt-only vs tuned, on held-out examples")
    result = compare("default", str(run.dir), HERE / "test.jsonl", metrics=["json_exact", "json_valid"],
                     few_shot=3, system=SYSTEM, limit=args.examples, max_new_tokens=64, batch_size=30)
    print_comparison(result, console)
    for i in range(2):
        console.print(f"[dim]input:[/] {result['contestants']['tuned']['examples'][i]['prompt']}")
        for name in ("base", "prompt_only", "tuned"):
            console.print(f"  [bold]{name:>11}[/]: {result['contestants'][name]['examples'][i]['prediction'][:160]}")
    folder = RunFolder(run.dir)
    _, html = write_report(result, folder.report_dir, folder.read_metrics())
    cs = result["contestants"]
    console.print(f"[bold]JSON exact match on {result['examples']} held-out examples: base "
                  f"{cs['base']['metrics']['json_exact']:.0%}, prompt-only {cs['prompt_only']['metrics']['json_exact']:.0%}, "
                  f"tuned {cs['tuned']['metrics']['json_exact']:.0%}[/]  report: {html}")


if __name__ == "__main__":
    from tunery.cli_output import listener_for
    from tunery.progress import listening

    with listening(listener_for(quiet=False)):  # the CLI's progress bars (on a terminal) for these steps too
        main()
