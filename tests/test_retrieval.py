"""Retrieval indexes: chunking, reading documents, incremental and atomic builds, BM25 / dense /
hybrid search, hostile queries, one-line errors, the registry and the `tunery index` commands.
The real wordllama embedder runs here (it loads in a tenth of a second, offline)."""

import hashlib
import json
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from clirun import one_line_error, tunery_cli
from tunery.errors import ConfigError, DataError, NotFound, TuneryError
from tunery.retrieval import Hit, Index, build_index
from tunery.retrieval import embedders
from tunery.retrieval.chunking import chunk_text
from tunery.retrieval.documents import html_text, read_texts
from tunery.retrieval.index import RRF_K, fingerprint, rrf
from tunery.retrieval.store import fts_query

_WORDS = re.compile(r"\w+|[^\w\s]")


def words(text):
    return [m.span() for m in _WORDS.finditer(text)]


CORPUS = {
    "cats.md": "# Cats\n\nCats are small domesticated carnivorous mammals. A cat purrs, sleeps most of the day "
               "and hunts mice at night.\n\n## Kittens\n\nKittens open their eyes after about ten days.\n",
    "rust.md": "# Rust\n\nRust is a systems programming language. Ownership and borrowing make memory safety "
               "checkable by the compiler, without a garbage collector.\n",
    "plants.txt": "Photosynthesis turns sunlight, water and carbon dioxide into sugar. Chlorophyll in the "
                  "leaves absorbs red and blue light.\n",
    "volcano.html": "<html><head><title>Volcanoes</title><style>p { color: red }</style></head><body>"
                    "<h2>Eruptions</h2><p>Molten lava and ash erupt from the crater of a volcano.</p>"
                    "<script>var secret = 'dropped';</script></body></html>",
    "trains.jsonl": json.dumps({"id": "t1", "text": "High-speed trains run on dedicated tracks at 300 km/h.",
                                "lang": "en"}) + "\n"
                    + json.dumps({"text": "A steam locomotive burns coal to boil water.", "source": "wiki/steam"}) + "\n",
}


