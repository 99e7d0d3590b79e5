"""A small knowledge task: the fares of a fictional railway, in documents that change.

    python examples/knowledge/make_data.py      # writes docs_v1/, docs_v2/, train.jsonl, test.jsonl, test_v2.jsonl

Each of 24 stations has one page (docs_vN/STATION.md) with its fare from the hub, its platform and
its opening hour, in prose. Questions ask for one fact and want a strict answer:
`{"station": ..., "fact": ..., "value": ...}`. train.jsonl and test.jsonl ask about the same facts
in different words (a fine-tune can memorise them); docs_v2 changes a third of the fares, and
test_v2.jsonl holds the new truth for the questions about them (no retraining).
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
STATIONS = ["Alder", "Birchmoor", "Calder", "Dunmore", "Elmstead", "Fernhill", "Glenrock", "Harwick", "Ivybridge",
            "Juniper", "Kestrel", "Larkfield", "Millbrook", "Northwold", "Oakham", "Pinecrest", "Quarry Hill",
            "Ravensholt", "Stonebridge", "Thornbury", "Umberleigh", "Valewood", "Westmere", "Yarrow"]
ASK = {
    "fare": (["How much is a ticket from Central to {s}?", "What does the trip to {s} cost?"],
             ["What is the fare to {s}?", "How much do I pay to ride to {s}?"]),
    "platform": (["Which platform do trains to {s} leave from?", "Where do I board for {s}?"],
                 ["What platform serves {s}?", "From which platform is the train to {s}?"]),
}


def facts(seed: int) -> dict:
    rng = random.Random(seed)
    return {s: {"fare": f"{rng.randint(4, 39)} EUR", "platform": str(rng.randint(1, 12)),
                "opens": f"{rng.randint(5, 7)}:{rng.choice(['00', '15', '30', '45'])}"} for s in STATIONS}


def page(s: str, f: dict) -> str:
    return (f"# {s} station\n\n{s} is on the Nordlicht line. Trains to {s} leave Central from platform "
            f"{f['platform']}.\n\n## Fares\n\nA single ticket from Central to {s} costs {f['fare']}. Children "
            f"under six travel free.\n\n## Opening hours\n\nThe ticket office at {s} opens at {f['opens']} on weekdays.\n")


def row(question: str, s: str, fact: str, value: str) -> dict:
    answer = json.dumps({"station": s, "fact": fact, "value": value})
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def main() -> None:
    v1 = facts(1)
    v2 = {s: dict(f) for s, f in v1.items()}
    rng = random.Random(2)
    changed = sorted(rng.sample(STATIONS, len(STATIONS) // 3))
    for s in changed:  # new fares in the second edition of the documents
        v2[s]["fare"] = f"{int(v1[s]['fare'].split()[0]) + rng.randint(3, 9)} EUR"
    for version, f in (("docs_v1", v1), ("docs_v2", v2)):
        folder = HERE / version
        folder.mkdir(exist_ok=True)
        for s in STATIONS:
            (folder / f"{s.lower().replace(' ', '-')}.md").write_text(page(s, f[s]))
    train, test, test_v2 = [], [], []
    for s in STATIONS:
        for fact, (train_q, test_q) in ASK.items():
            train += [row(q.format(s=s), s, fact, v1[s][fact]) for q in train_q]
            test += [row(q.format(s=s), s, fact, v1[s][fact]) for q in test_q[:1]]
            test_v2 += [row(q.format(s=s), s, fact, v2[s][fact]) for q in test_q[:1]]
    for name, rows in (("train.jsonl", train), ("test.jsonl", test), ("test_v2.jsonl", test_v2)):
        (HERE / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (HERE / "changed.json").write_text(json.dumps(changed))
    print(f"{len(STATIONS)} pages per edition, {len(changed)} fares changed; {len(train)} train, {len(test)} test questions")


if __name__ == "__main__":
    main()
