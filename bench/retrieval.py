"""Retrieval index speed: build (chunks/s), incremental rebuilds, and query latency per mode.

    python bench/retrieval.py [--quick] [--json] [--paragraphs 3000] [--queries 200]

A generated corpus (a fixed seed): markdown files of headed sections, paragraphs of 90-150
words drawn from a common-English vocabulary plus one topic word per section, so queries have
right answers. Timed: a first build, a rebuild with nothing changed, a rebuild with one file
changed, then each query once per mode (the embedder is warm: it loaded during the build);
medians and p95 in milliseconds. Runs in a temporary TUNERY_HOME: nothing is registered.
"""

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

COMMON = """the of and to in is that it for was on are as with his they at be this from have or by one had
not but what all were when we there can an your which their said if do will each about how up out them then
she many some so these would other into has more her two like him see time could no make than first been its
who now people my made over did down only way find use may water long little very after words called just
where most know get through back much before go good new write our used me man too any day same right look
think also around another came come work three word must because does part even place well such here take why
things help put years different away again off went old number great tell men say small every found still
between name should home big give air line set own under read last never us left end along while might next
sound below saw something thought both few those always looked show large often together asked house world
going want school important until form food keep children feet land side without boy once animals life enough
took sometimes four head above kind began almost live page got earth need far hand high year mother light
country father let night following picture being study second eyes soon times story boys since white days
paper hard near sentence better best across during today others however sure means knew try told young miles
sun ways thing whole hear example heard several change answer room sea against top turned learn point city
play toward five using himself usually money seen car morning given trees family later turn move face door
cut done group true half red fish plants living black eat short united run book gave order open ground cold
really table remember tree course front american space inside ago making mark""".split()
TOPICS = """glacier volcano photosynthesis compiler locomotive telescope vaccine harbor orchestra cathedral
satellite bakery mortgage cyclone microscope pottery lighthouse vineyard tornado submarine""".split()


def corpus(folder: Path, paragraphs: int, seed: int = 0) -> list[tuple[str, str]]:
    """Write the corpus; return (query, file) pairs whose answer is known: a topic word and its file."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    per_file, per_section = 50, 5
    answers = []
    for f in range((paragraphs + per_file - 1) // per_file):
        lines = [f"# Document {f}", ""]
        for s in range(per_file // per_section):
            topic = f"{rng.choice(TOPICS)}{f}x{s}"  # unique per section: exactly one right answer
            lines += [f"## Section {s} about {topic}", ""]
            for _ in range(per_section):
                words = rng.choices(COMMON, k=rng.randint(90, 150))
                words.insert(rng.randrange(len(words)), topic)
                lines += [" ".join(words).capitalize() + ".", ""]
            answers.append((f"{topic} {' '.join(rng.choices(COMMON, k=4))}", f"doc{f:04d}.md"))
        (folder / f"doc{f:04d}.md").write_text("\n".join(lines))
    return answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="300 paragraphs, 20 queries: a smoke run")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--paragraphs", type=int, default=3000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--chunk-tokens", type=int, default=200)
    ap.add_argument("--overlap", type=int, default=30)
    args = ap.parse_args()
    if args.quick:
        args.paragraphs, args.queries = 300, 20

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["TUNERY_HOME"] = str(tmp / "home")
        from tunery.retrieval import Index, build_index

        answers = corpus(tmp / "docs", args.paragraphs)
        opts = {"chunk_tokens": args.chunk_tokens, "overlap": args.overlap}
        first = build_index([tmp / "docs"], tmp / "idx", **opts)
        unchanged = build_index([tmp / "docs"], tmp / "idx", **opts)
        changed_file = tmp / "docs" / "doc0000.md"
        changed_file.write_text(changed_file.read_text() + "\nOne more paragraph at the end.\n")
        one_changed = build_index([tmp / "docs"], tmp / "idx", **opts)

        t0 = time.perf_counter()
        ix = Index.open(tmp / "idx")
        open_ms = (time.perf_counter() - t0) * 1000
        queries = (answers * (args.queries // len(answers) + 1))[:args.queries]
        latency, recall = {}, {}
        for mode in ("hybrid", "bm25", "dense"):
            ix.search(queries[0][0], k=5, mode=mode)  # warm: first-query costs (page cache, query embedder)
            times, found = [], 0
            for query, answer in queries:
                t0 = time.perf_counter()
                hits = ix.search(query, k=5, mode=mode)
                times.append((time.perf_counter() - t0) * 1000)
                found += any(Path(h.source).name == answer for h in hits)
            times.sort()
            latency[mode] = {"median_ms": round(statistics.median(times), 2),
                             "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2)}
            recall[mode] = round(found / len(queries), 3)
        info = ix.info()

    report = {
        "paragraphs": args.paragraphs, "documents": first["documents"], "chunks": first["chunks"],
        "chunk_tokens": args.chunk_tokens, "overlap": args.overlap, "embedder": info["embedder_detail"],
        "index_mb": round(info["bytes"] / 2**20, 2),
        "build_s": first["seconds"], "build_chunks_per_s": first["chunks_per_s"],
        "rebuild_unchanged_s": unchanged["seconds"], "rebuild_one_changed_s": one_changed["seconds"],
        "rebuild_one_changed_embedded": one_changed["embedded"], "open_ms": round(open_ms, 1),
        "queries": len(queries), "query_ms": latency, "recall_at_5": recall, "machine": machine(),
    }
    if args.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k:30s} {v}")


def machine() -> str:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return f"{os.cpu_count()}-core {model} ({', '.join(wanted) or 'no avx2'})"


if __name__ == "__main__":
    main()
