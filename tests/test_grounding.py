"""Retrieval in training, the data doctor, eval/compare and serving, on a tiny model and a tiny
corpus: one prompt layout everywhere, RAFT distractors, the hit rate, citations, lineage."""

import json

import pytest
from fastapi.testclient import TestClient

from clirun import tunery_cli
from conftest import write_jsonl
from tunery.data.types import Conversation
from tunery.retrieval import Index, build_index, grounding_for, query_of, with_context
from tunery.retrieval.grounding import Grounding, holds_answer

COLORS = {"Alder": "red", "Birch": "blue", "Cedar": "green", "Dunmore": "gold"}


@pytest.fixture()
def index(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for town, color in COLORS.items():
        (docs / f"{town.lower()}.md").write_text(f"# {town}\n\nThe trains of {town} are painted {color}.\n")
    build_index([docs], tmp_path / "index", name="towns")
    return tmp_path / "index"


def rows():
    return [{"messages": [{"role": "user", "content": f"What color are the trains of {town}?"},
                          {"role": "assistant", "content": color}]} for town, color in COLORS.items()] * 4


def test_one_layout_for_training_eval_and_serving(index):
    idx = Index.open(index)
    conv = Conversation(messages=rows()[0]["messages"], weights=[None, None], line=1)
    grounded, warning = Grounding(idx, k=2)(conv)
    hits = idx.search("What color are the trains of Alder?", k=2)
    asked = with_context([{"role": "user", "content": "What color are the trains of Alder?"}], hits)
    assert grounded.messages[0] == asked[0] and grounded.messages[1] == conv.messages[1]  # the answer is untouched
    assert warning is None and "Context:\n[1] (" in asked[0]["content"] and asked[0]["content"].endswith(
        "Question: What color are the trains of Alder?")
    assert query_of(asked) == asked[0]["content"]


def test_distractors_hold_no_answer_and_are_stable(index):
    idx = Index.open(index)
    g = Grounding(idx, k=1, distractors=0.5, seed=3)
    lines = [n for n in range(1, 41) if g.is_distractor(n)]
    assert 10 < len(lines) < 30 and lines == [n for n in range(1, 41) if Grounding(idx, distractors=0.5, seed=3).is_distractor(n)]
    conv = Conversation(messages=rows()[0]["messages"], weights=[None, None], line=lines[0])
    grounded, _ = g(conv)
    assert "red" not in grounded.messages[0]["content"].split("Question:")[0]
    unknown = Grounding(idx, k=1, distractors=0.999, unknown="I don't know.")
    assert unknown(conv)[0].messages[1]["content"] == "I don't know."


def test_a_json_answer_is_found_by_its_values():
    assert holds_answer("A ticket to Alder costs 12 EUR.", json.dumps({"station": "Alder", "value": "12 EUR"}))
    assert not holds_answer("A ticket to Alder costs 14 EUR.", json.dumps({"station": "Alder", "value": "12 EUR"}))


def test_the_doctor_reports_the_hit_rate_before_any_compute(index, tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", rows()[:4] + [{"messages": [
        {"role": "user", "content": "What color are the trains of Zed?"}, {"role": "assistant", "content": "purple"}]}])
    out = tunery_cli("data", "check", data, "--model", tiny_model, "--retrieval", "towns", "--retrieval-k", "1", "--json")
    report = json.loads(out.stdout)
    assert report["retrieval"]["hit_rate"] == 0.8 and report["retrieval"]["checked"] == 5
    assert [w["line"] for w in report["warnings"] if w["code"] == "retrieval_miss"] == [5]


