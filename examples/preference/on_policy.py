"""Preference tuning on the contacts task: base vs SFT vs SFT + DPO, with SFT continued as a control.

    .venv/bin/python examples/preference/on_policy.py [--sft-steps 15] [--dpo-steps 20] [--out runs/preference]

The usual pipeline, on-policy:
1. SFT: LoRA fine-tune the default model on examples/contacts/train.jsonl for a few steps: it
   learns the JSON format but still gets some fields wrong.
2. Pairs: the SFT model answers every training sentence (greedy); each answer that is not the
   reference becomes a pair, the reference chosen and the model's own answer rejected. The same
   on the held-out sentences gives held-out pairs, for pref_accuracy only.
3. DPO from the SFT run (its adapter continues; the reference is the SFT model), and, as the
   control for "just more training", SFT continued for the same number of steps.
4. Every model on the held-out sentences: JSON exact match, and pref_accuracy / pref_margin on
   the held-out pairs (how often the model finds the reference likelier than SFT's mistake).
"""

import argparse
import json
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import tunery
from tunery.evaluate.evaluator import evaluate_model, load_cases
from tunery.generation import Generator

CONTACTS = Path(__file__).parent.parent / "contacts"


def mistakes(model: str, data: Path, out: Path, limit: int | None = None) -> int:
    """Write the pairs (reference chosen, the model's own wrong answer rejected); return how many."""
    cases = load_cases(data, limit=limit)
    answers = Generator(model).chat([c.prompt for c in cases], max_new_tokens=64, batch_size=32)
    rows = [{"prompt": c.prompt, "chosen": c.reference, "rejected": a.text}
            for c, a in zip(cases, answers) if a.text.strip() and a.text.strip() != c.reference.strip()]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sft-steps", type=int, default=15)
    ap.add_argument("--dpo-steps", type=int, default=20)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=5e-5, help="the preference stage's learning rate")
    ap.add_argument("--examples", type=int, default=60, help="held-out sentences scored")
    ap.add_argument("--out", default="runs/preference")
    args = ap.parse_args()
    console = Console(highlight=False)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    seconds = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        result = fn()
        seconds[name] = time.perf_counter() - t0
        return result

    console.rule("1. SFT")
    common = dict(method="lora", batch_size=8, val_split=0)
    sft = timed("sft", lambda: tunery.train(dict(model="default", data=str(CONTACTS / "train.jsonl"),
                                                 max_steps=args.sft_steps, out=str(out / "sft"), **common)))

    console.rule("2. pairs from the SFT model's own mistakes")
    n_train = timed("pairs", lambda: mistakes(str(sft.dir), CONTACTS / "train.jsonl", out / "pairs.jsonl"))
    n_test = mistakes(str(sft.dir), CONTACTS / "test.jsonl", out / "test_pairs.jsonl", limit=args.examples)
    console.print(f"{n_train} training pairs, {n_test} held-out pairs")

    console.rule("3. DPO from the SFT run, and SFT continued as the control")
    dpo = timed("dpo", lambda: tunery.train(dict(model=str(sft.dir), data=str(out / "pairs.jsonl"), objective="dpo",
                                                 beta=args.beta, lr=args.lr, max_steps=args.dpo_steps,
                                                 out=str(out / "dpo"), **common)))
    more = timed("sft_more", lambda: tunery.train(dict(model=str(sft.dir), data=str(CONTACTS / "train.jsonl"),
                                                       max_steps=args.dpo_steps, out=str(out / "sft-more"), **common)))

    console.rule("4. held-out")
    models = {"base": "default", f"SFT ({args.sft_steps} steps)": str(sft.dir),
              f"SFT + {args.dpo_steps} more SFT steps": str(more.dir), f"SFT + DPO ({args.dpo_steps} steps)": str(dpo.dir)}
    table = Table(title=f"contacts: {args.examples} held-out sentences, {n_test} held-out pairs")
    for column in ("model", "JSON exact", "pref_accuracy", "pref_margin", "train s"):
        table.add_column(column, justify="left" if column == "model" else "right")
    results = {}
    for (name, model), stage in zip(models.items(), (None, "sft", "sft_more", "dpo")):
        exact = evaluate_model(model, CONTACTS / "test.jsonl", ["json_exact"], max_new_tokens=64, batch_size=32,
                               limit=args.examples)["metrics"]["json_exact"]
        pref = evaluate_model(model, out / "test_pairs.jsonl", ["json_exact"], max_new_tokens=1)["metrics"] \
            if n_test else {}
        results[name] = {"json_exact": exact, **{k: pref.get(k) for k in ("pref_accuracy", "pref_margin")}}
        table.add_row(name, f"{exact:.0%}", f"{pref['pref_accuracy']:.0%}" if n_test else "-",
                      f"{pref['pref_margin']:+.2f}" if n_test else "-",
                      f"{seconds[stage]:.0f}" if stage else "")
    console.print(table)
    (out / "results.json").write_text(json.dumps({"results": results, "seconds": seconds, "pairs": n_train,
                                                  "held_out_pairs": n_test, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