def make_corpus(folder: Path, files=CORPUS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


@pytest.fixture()
def corpus(tmp_path):
    return make_corpus(tmp_path / "docs")


@pytest.fixture()
def built(corpus, tmp_path):
    report = build_index([corpus], tmp_path / "idx", chunk_tokens=64, overlap=8)
    return tmp_path / "idx", report


def one_line(exc: pytest.ExceptionInfo) -> str:
    assert isinstance(exc.value, TuneryError) and "\n" not in str(exc.value)
    return str(exc.value)


# -- chunking ----------------------------------------------------------------------------------------

LONG = " ".join(f"word{i}." if i % 9 == 8 else f"word{i}" for i in range(300))
DOC = f"""Preface before any heading.

# Guide
## Install

Run pip install tunery. It takes a minute.

Second paragraph of the install section.

```
code line

# a comment, not a heading
```

# Reference

{LONG}

# Last
"""


def test_chunks_keep_headings_respect_the_budget_and_overlap():
    chunks = chunk_text(DOC, words, 40, 6)
    for c in chunks:
        assert len(words(c.text)) <= 40
        body = DOC[c.start:c.end]
        assert c.text.endswith(body) and c.line == DOC.count("\n", 0, c.start) + 1
    assert chunks[0].text == "Preface before any heading." and chunks[0].line == 1
    # consecutive headings are one heading, kept with the first chunk of their section
    assert chunks[1].text.startswith("# Guide\n## Install\n\nRun pip install") and chunks[1].start == DOC.index("# Guide")
    # a fenced block is one paragraph, and a '#' line inside it is no heading
    fence = next(c for c in chunks if "code line" in c.text)
    assert "# a comment, not a heading" in fence.text and fence.text.startswith("# Guide\n## Install\n\n")
    reference = [c for c in chunks if c.text.startswith("# Reference")]
    assert len(reference) > 5
    for a, b in zip(reference, reference[1:]):  # each continuation repeats the heading and overlaps
        assert b.text.startswith("# Reference\n\n") and a.start < b.start < a.end
        assert 0 < len(words(DOC[b.start:a.end])) <= 6
    assert chunks[-1].text == "# Last"  # a heading with nothing under it is still indexed
    covered = " ".join(c.text for c in chunks)
    assert all(w in covered for w in re.findall(r"\w+", DOC))


def test_chunks_with_the_real_tokenizer_fit_the_budget():
    model = embedders.get_embedder("wordllama")
    for budget, overlap in ((32, 0), (64, 16)):
        chunks = chunk_text(DOC + "\n\n" + "x" * 3000, model.tokens, budget, overlap)
        assert all(len(model.tokens(c.text)) <= budget for c in chunks)
        assert "".join(c.text for c in chunks).count("x") >= 3000  # a word longer than the budget is cut


def test_plain_text_has_no_headings():
    text = "# not a heading in .txt\n\n" + " ".join(["second"] * 30)
    assert [c.text for c in chunk_text(text, words, 50, 0, markdown=False)] == [text]  # paragraphs packed to the budget
    chunks = chunk_text(text, words, 20, 0, markdown=False)
    assert chunks[0].text == "# not a heading in .txt" and not chunks[1].text.startswith("#")


# -- reading documents -----------------------------------------------------------------------------

def test_html_drops_scripts_and_keeps_headings():
    text = html_text(CORPUS["volcano.html"])
    assert text == "# Volcanoes\n\n## Eruptions\n\nMolten lava and ash erupt from the crater of a volcano."


def test_jsonl_rows_keep_id_source_and_metadata(corpus):
    texts = read_texts(corpus / "trains.jsonl")
    assert [(t.source, t.meta) for t in texts] == [(f"{corpus / 'trains.jsonl'}#t1", {"id": "t1", "lang": "en"}),
                                                   ("wiki/steam", {"id": "2"})]


def write_pdf(path: Path, text: str) -> Path:
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = b"%PDF-1.4\n", []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (n, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1) + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(out)
    return path


def test_pdf_text_is_indexed(tmp_path):
    pytest.importorskip("pypdf")
    pdf = write_pdf(tmp_path / "glaciers.pdf", "Glaciers carve valleys into mountains")
    build_index([pdf], tmp_path / "idx")
    [hit] = Index.open(tmp_path / "idx").search("glaciers valleys", k=1, mode="bm25")
    assert hit.source == str(pdf.resolve()) and "Glaciers carve valleys" in hit.text


# -- build and search --------------------------------------------------------------------------------

def test_build_reports_and_searches_by_each_mode(built, corpus):
    path, report = built
    assert {k: report[k] for k in ("documents", "added", "updated", "removed", "unchanged", "skipped")} == \
        {"documents": 5, "added": 5, "updated": 0, "removed": 0, "unchanged": 0, "skipped": 0}
    assert report["chunks"] == report["embedded"] >= 6 and report["chunks_per_s"] > 0 and report["seconds"] > 0
    ix = Index.open(path)
    top = lambda q, mode: ix.search(q, k=3, mode=mode)[0]  # noqa: E731
    assert Path(top("chlorophyll photosynthesis", "bm25").source).name == "plants.txt"
    assert Path(top("borrowing ownership compiler", "bm25").source).name == "rust.md"
    assert top("steam locomotive", "bm25").source == "wiki/steam"
    assert Path(top("volcano lava eruption", "dense").source).name == "volcano.html"
    assert Path(top("programming language memory", "dense").source).name == "rust.md"
    hit = top("kittens eyes", "hybrid")
    assert Path(hit.source).name == "cats.md" and hit.position == 1
    assert hit.text == "# Cats\n## Kittens\n\nKittens open their eyes after about ten days."  # with the heading above
    assert re.fullmatch(r"[0-9a-f]{12}-1", hit.id)
    assert hit.to_dict() == {"id": hit.id, "source": hit.source, "score": hit.score, "text": hit.text, "position": 1}
    assert "secret" not in " ".join(h.text for h in ix.search("secret dropped var", k=20, mode="bm25"))
    assert ix.chunk(hit.id)["line"] == 5
    assert ix.chunk(top("trains", "bm25").id)["meta"] == {"id": "t1", "lang": "en"}


def test_hybrid_is_reciprocal_rank_fusion_of_both_lists(built):
    assert [row for row, _ in rrf([[1, 2, 3], [3, 1, 4]])] == [1, 3, 2, 4]
    assert rrf([[7], [7]])[0][1] == pytest.approx(2 / (RRF_K + 1))
    ix = Index.open(built[0])
    q = "cats hunt mice at night"
    bm25 = [h.id for h in ix.search(q, k=50, mode="bm25")]
    dense = [h.id for h in ix.search(q, k=50, mode="dense")]
    expect = {}
    for ranked in (bm25, dense):
        for rank, chunk_id in enumerate(ranked, 1):
            expect[chunk_id] = expect.get(chunk_id, 0) + 1 / (RRF_K + rank)
    hybrid = ix.search(q, k=4)
    assert [h.id for h in hybrid] == sorted(expect, key=lambda i: -expect[i])[:4]
    assert [h.score for h in hybrid] == pytest.approx(sorted(expect.values(), reverse=True)[:4])


HOSTILE = ['"', '""', "'", 'cats" OR "', "AND", "OR NOT", "NEAR(cats rust, 2)", "cats AND", "title:cats", "col:",
           "cats*", "*", "^cats", "-rust", "(((", ")", "{a b}", "a + b", "NOT rust", "\\", ";DROP TABLE chunks;--",
           "%", "_", "é", "日本語", "🐈", "x" * 5000, " ".join(["or"] * 500), "\x00cats", "? ! .", "NEAR"]


@pytest.mark.parametrize("mode", ["bm25", "hybrid"])
def test_hostile_queries_never_reach_fts_syntax(built, mode):
    ix = Index.open(built[0])
    for q in HOSTILE:
        assert isinstance(ix.search(q, k=3, mode=mode), list), q
    assert fts_query('cats" AND NEAR(x: *') == '"cats" OR "and" OR "near" OR "x"'
    assert fts_query("?!") is None
    assert Path(ix.search('"cats" AND mice:', k=1, mode="bm25")[0].source).name == "cats.md"


def test_search_options_are_checked(built):
    ix = Index.open(built[0])
    for kwargs in ({"mode": "semantic"}, {"k": 0}, {"query": "  "}):
        with pytest.raises(ConfigError) as exc:
            ix.search(**{"query": "cats", **kwargs})
        one_line(exc)


# -- incremental, removal, atomicity --------------------------------------------------------------------

class Counting:
    def __init__(self, monkeypatch):
        self.texts = []
        model = embedders.get_embedder("wordllama")
        real = model.embed
        monkeypatch.setattr(model, "embed", lambda texts: (self.texts.extend(texts), real(texts))[1])


def test_rebuild_embeds_only_changed_documents_and_drops_removed_ones(built, corpus, monkeypatch):
    path, _ = built
    ix = Index.open(path)
    kept_id = ix.search("photosynthesis", k=1, mode="bm25")[0].id
    docs_before, fp_before = ix.documents(), ix.fingerprint
    assert docs_before == {str(p.resolve()): hashlib.sha256(p.read_bytes()).hexdigest() for p in corpus.iterdir()}
    assert fp_before == fingerprint(docs_before, "wordllama")

    counting = Counting(monkeypatch)
    written = (path / "index.sqlite").stat().st_ino
    same = build_index([corpus], path, chunk_tokens=64, overlap=8)
    assert (same["unchanged"], same["embedded"], same["fingerprint"]) == (5, 0, fp_before) and not counting.texts
    assert (path / "index.sqlite").stat().st_ino == written  # nothing changed: nothing written

    (corpus / "rust.md").write_text("# Rust\n\nRust has zero-cost abstractions and fearless concurrency.\n")
    (corpus / "cats.md").unlink()
    (corpus / "new.md").write_text("# Bees\n\nBees make honey from nectar.\n")
    report = build_index([corpus], path, chunk_tokens=64, overlap=8)
    assert {k: report[k] for k in ("documents", "added", "updated", "removed", "unchanged")} == \
        {"documents": 5, "added": 1, "updated": 1, "removed": 1, "unchanged": 3}
    assert sorted(counting.texts) == ["# Bees\n\nBees make honey from nectar.",
                                      "# Rust\n\nRust has zero-cost abstractions and fearless concurrency."]
    ix2 = Index.open(path)
    assert str((corpus / "cats.md").resolve()) not in ix2.documents()
    assert not ix2.search("kittens", k=5, mode="bm25")
    assert Path(ix2.search("fearless concurrency", k=1)[0].source).name == "rust.md"
    assert Path(ix2.search("honey nectar", k=1)[0].source).name == "new.md"
    assert ix2.search("photosynthesis", k=1, mode="bm25")[0].id == kept_id  # an unchanged document keeps its ids
    assert ix2.fingerprint != fp_before and ix.search("kittens", k=1, mode="bm25")  # an open handle still reads the old


def test_an_index_inside_its_sources_is_not_indexed(corpus):
    for _ in range(2):
        report = build_index([corpus], corpus / "kb")
        assert (report["documents"], report["skipped"]) == (5, 0)


def test_changing_the_chunking_rechunks_everything(built, corpus):
    report = build_index([corpus], built[0], chunk_tokens=32, overlap=0)
    assert (report["updated"], report["unchanged"], report["embedded"]) == (5, 0, report["chunks"])
    assert Index.open(built[0]).info()["chunk_tokens"] == 32


def test_a_failed_build_leaves_the_old_index_readable(built, corpus, monkeypatch):
    path, _ = built
    before = Index.open(path).fingerprint
    (corpus / "rust.md").write_text("# Rust\n\nchanged\n")
    model = embedders.get_embedder("wordllama")

    def boom(texts):
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(model, "embed", boom)
    with pytest.raises(RuntimeError):
        build_index([corpus], path, chunk_tokens=64, overlap=8)
    monkeypatch.undo()

    from tunery.retrieval.store import SqliteStore

    real_create = SqliteStore.create

    def half_written(folder, *args):
        real_create(folder, *args)
        raise OSError("disk full")

    monkeypatch.setattr(SqliteStore, "create", half_written)
    with pytest.raises(OSError):
        build_index([corpus], path, chunk_tokens=64, overlap=8)
    ix = Index.open(path)
    assert ix.fingerprint == before and Path(ix.search("ownership borrowing", k=1)[0].source).name == "rust.md"
    assert sorted(p.name for p in path.parent.iterdir()) == ["docs", "home", "idx"]  # no temp folder left


# -- errors ------------------------------------------------------------------------------------------

def test_one_line_errors_name_the_file(tmp_path, corpus, built):
    cases = []
    (tmp_path / "empty.md").write_text("  \n\n")
    cases.append(([tmp_path / "empty.md"], DataError, "empty.md: no text"))
    (corpus / "blank.txt").write_text("")
    cases.append(([corpus], DataError, "blank.txt: no text"))
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    cases.append(([tmp_path / "image.png"], DataError, "image.png: unsupported file type '.png'"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    cases.append(([tmp_path / "latin1.txt"], DataError, "latin1.txt: not UTF-8"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"title": "no text"}\n')
    cases.append(([tmp_path / "bad.jsonl"], DataError, 'bad.jsonl:2: "text" must be a non-empty string'))
    cases.append(([tmp_path / "nope"], DataError, "nope: no such file or folder"))
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(b"")
    cases.append(([tmp_path / "pics"], DataError, "no documents to index"))
    for sources, kind, message in cases:
        with pytest.raises(kind) as exc:
            build_index(sources, tmp_path / "other")
        assert message in one_line(exc), (message, str(exc.value))
    (corpus / "blank.txt").unlink()
    assert not (tmp_path / "other").exists()

    with pytest.raises(NotFound) as exc:
        Index.open(tmp_path / "missing-index")
    assert "missing-index" in one_line(exc)
    with pytest.raises(NotFound) as exc:
        Index.open(corpus)
    assert "not a tunery index" in one_line(exc)
    with pytest.raises(DataError) as exc:  # a build never replaces a folder that is not an index
        build_index([corpus / "rust.md"], corpus)
    assert "not a tunery index" in one_line(exc) and (corpus / "cats.md").exists()
    for kwargs, field in (({"embedder": "bert"}, "embedder"), ({"overlap": 40, "chunk_tokens": 64}, "overlap"),
                          ({"chunk_tokens": 4}, "chunk_tokens"), ({"name": "a b"}, "name")):
        with pytest.raises(ConfigError) as exc:
            build_index([corpus], tmp_path / "other", **kwargs)
        assert exc.value.field == field and one_line(exc)


class Fake(embedders.Embedder):
    name, dimensions, detail = "fake", 8, "fake 8"

    def embed(self, texts):
        rng = np.random.default_rng(0)
        return embedders.unit_rows(rng.normal(size=(len(texts), 8)))


def test_an_index_built_with_another_embedder_is_refused(tmp_path, corpus, monkeypatch):
    monkeypatch.setitem(embedders.EMBEDDERS, "fake", Fake)
    try:
        report = build_index([corpus], tmp_path / "fake-idx", embedder="fake")
        assert report["chunks"] > 0 and Index.open(tmp_path / "fake-idx").info()["dimensions"] == 8
        with pytest.raises(ConfigError) as exc:
            build_index([corpus], tmp_path / "fake-idx")
        assert "built with embedder 'fake', not 'wordllama'" in one_line(exc) and "fake-idx" in str(exc.value)
    finally:
        embedders.get_embedder.cache_clear()


# -- the registry ------------------------------------------------------------------------------------

def test_indexes_are_registered_by_name(built, corpus, tmp_path):
    path, report = built
    assert report["name"] == "idx"
    assert Index.open("idx").path == path.resolve()
    build_index([corpus], tmp_path / "kb", name="kb")
    ix = Index.open("kb")
    assert ix.name == "kb" and ix.info()["path"] == str((tmp_path / "kb").resolve())
    with pytest.raises(ConfigError) as exc:  # the name belongs to another folder
        build_index([corpus], tmp_path / "elsewhere", name="kb")
    assert "'kb' is taken by" in one_line(exc)
    from tunery.registry.db import connect
    from tunery.registry.indexes import list_indexes

    with connect() as conn:
        rows = list_indexes(conn)
    assert [(r["name"], r["fingerprint"], r["documents"]) for r in rows] == \
        [("idx", report["fingerprint"], 5), ("kb", ix.fingerprint, 5)]
    shutil.rmtree(tmp_path / "kb")
    with pytest.raises(NotFound) as exc:
        Index.open("kb")
    assert "is gone" in one_line(exc)
    assert build_index([corpus], tmp_path / "elsewhere", name="kb")["name"] == "kb"  # a vanished folder frees its name


def test_the_index_folder_is_one_sqlite_file_and_the_vectors(built):
    path, report = built
    assert sorted(p.name for p in path.iterdir()) == ["index.sqlite", "vectors.npy"]
    vectors = np.load(path / "vectors.npy")
    assert vectors.dtype == np.float32 and vectors.shape == (report["chunks"], 256)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    conn = sqlite3.connect(path / "index.sqlite")
    assert conn.execute("SELECT count(*) FROM chunks").fetchone()[0] == report["chunks"]
    assert conn.execute("SELECT min(row), max(row) FROM chunks").fetchone() == (0, report["chunks"] - 1)


# -- the CLI -----------------------------------------------------------------------------------------

def test_index_commands(corpus, tmp_path):
    home = tmp_path / "home"
    out = tunery_cli("index", "build", corpus, "--out", tmp_path / "cli-idx", "--name", "kb", "--chunk-tokens", "64",
                     "--overlap", "8", "--json", home=home)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["added"] == 5 and report["name"] == "kb"

    out = tunery_cli("index", "search", "kb", "--query", 'kittens" AND NEAR(eyes: *', "-k", "2", "--json", home=home)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)["results"]
    assert len(results) == 2 and set(results[0]) == {"id", "source", "score", "text"}
    assert results[0]["text"].startswith("# Cats\n## Kittens")

    out = tunery_cli("index", "search", tmp_path / "cli-idx", "-q", "[bold]cats[/bold] [red]", "--mode", "bm25", home=home)
    assert out.returncode == 0 and "[bold]cats[/bold] [red]" in out.stdout and "Cats are small" in out.stdout

    out = tunery_cli("index", "info", "kb", "--json", home=home)
    info = json.loads(out.stdout)
    assert {"path", "documents", "chunks", "embedder", "dimensions", "bytes", "created", "fingerprint"} <= set(info)
    assert info["fingerprint"] == report["fingerprint"] and info["bytes"] > 0
    assert "fingerprint" in tunery_cli("index", "info", "kb", home=home).stdout

    listed = json.loads(tunery_cli("index", "list", "--json", home=home).stdout)
    assert [(r["name"], r["missing"]) for r in listed] == [("kb", False)]
    assert "kb" in tunery_cli("index", "list", home=home).stdout

    out = tunery_cli("index", "build", corpus, "--out", tmp_path / "cli-idx", "--name", "kb", "--chunk-tokens", "64",
                     "--overlap", "8", home=home)
    assert out.returncode == 0 and "5 unchanged" in out.stdout

    assert "nope: no such index folder" in one_line_error(tunery_cli("index", "search", "nope", "-q", "x", home=home))
    (tmp_path / "x.png").write_bytes(b"")
    assert "x.png: unsupported file type" in one_line_error(
        tunery_cli("index", "build", tmp_path / "x.png", "--out", tmp_path / "o", home=home))
    assert "no indexes registered" in tunery_cli("index", "list", home=tmp_path / "fresh").stdout


def test_hit_shape():
    assert Hit("a-0", "s", 1.0, "t", 0).to_dict() == {"id": "a-0", "source": "s", "score": 1.0, "text": "t", "position": 0}


def test_chunk_invariants_hold_on_random_documents():
    import random

    rng = random.Random(0)
    vocab = "alpha beta. gamma, delta! café 中文 ``` # ## x\t".split() + ["y" * 40, "", "\t"]
    for _ in range(40):
        lines = [" ".join(rng.choices(vocab, k=rng.randint(0, 40))) for _ in range(rng.randint(0, 30))]
        doc = "\n".join(("#" * rng.randint(1, 3) + " " + line) if rng.random() < 0.2 else line for line in lines)
        budget = rng.choice([16, 40])
        chunks = chunk_text(doc, words, budget, rng.randint(0, budget // 2), markdown=rng.random() < 0.8)
        covered = set()
        for a, b in zip(chunks, chunks[1:]):
            assert a.start < b.start
        for c in chunks:
            assert len(words(c.text)) <= budget and c.text.endswith(doc[c.start:c.end]) and c.end > c.start
            covered.update(range(c.start, c.end))
        assert all(ch.isspace() or i in covered for i, ch in enumerate(doc))
