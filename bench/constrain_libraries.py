"""Which constrained-decoding library for tunery: llguidance, xgrammar and outlines-core side by side
on CPU, with the default model's tokenizer (SmolLM2, 49,152 tokens).

    python bench/constrain_libraries.py [--quick] [--model default] [--batch 16] [--rounds 3]

Each library that imports is measured (xgrammar and outlines-core are not tunery dependencies:
`pip install --target DIR --no-deps xgrammar outlines-core apache-tvm-ffi` and put DIR on PYTHONPATH
to include them):
  - tokenizer: building the library's view of the vocabulary (once per tokenizer);
  - compile: a new grammar to its first token mask (a JSON schema of an extraction record, a choice
    of 60 labels, a regex);
  - mask: computing the next-token mask and consuming the token, over a valid answer, per token,
    for one row and for `--batch` rows (each with its own matcher, filled in one call where the
    library has a batch API).
Prints one JSON object per line (`--json` is accepted for the harness; the output is JSON either way).
"""

import argparse
import json
import time

SCHEMA = {"type": "object", "additionalProperties": False,
          "required": ["name", "age", "city", "job", "email", "tags"],
          "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 130},
                         "city": {"type": "string"}, "job": {"type": "string"},
                         "email": {"type": "string", "pattern": "^[a-z.]+@[a-z]+\\.[a-z]{2,3}$"},
                         "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4}}}
ANSWER_JSON = ('{"name": "Ada Novak", "age": 36, "city": "Oslo", "job": "pilot", "email": "ada.novak@example.com", '
               '"tags": ["aviation", "norway"]}')
LABELS = [f"{verb}_{noun}" for verb in ("check", "change", "cancel", "report", "request", "activate")
          for noun in ("card", "pin", "transfer", "balance", "address", "limit", "statement", "loan", "fee", "account")]
ANSWER_LABEL = "report_statement"
REGEX = r"[0-9]{4}-[0-9]{2}-[0-9]{2} (low|medium|high)"
ANSWER_REGEX = "2024-05-17 medium"
FLAGS = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
CASES = {"json_schema": ANSWER_JSON, "choices": ANSWER_LABEL, "regex": ANSWER_REGEX}


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# -- llguidance ------------------------------------------------------------------------------------
class LLGuidance:
    name = "llguidance"

    def __init__(self, tokenizer, stop_id):
        import llguidance
        import llguidance.hf

        self.ll = llguidance
        self.tok = llguidance.hf.from_tokenizer(tokenizer, eos_token=stop_id)
        self.executor = llguidance.LLExecutor()

    def compile(self, kind, salt):
        M = self.ll.LLMatcher
        if kind == "json_schema":
            g = M.grammar_from_json_schema(SCHEMA | {"description": salt},
                                           overrides={"whitespace_flexible": False, "item_separator": ", ",
                                                      "key_separator": ": "})
        elif kind == "choices":
            g = M.grammar_from_lark("start: " + " | ".join(json.dumps(x + salt[:0]) for x in LABELS))
        else:
            g = M.grammar_from_regex(REGEX)
        m = M(self.tok, g, log_level=0)
        assert not m.is_error(), m.get_error()
        return m

    def fill(self, matchers, bitmask):
        import llguidance.torch as lt

        if len(matchers) == 1:
            lt.fill_next_token_bitmask(matchers[0], bitmask, 0)
        else:
            lt.fill_next_token_bitmask_par(self.executor, [(m, i) for i, m in enumerate(matchers)], bitmask)

    def accept(self, m, token):
        assert m.consume_token(token), m.get_error()


# -- xgrammar --------------------------------------------------------------------------------------
class XGrammar:
    name = "xgrammar"

    def __init__(self, tokenizer, stop_id):
        import xgrammar as xgr

        self.xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, stop_token_ids=[stop_id])
        self.compiler = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=False)
        self.batch = xgr.BatchGrammarMatcher(max_threads=2)

    def compile(self, kind, salt):
        if kind == "json_schema":
            g = self.compiler.compile_json_schema(json.dumps(SCHEMA | {"description": salt}), any_whitespace=False,
                                                  separators=(", ", ": "))
        elif kind == "choices":
            g = self.compiler.compile_grammar("root ::= " + " | ".join(json.dumps(x) for x in LABELS))
        else:
            g = self.compiler.compile_regex(REGEX)
        return self.xgr.GrammarMatcher(g)

    def fill(self, matchers, bitmask):
        if len(matchers) == 1:
            matchers[0].fill_next_token_bitmask(bitmask, 0)
        else:
            self.batch.batch_fill_next_token_bitmask(matchers, bitmask)

    def accept(self, m, token):
        assert m.accept_token(token)


