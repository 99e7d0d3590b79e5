"""What the bench scripts share: the repository's root, the options of the generation benches, and
a tiny random model for `--quick` smoke runs (tests/tiny.py, the tests' own builder)."""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def generation_options(description: str) -> argparse.ArgumentParser:
    """The options every generation bench takes: a model, held-out prompts, batch, length, rounds."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="a tiny random model: a smoke run")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default=str(ROOT / "examples/contacts/test.jsonl"))
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    return ap


def tiny_model(folder: Path, **shape) -> str:
    """A tiny random model written to `folder` (tests/tiny.py's build_model; `shape`: its options)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import build_model

    return str(build_model(Path(folder), **shape))
