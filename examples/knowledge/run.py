"""Fine-tune for the form, retrieve for the facts: the knowledge task end to end, with numbers.

    python examples/knowledge/run.py [--steps 60] [--out runs/knowledge]

1. builds an index of the v1 documents, 2. fine-tunes the default model twice (plain, and with
retrieval: each training question gets its top chunks in the prompt), 3. compares on held-out
questions: base, prompt-only, base + RAG, fine-tune alone, fine-tune + RAG, 4. changes the
documents (a third of the fares), rebuilds the index (only the changed pages), and compares again
against the new truth, without retraining. Prints one table; writes OUT/results.json.
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
SYSTEM = ('Answer with one JSON object {"station": ..., "fact": "fare" or "platform", "value": ...} '
          'and nothing else. Use the context.')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", default="runs/knowledge")
    ap.add_argument("--k", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    import make_data

    import tunery
    from tunery.evaluate.compare import compare
    from tunery.retrieval import build_index

    make_data.main()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    index, docs = out / "index", out / "docs"
    shutil.copytree(HERE / "docs_v1", docs)  # the documents as they are at training time
    t0 = time.perf_counter()
    built = build_index([docs], index, name="nordlicht")
    common = dict(model="default", data=str(HERE / "train.jsonl"), method="lora", max_steps=args.steps, lr=5e-4,
                  batch_size=8, val_split=0)
    plain = tunery.train(dict(common, out=str(out / "plain"), suffix="nordlicht"))
    rag = tunery.train(dict(common, out=str(out / "rag"), suffix="nordlicht-rag", retrieval=str(index),
                            retrieval_k=args.k))
    kw = dict(metrics=["json_exact", "json_valid"], few_shot=2, system=SYSTEM, max_new_tokens=40, batch_size=24,
              train_data=str(HERE / "train.jsonl"), retrieval=str(index), retrieval_k=args.k)
    results = {"index_build": built}
    for edition, test in (("v1", "test.jsonl"), ("v2", "test_v2.jsonl")):
        if edition == "v2":  # the documents change; the index follows (only the changed pages), the fine-tunes stay
            shutil.copytree(HERE / "docs_v2", docs, dirs_exist_ok=True)
            results["index_rebuild"] = build_index([docs], index, name="nordlicht")
        a = compare("default", str(plain.dir), HERE / test, **kw)
        b = compare("default", str(rag.dir), HERE / test, **(kw | {"few_shot": 0}))
        cs = a["contestants"]
        changed = set(json.loads((HERE / "changed.json").read_text()))

        def on_changed(contestant: dict) -> float:  # json_exact on the questions whose fact changed
            rows = [e for e in contestant["examples"] if json.loads(e["reference"])["station"] in changed
                    and json.loads(e["reference"])["fact"] == "fare"]
            return sum(e["scores"]["json_exact"] for e in rows) / max(len(rows), 1)

        for c in (*a["contestants"].values(), b["contestants"]["tuned_rag"]):
            c["changed_facts_json_exact"] = on_changed(c)
        results[edition] = {
            "base": cs["base"], "prompt_only": cs["prompt_only"], "base_rag": cs["base_rag"],
            "fine-tune alone": cs["tuned"], "fine-tune + RAG": b["contestants"]["tuned_rag"],
            "answer_in_context": a["retrieval"]["answer_in_context"], "verdict": b["verdict"]["text"]}
    results["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print("| contestant | v1: JSON exact | v1: valid JSON | v2 (documents changed): JSON exact | "
          "v2: on the 8 changed fares | prompt tokens | latency s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in ("base", "prompt_only", "base_rag", "fine-tune alone", "fine-tune + RAG"):
        v1, v2 = results["v1"][name], results["v2"][name]
        print(f"| {name} | {v1['metrics']['json_exact']:.0%} | {v1['metrics']['json_valid']:.0%} | "
              f"{v2['metrics']['json_exact']:.0%} | {v2['changed_facts_json_exact']:.0%} | "
              f"{v1['prompt_tokens_per_request']:.0f} | {v1['latency_s_per_request']:.3f} |")
    r = results["index_rebuild"]
    print(f"answer in the top {args.k} chunks: v1 {results['v1']['answer_in_context']:.0%}, "
          f"v2 {results['v2']['answer_in_context']:.0%}; index rebuild after the change: {r['updated']} pages "
          f"re-embedded, {r['unchanged']} unchanged, {r['seconds']} s")
    print(f"verdict (v1): {results['v1']['verdict']}")


if __name__ == "__main__":
    main()