# -- outlines-core ---------------------------------------------------------------------------------
class OutlinesCore:
    name = "outlines-core"

    def __init__(self, tokenizer, stop_id):
        import outlines_core as oc

        self.oc = oc
        # Byte-level BPE: each token's text is bytes spelled through GPT-2's byte-to-unicode table.
        table = _unicode_to_bytes()
        specials = set(tokenizer.all_special_ids)
        words: dict[bytes, list[int]] = {}
        for text, i in tokenizer.get_vocab().items():
            if i not in specials:
                words.setdefault(bytes(table[c] for c in text), []).append(i)
        self.vocab = oc.Vocabulary(stop_id, words)

    def compile(self, kind, salt):
        if kind == "json_schema":
            regex = self.oc.json_schema.build_regex_from_schema(json.dumps(SCHEMA | {"description": salt}), r"[ ]?")
        elif kind == "choices":
            regex = "(" + "|".join(_escape(x) for x in LABELS) + ")"
        else:
            regex = REGEX
        return self.oc.Guide(self.oc.Index(regex, self.vocab))

    def fill(self, matchers, bitmask):
        for i, g in enumerate(matchers):
            row = bitmask[i]
            g.write_mask_into(row.data_ptr(), row.numel(), row.element_size())

    def accept(self, g, token):
        g.advance(token)


def _escape(s):
    import re

    return re.escape(s)


def _unicode_to_bytes():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def measure(lib, tokenizer, vocab, batch, rounds):
    import torch

    out = {}
    for kind, answer in CASES.items():
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        compiles = []
        for r in range(rounds):
            _, s = timed(lambda: lib.fill([lib.compile(kind, f"r{r}")], torch.full((1, (vocab + 31) // 32), -1,
                                                                                 dtype=torch.int32)))
            compiles.append(s)
        per_token = {}
        for rows in (1, batch):
            bitmask = torch.full((rows, (vocab + 31) // 32), -1, dtype=torch.int32)
            walks = []
            for r in range(rounds):  # fresh matchers each walk (first masks included), the best walk
                matchers = [lib.compile(kind, f"b{rows}-{r}-{i}") for i in range(rows)]
                t0 = time.perf_counter()
                for token in ids:
                    lib.fill(matchers, bitmask)
                    assert (bitmask[0, token // 32] >> (token % 32)) & 1, (lib.name, kind, token)
                    for m in matchers:
                        lib.accept(m, token)
                walks.append((time.perf_counter() - t0) / len(ids))
            per_token[rows] = min(walks)
        out[kind] = {"compile_ms": round(1000 * min(compiles), 2), "tokens": len(ids),
                     "mask_us_per_token_1_row": round(1e6 * per_token[1], 1),
                     f"mask_us_per_token_{batch}_rows": round(1e6 * per_token[batch], 1)}
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="default")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="a tiny tokenizer, one round: a smoke run")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    from tunery.data.render import stop_token_ids
    from tunery.data.template import load_template
    from tunery.models import load_tokenizer, resolve_model
    from tunery.models.hardware import cpu_flags

    if args.quick:
        import sys
        import tempfile
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from tiny import build_tokenizer

        args.rounds, args.batch, args.model = 1, 2, "tiny random (quick)"
        tokenizer = build_tokenizer(Path(tempfile.mkdtemp(prefix="struct-")), corpus=[ANSWER_JSON, *LABELS])
    else:
        tokenizer = load_tokenizer(resolve_model(args.model))
    stop = sorted(stop_token_ids(tokenizer, load_template(tokenizer)))[0]
    vocab = len(tokenizer)
    print(json.dumps({"model": args.model, "vocab": vocab, "cpu_flags": sorted(cpu_flags() & FLAGS)}))
    for cls in (LLGuidance, XGrammar, OutlinesCore):
        try:
            lib, seconds = timed(lambda: cls(tokenizer, stop))
        except ImportError as exc:
            print(json.dumps({"library": cls.name, "skipped": str(exc)}))
            continue
        print(json.dumps({"library": cls.name, "tokenizer_s": round(seconds, 3)} | measure(lib, tokenizer, vocab,
                                                                                         args.batch, args.rounds)))


if __name__ == "__main__":
    main()