def test_a_model_trained_with_retrieval_records_its_index_and_serves_with_it(index, tiny_model, tmp_path):
    from tunery.serve.app import create_app
    from tunery.serve.catalog import Catalog
    from tunery.training import train

    data = write_jsonl(tmp_path / "d.jsonl", rows())
    run = train(dict(model=str(tiny_model), data=str(data), out=str(tmp_path / "run"), max_steps=2, batch_size=4,
                     val_split=0, retrieval="towns", retrieval_k=2, retrieval_distractors=0.25), progress=False)
    rec = run.info.data.retrieval
    idx = Index.open(index)
    assert rec["fingerprint"] == idx.fingerprint and rec["documents"] == idx.documents() and rec["k"] == 2
    assert rec["layout"] == "context-v1" and 0 < rec["distractors"] < 16 and rec["hit_rate"] == 1.0
    assert run.config["retrieval"] == "towns" and run.config["retrieval_k"] == 2
    with TestClient(create_app(jobs_worker=False, catalog=Catalog({"tiny": str(tiny_model)}))) as api:
        ask = {"messages": [{"role": "user", "content": "What color are the trains of Birch?"}], "max_tokens": 3}
        r = api.post("/v1/chat/completions", json={"model": run.info.name} | ask).json()  # its recorded index
        assert r["tunery"]["citations"][0]["source"].endswith("birch.md") and len(r["tunery"]["citations"]) == 2
        r = api.post("/v1/chat/completions", json={"model": "tiny", "tunery": {"retrieval": {"index": "towns", "k": 1}}}
                     | ask).json()
        assert [c["source"].rsplit("/", 1)[-1] for c in r["tunery"]["citations"]] == ["birch.md"]
        for bad in ({"index": str(index)}, {"index": "nope"}, {"index": "towns", "k": 99}):
            r = api.post("/v1/chat/completions", json={"model": "tiny", "tunery": {"retrieval": bad}} | ask)
            assert r.status_code in (400, 404) and r.json()["error"]["param"].startswith("tunery.retrieval"), r.text
        assert "tunery" not in api.post("/v1/chat/completions", json={"model": "tiny"} | ask).json()


def test_eval_and_compare_with_retrieval(index, tiny_model, tmp_path):
    from tunery.evaluate.compare import compare
    from tunery.evaluate.evaluator import evaluate_model

    test = write_jsonl(tmp_path / "t.jsonl", [r | {"source": f"{town.lower()}.md"} for r, town in zip(rows(), COLORS)])
    result = evaluate_model(str(tiny_model), test, ["exact"], max_new_tokens=3, retrieval="towns", retrieval_k=1)
    assert result["retrieval"]["answer_in_context"] == 1.0 and result["retrieval"]["k"] == 1
    assert result["retrieval"]["recall_at_k"] == 1.0 and result["retrieval"]["with_source"] == 4
    assert "Context:" in result["examples"][0]["prompt"] or result["prompt_tokens_per_request"] > 20
    cmp = compare(str(tiny_model), str(tiny_model), test, metrics=["exact"], few_shot=0, max_new_tokens=3,
                  retrieval="towns", retrieval_k=1)
    assert set(cmp["contestants"]) == {"base", "prompt_only", "base_rag", "tuned", "tuned_rag"}
    assert cmp["contestants"]["base_rag"]["prompt_tokens_per_request"] > cmp["contestants"]["base"]["prompt_tokens_per_request"]
    assert grounding_for(type("C", (), {"retrieval": None})()) is None


def test_index_rm_unregisters_and_deletes_only_an_index_folder(index, tmp_path):
    out = tunery_cli("index", "rm", "towns", "--delete", "--yes")
    assert out.returncode == 0, out.stderr
    assert not index.exists() and "towns" not in tunery_cli("index", "list", "--json").stdout
    docs = tmp_path / "other"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nSome text.\n")
    build_index([docs], tmp_path / "ix2", name="ix2")
    (tmp_path / "ix2" / "notes.txt").write_text("mine")
    out = tunery_cli("index", "rm", "ix2", "--delete", "--yes")
    assert out.returncode != 0 and "notes.txt" in out.stderr and (tmp_path / "ix2" / "notes.txt").exists()
    assert tunery_cli("index", "rm", "nope", "--yes").returncode != 0
