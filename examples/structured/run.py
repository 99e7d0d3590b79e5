"""Structured outputs, measured: the base model, a prompt-only baseline and a LoRA fine-tune of the default
model, each free and held to its task's format, on the two tasks of make_data.py.

    python examples/structured/make_data.py
    python examples/structured/run.py [--task intents|tickets|both] [--steps-intents 120] [--steps-tickets 60]

intents: 40 labels (exact match); the fine-tune's recipe records `constraint: choices:labels.txt`, so eval,
         compare and serve hold it to the labels by default; also every label scored by log-probability
         (tunery eval --score: accuracy and top-3).
tickets: one JSON object per message (json_exact); the recipe records `constraint: schema:schema.json`.
The prompt-only baseline gets system.txt and 3 examples from the training file; the base and the fine-tune
the bare message. Writes runs/structured/results.json and prints the README's table.
"""

import argparse
import json
import shutil
from pathlib import Path

HERE = Path(__file__).parent
TASKS = {"intents": dict(metric="exact", constraint="choices:{dir}/labels.txt", max_new_tokens=16, batch_size=40),
         "tickets": dict(metric="json_exact", constraint="schema:{dir}/schema.json", max_new_tokens=96, batch_size=30)}


def run_task(name: str, steps: int, lr: float, out: Path) -> dict:
    import tunery
    from tunery.config import AnswerFormat
    from tunery.evaluate.compare import compare
    from tunery.evaluate.evaluator import evaluate, few_shot_messages, format_options, load_cases, recorded_format
    from tunery.generation import Generator

    task, folder = TASKS[name], HERE / name
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run = tunery.train(dict(model="default", data=str(folder / "train.jsonl"), method="lora", max_steps=steps, lr=lr,
                            batch_size=8, val_split=0.05, suffix=f"structured-{name}", out=str(run_dir),
                            constraint=task["constraint"].format(dir=folder)))
    fmt: AnswerFormat = recorded_format(str(run.dir))  # what the recipe recorded
    system = (folder / "system.txt").read_text().strip()
    kw = dict(metrics=[task["metric"]], max_new_tokens=task["max_new_tokens"], batch_size=task["batch_size"])
    result = compare("default", str(run.dir), folder / "test.jsonl", few_shot=3, system=system,
                     options=format_options(fmt), **kw)
    rows = {c: {"free" if not c.endswith("_constrained") else "constrained": summary(r, task["metric"])}
            for c, r in result["contestants"].items()}
    table = {}
    for c, r in rows.items():
        table.setdefault(c.removesuffix("_constrained"), {}).update(r)
    if fmt.choices is not None:  # every label scored by its log-probability: one forward pass per example
        cases = load_cases(folder / "test.jsonl")
        shots = few_shot_messages(folder / "train.jsonl", 3, 0, exclude=cases)
        scored = format_options(fmt, score=True)
        for contestant, model, more in (("base", "default", {}), ("prompt_only", "default", dict(system=system, shots=shots)),
                                        ("tuned", str(run.dir), {})):
            r = evaluate(Generator(model), cases, [task["metric"]], options=scored, **more)
            table[contestant]["scored"] = {"accuracy": r["metrics"]["choice_accuracy"], "top3": r["metrics"]["choice_top3"],
                                           "latency_s": r["latency_s_per_request"]}
    final = run.info.final
    return {"task": name, "examples": result["examples"], "metric": task["metric"], "format": fmt.describe(),
            "steps": steps, "lr": lr, "train_seconds": final.seconds if final else None,
            "val_loss": run.val_loss, "table": table, "verdict": result["verdict"]["text"]}


def summary(r: dict, metric: str) -> dict:
    return {metric: r["metrics"][metric], "valid": r["metrics"]["valid"],
            "prompt_tokens": r["prompt_tokens_per_request"], "latency_s": r["latency_s_per_request"]}


def markdown(res: dict) -> str:
    m = res["metric"]
    scored = any("scored" in row for row in res["table"].values())
    head = (f"| {res['task']} ({res['examples']} held out) | {m} free | valid free | {m} constrained | valid constrained |"
            + (" scored: accuracy | top-3 |" if scored else "") + " prompt tokens |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for name, row in res["table"].items():
        f, c = row["free"], row["constrained"]
        cells = [name, f"{f[m]:.1%}", f"{f['valid']:.1%}", f"{c[m]:.1%}", f"{c['valid']:.1%}"]
        if scored:
            cells += [f"{row['scored']['accuracy']:.1%}", f"{row['scored']['top3']:.1%}"]
        cells += [f"{f['prompt_tokens']:.0f}"]  # latencies are in results.json (noisy on a shared machine)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=["intents", "tickets", "both"], default="both")
    ap.add_argument("--steps-intents", type=int, default=120)
    ap.add_argument("--steps-tickets", type=int, default=60)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--out", default="runs/structured")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    for name in (["intents", "tickets"] if args.task == "both" else [args.task]):
        steps = args.steps_intents if name == "intents" else args.steps_tickets
        results[name] = run_task(name, steps, args.lr, out)
        results_file.write_text(json.dumps(results, indent=2))
    for res in results.values():
        print(f"\n{res['task']}: format {res['format']}, LoRA {res['steps']} steps (lr {res['lr']}), "
              f"{res['train_seconds'] or 0:.0f} s of training, validation loss {res['val_loss']:.3f}")
        print(markdown(res))
        print(res["verdict"])


if __name__ == "__main__":
    main()
