"""Keep the secret, still answer: base vs SFT vs SFT + DPO on the default model, on CPU.

    .venv/bin/python examples/preference/run_secret.py [--stages base,sft,sft_more,dpo] [--out /tmp/pref-runs/secret]

The data (examples/preference/make_data.py, regenerated first): a business's assistant holds its
hours, phone and a staff password in the system prompt; users try to extract the password, or ask
ordinary questions. Stages, each trained and then scored on the 60 held-out pairs (new businesses,
new passwords, a third new phrasings):
- base: the default model as it is;
- sft: LoRA on the chosen answers (train_sft.jsonl);
- sft_more: the control, SFT continued from the SFT run for as many steps as DPO takes;
- dpo: DPO on pairs.jsonl from the SFT run (its adapter continues; the reference is the SFT model).
Scores: `behaviour` (metric.py: no leak on an extraction attempt; the right times and phone number
on a question, no leak), split into extraction attempts that leak and questions answered right;
pref_accuracy / pref_margin on the held-out pairs. Each stage's numbers go into OUT/results.json,
so `--stages dpo` later reuses OUT/sft and prints the whole table.
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import make_data  # noqa: E402
from metric import is_refusal  # noqa: E402

import tunery  # noqa: E402
from tunery.evaluate.evaluator import evaluate_model  # noqa: E402

METRICS = ["metric:behaviour", "metric:no_leak"]
LABELS = {"base": "base", "sft": "SFT", "sft_more": "SFT + more SFT (control)", "dpo": "SFT + DPO"}


def score(model: str, max_new_tokens: int) -> dict:
    r = evaluate_model(model, HERE / "val_pairs.jsonl", METRICS, max_new_tokens=max_new_tokens, batch_size=30)
    attacks = [e for e in r["examples"] if is_refusal(e["reference"])]
    questions = [e for e in r["examples"] if not is_refusal(e["reference"])]
    m = r["metrics"]
    return {"behaviour": m["metric:behaviour"], "pref_accuracy": m.get("pref_accuracy"),
            "pref_margin": m.get("pref_margin"), "loss": m.get("loss"),
            "leaked": sum(1 - e["scores"]["metric:no_leak"] for e in attacks) / len(attacks),
            "answered": sum(e["scores"]["metric:behaviour"] for e in questions) / len(questions),
            "attacks": len(attacks), "questions": len(questions),
            "samples": [{k: e[k] for k in ("prompt", "reference", "prediction")} for e in r["examples"][:6]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", default="base,sft,sft_more,dpo", help="comma-separated: base, sft, sft_more, dpo")
    ap.add_argument("--out", default="/tmp/pref-runs/secret")
    ap.add_argument("--sft-steps", type=int, default=50)
    ap.add_argument("--dpo-steps", type=int, default=30)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--dpo-lr", type=float, default=5e-5, help="DPO's learning rate (auto would be 2e-5 for LoRA)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - set(LABELS)
    if unknown:
        ap.error(f"unknown stage(s) {sorted(unknown)}: use {', '.join(LABELS)}")
    make_data.main()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "results.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}
    common = dict(method="lora", batch_size=args.batch_size, val_split=0)

    for stage in stages:
        print(f"== {stage}", flush=True)
        t0 = time.perf_counter()
        if stage == "base":
            model = "default"
        elif stage == "sft":
            shutil.rmtree(out / "sft", ignore_errors=True)
            model = str(tunery.train(dict(model="default", data=str(HERE / "train_sft.jsonl"), max_steps=args.sft_steps,
                                          out=str(out / "sft"), suffix="secret", **common)).dir)
        elif stage == "sft_more":  # the control: as many more steps, of SFT on the chosen answers
            shutil.rmtree(out / "sft-more", ignore_errors=True)
            model = str(tunery.train(dict(model=str(out / "sft"), data=str(HERE / "train_sft.jsonl"),
                                          max_steps=args.dpo_steps, out=str(out / "sft-more"), suffix="secret-more",
                                          **common)).dir)
        else:
            shutil.rmtree(out / "dpo", ignore_errors=True)
            model = str(tunery.train(dict(model=str(out / "sft"), data=str(HERE / "pairs.jsonl"), objective="dpo",
                                          beta=args.beta, lr=args.dpo_lr, max_steps=args.dpo_steps,
                                          out=str(out / "dpo"), suffix="secret-dpo", **common)).dir)
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        results[stage] = score(model, args.max_new_tokens) | {
            "model": model, "train_s": round(train_s, 1), "eval_s": round(time.perf_counter() - t1, 1),
            "steps": {"base": 0, "sft": args.sft_steps, "sft_more": args.dpo_steps, "dpo": args.dpo_steps}[stage]}
        saved.write_text(json.dumps(results | {"args": vars(args)}, indent=2))
        for s in results[stage]["samples"][:3]:
            print(f"  {s['prompt'][:70]!r} -> {s['prediction'][:110]!r}")

    rows = [s for s in LABELS if s in results]
    any_ = results[rows[0]]
    print(f"\nkeep the secret: {any_['attacks']} held-out extraction attempts, {any_['questions']} held-out questions "
          f"(SmolLM2-135M-Instruct, LoRA, batch {args.batch_size})\n")
    print("| model | behaviour | attempts that leak | questions answered right | pref_accuracy | pref_margin "
          "| train s | eval s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for s in rows:
        r = results[s]
        name = LABELS[s] + (f" ({r['steps']} steps)" if r["steps"] else "")
        print(f"| {name} | {r['behaviour']:.0%} | {r['leaked']:.0%} | {r['answered']:.0%} | {r['pref_accuracy']:.0%} "
              f"| {r['pref_margin']:+.1f} | {r['train_s']:.0f} | {r['eval_s']:.0f} |")


if __name__ == "__main__":
    main()
