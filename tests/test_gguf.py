"""GGUF exports through llama.cpp's own converter, quantizer and runtime (the `tunery[gguf]` extra):
`make test-gguf`, a lane of its own because the extra builds llama.cpp from source.

One lab per module: the default model imported once, llama.cpp's converter fetched once, a tiny
Llama with the default model's tokenizer (a tokenizer llama.cpp knows) fully fine-tuned until it
answers decisively, and one real LoRA run of the default model."""

import json
import os

import pytest

from clirun import tunery_cli
from conftest import write_jsonl
from tunery.errors import TuneryError

pytestmark = pytest.mark.gguf
if os.environ.get("TUNERY_REQUIRE_GGUF"):  # make test-gguf: a broken install fails, never skips
    import llama_cpp  # noqa: F401
else:
    llama_cpp = pytest.importorskip("llama_cpp", reason="the gguf extra: make test-gguf installs it")


def rows(n=24):
    return [{"messages": [{"role": "user", "content": f"color {i}"},
                          {"role": "assistant", "content": "the color is blue"}]} for i in range(n)]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunery.export.gguf import converter
    from tunery.models import resolve_model
    from tunery.training import train

    root = tmp_path_factory.mktemp("gguf")
    home = root / "home"
    old = os.environ.get("TUNERY_HOME")
    os.environ["TUNERY_HOME"] = str(home)
    try:
        default = resolve_model("default").path
        converter()
        tiny = root / "tiny"
        tok = AutoTokenizer.from_pretrained(default)
        tok.save_pretrained(tiny)
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, tie_word_embeddings=True)).save_pretrained(tiny)
        data = write_jsonl(root / "d.jsonl", rows())
        run = train(dict(model=str(tiny), data=str(data), out=str(root / "run"), method="full", max_steps=60, lr=3e-3,
                         batch_size=8), progress=False)
        smol = train(dict(model="default", data=str(data), out=str(root / "smol"), max_steps=2, batch_size=4,
                          val_split=0), progress=False)
    finally:
        if old is not None:
            os.environ["TUNERY_HOME"] = old
    return {"home": home, "run": run, "smol": smol, "root": root}


@pytest.fixture
def home(lab, monkeypatch):
    monkeypatch.setenv("TUNERY_HOME", str(lab["home"]))
    return lab["home"]


def test_f16_gguf_agrees_exactly_in_llama_cpp_and_is_in_the_lineage(lab, home, tmp_path):
    out = tunery_cli("export", lab["run"].dir, "--format", "gguf", "--out", tmp_path / "g", "--json", home=home)
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    v = record["verification"]
    assert record["quant"] == "f16" and v["agreement"] == 1.0 and v["prompt_render_equal"] and v["prompts"] == 6
    assert v["samples"][0]["llama.cpp"] == "the color is blue"
    saved = json.loads((tmp_path / "g" / "export.json").read_text())
    assert set(saved["files"]) == {"model-f16.gguf"} and saved["source"]["id"] == lab["run"].info.id

    from gguf import GGUFReader

    fields = GGUFReader(str(tmp_path / "g" / "model-f16.gguf")).fields
    assert "<|im_start|>" in fields["tokenizer.chat_template"].contents()
    from tunery.models import load_tokenizer

    im_end = load_tokenizer(str(lab["run"].dir)).convert_tokens_to_ids("<|im_end|>")
    assert im_end in v["end_of_turn_ids"]
    lineage = tunery_cli("lineage", lab["run"].dir, "--json", home=home)
    exports = json.loads(lineage.stdout)["model"]["exports"]
    assert [(e["format"], e["quant"]) for e in exports][-1] == ("gguf", "f16")
    assert exports[-1]["files"]["model-f16.gguf"] == saved["files"]["model-f16.gguf"]


def test_quantized_gguf_reports_agreement_and_size(lab, home, tmp_path):
    from tunery.export import export

    record = export(lab["run"].dir, "gguf", tmp_path / "q", quant="q8_0")
    assert 0.3 < record["size_ratio_to_f16"] < 0.8
    assert record["verification"]["agreement"] >= 0.5 and "largest_activation" in record["verification"]
    from tunery.models.llamacpp import GGUFModel

    model = GGUFModel(tmp_path / "q" / "model-q8_0.gguf")
    answer = model.answer([{"role": "user", "content": "color 3"}], max_tokens=20)
    assert answer.finish_reason == "stop" and answer.text == "the color is blue"


def test_the_default_models_activation_outliers_are_caught(lab, home, tmp_path):
    """SmolLM2-135M's MLP inputs reach thousands; llama.cpp quantizes activations to 8 bits per
    block of 32 for q8_0 (and q4_1) matmuls, and answers nonsense. Verification must refuse it
    and say why, while its f16 export agrees exactly."""
    out = tunery_cli("export", lab["smol"].dir, "--format", "gguf", "--quant", "q8_0", "--out", tmp_path / "q", home=home)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "activations reach" in out.stderr and "export at f16 or bf16" in out.stderr
    assert not (tmp_path / "q").exists() and not list(tmp_path.glob(".*"))
    from tunery.export import export

    record = export(lab["smol"].dir, "gguf", tmp_path / "f")
    assert record["verification"]["agreement"] == 1.0


def test_unconvertible_model_and_bad_quant_are_one_line_errors(lab, home, tmp_path, tiny_model):
    from tunery.export import export
    from tunery.training import train

    out = tunery_cli("export", lab["run"].dir, "--format", "gguf", "--quant", "q3_xyz", "--out", tmp_path / "x", home=home)
    assert out.returncode != 0 and "q4_k_m" in out.stderr and "Traceback" not in out.stderr
    # the test suite's own tiny tokenizer is a BPE llama.cpp has never seen: refused, nothing left behind
    data = write_jsonl(tmp_path / "d.jsonl", rows(8))
    run = train(dict(model=str(tiny_model), data=str(data), out=str(tmp_path / "run"), max_steps=1, batch_size=4,
                     val_split=0), progress=False)
    with pytest.raises(TuneryError, match="pre-tokenizer is not one llama.cpp knows"):
        export(run.dir, "gguf", tmp_path / "y")
    assert not (tmp_path / "y").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_gguf_model_stops_at_end_of_turn_and_refuses_long_prompts(lab, home, tmp_path):
    from tunery.export import export
    from tunery.models.llamacpp import GGUFModel

    export(lab["run"].dir, "gguf", tmp_path / "g", verify=False)
    assert "verification" not in json.loads((tmp_path / "g" / "export.json").read_text())
    model = GGUFModel(tmp_path / "g" / "model-f16.gguf", n_ctx=256)
    assert model.n_ctx == 256
    pieces = []
    got = model.answer([{"role": "user", "content": "color 9"}], max_tokens=30)
    assert got.finish_reason == "stop" and got.completion_tokens == 4
    cut = model.complete(model.tokenize(model.render([{"role": "user", "content": "color 9"}])), max_tokens=30,
                         on_token=lambda t, p: pieces.append((t, p)) or len(pieces) >= 2)
    assert cut.finish_reason == "length" and cut.completion_tokens == 2
    assert "".join(p for _, p in pieces) == cut.text and [t for t, _ in pieces] == cut.token_ids == got.token_ids[:2]
    assert model.decode(got.token_ids) == got.text == "the color is blue"
    with pytest.raises(TuneryError, match="context of 256"):
        model.answer([{"role": "user", "content": "color " * 300}])


def test_ollama_export_has_a_checked_template_and_the_default_system_prompt(lab, home, tmp_path):
    out = tunery_cli("export", lab["run"].dir, "--format", "ollama", "--out", tmp_path / "o", home=home)
    assert out.returncode == 0, out.stderr
    modelfile = (tmp_path / "o" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model-f16.gguf") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "You are a helpful AI assistant named SmolLM" in modelfile  # SmolLM2's template adds it when none is given
    record = json.loads((tmp_path / "o" / "export.json").read_text())
    assert record["ollama"]["family"] == "chatml" and record["ollama"]["conversations_checked"] >= 3
    assert record["verification"]["agreement"] == 1.0
    assert f"ollama create tiny-d-{lab['run'].info.id[:8]} -f {tmp_path / 'o' / 'Modelfile'}" in out.stdout


# -- `tunery serve --engine llamacpp`: the same API, served from GGUF exports ---------------------

KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def exported(lab):
    """The lab's fine-tune exported at f16 (recorded in the lab's registry), once."""
    from tunery.export import export

    old = os.environ.get("TUNERY_HOME")
    os.environ["TUNERY_HOME"] = str(lab["home"])
    try:
        record = export(lab["run"].dir, "gguf", lab["root"] / "served", verify=False)
    finally:
        os.environ["TUNERY_HOME"] = old if old is not None else os.environ.pop("TUNERY_HOME")
    return lab["root"] / "served" / record["gguf"]


def _client(engine: str, bases: dict | None = None):
    from fastapi.testclient import TestClient

    from tunery.serve.app import create_app
    from tunery.serve.catalog import Catalog

    return TestClient(create_app(api_key=KEY, jobs_worker=False, catalog=Catalog(bases, engine=engine)))


def _openai(client):
    import openai

    return openai.OpenAI(base_url=f"{client.base_url}/v1", api_key=KEY, http_client=client, max_retries=0)


def _error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


def test_llamacpp_engine_answers_as_the_pytorch_engine_does(lab, home, exported):
    name = lab["run"].info.name
    question = [{"role": "user", "content": "color 3"}]
    seen = {}
    for engine in ("pytorch", "llamacpp"):
        with _client(engine) as client:
            api = _openai(client)
            whole = api.chat.completions.create(model=name, messages=question, temperature=0, max_tokens=20)
            chunks = list(api.chat.completions.create(model=name, messages=question, temperature=0, max_tokens=20,
                                                      stream=True, stream_options={"include_usage": True}))
            streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            cut = api.chat.completions.create(model=name, messages=question, temperature=0, max_tokens=20, stop=[" is"])
            short = api.chat.completions.create(model=name, messages=question, temperature=0, max_tokens=2, n=2)
            listed = [m.id for m in api.models.list().data]
            seen[engine] = (whole.choices[0].message.content, whole.choices[0].finish_reason, whole.usage.model_dump(),
                            streamed, chunks[-1].usage.model_dump(), [c.choices[0].finish_reason for c in chunks if c.choices][-1],
                            cut.choices[0].message.content, cut.choices[0].finish_reason,
                            [(c.message.content, c.finish_reason) for c in short.choices], short.usage.completion_tokens)
    assert seen["llamacpp"] == seen["pytorch"]
    text, finish, usage, streamed, stream_usage, stream_finish, cut, cut_finish, short, short_tokens = seen["llamacpp"]
    assert text == streamed == "the color is blue" and finish == stream_finish == "stop"
    assert usage == stream_usage and usage["completion_tokens"] == 5  # four words and the end of the turn
    assert (cut, cut_finish) == ("the color", "stop")
    assert short == [("the color", "length")] * 2 and short_tokens == 4
    # /v1/models: what llama.cpp can serve: the exported fine-tune, never the default
    assert name in listed and "default" not in listed


def test_llamacpp_engine_keeps_the_apis_refusals(lab, home, exported, tmp_path):
    from tunery.registry import recorder
    from tunery.training import train

    name = lab["run"].info.name
    fresh = train(dict(model=str(lab["root"] / "tiny"), data=str(write_jsonl(tmp_path / "d.jsonl", rows(8))),
                       out=str(tmp_path / "run"), method="full", max_steps=1, batch_size=8, val_split=0), progress=False)
    with _client("llamacpp") as client:
        assert _error(client.get("/v1/models"), 401)["code"] == "invalid_api_key"
        chat = lambda model, **kw: client.post("/v1/chat/completions", headers=AUTH, json={  # noqa: E731
            "model": model, "messages": [{"role": "user", "content": kw.pop("content", "color 3")}]} | kw)
        assert _error(chat(name, content="color " * 600, max_tokens=1), 400)["param"] == "messages"
        body = _error(chat(name, max_tokens=500), 400)
        assert body["param"] == "max_tokens" and "maximum context length is 512 tokens" in body["message"]
        missing = _error(chat("no-such-model"), 404)
        for probe in (str(exported), str(lab["run"].dir), "/etc/passwd"):  # exists or not: the same answer
            assert _error(chat(probe), 404)["message"] == missing["message"].replace("no-such-model", probe)
        assert "Q4_1" in _error(chat("default"), 404)["message"]
        no_export = _error(chat(fresh.info.name), 404)
        assert no_export["code"] == "model_not_found"
        assert no_export["message"] == (f"The model '{fresh.info.name}' has no GGUF export; run "
                                        f"`tunery export {fresh.info.name} --format gguf`")
        assert "checkpoint" in _error(chat(f"{name}:ckpt-step-60"), 404)["message"]
        # an export whose folder is gone is skipped for the one before it
        recorder.record_export(fresh.info.id, {"format": "gguf", "quant": "f16", "out": str(tmp_path / "gone"),
                                               "files": {"model-f16.gguf": "0"}, "created": "2026-01-01T00:00:00"})
        listed = [m["id"] for m in client.get("/v1/models", headers=AUTH).json()["data"]]
        assert name in listed and fresh.info.name not in listed
        assert "has no GGUF export" in _error(chat(fresh.info.name), 404)["message"]
        # the fine-tuning API still trains from the names training takes (the default included)
        up = client.post("/v1/files", headers=AUTH, files={"file": ("t.jsonl", (tmp_path / "d.jsonl").read_bytes())},
                         data={"purpose": "fine-tune"})
        job = client.post("/v1/fine_tuning/jobs", headers=AUTH, json={"model": "default", "training_file": up.json()["id"]})
        assert job.status_code == 200 and job.json()["status"] in ("validating_files", "queued"), job.text


def test_llamacpp_engine_cancels_closes_and_evicts(lab, exported, tmp_path):
    import queue
    import shutil
    from concurrent.futures import wait

    from tunery.serve.catalog import Catalog
    from tunery.serve.engine import Cancelled, ChatRequest
    from tunery.serve.llamacpp_engine import LlamaCppEngine

    shutil.copy(exported, tmp_path / "b.gguf")
    engine = LlamaCppEngine(Catalog({"a": str(exported), "b": str(tmp_path / "b.gguf")}, engine="llamacpp").gguf,
                            max_models=1)
    ask = lambda model, **kw: ChatRequest(model=model, messages=[{"role": "user", "content": "color 5"}], **kw)  # noqa: E731

    class CancelAtFirstToken(queue.Queue):
        def put(self, item, *args, **kw):
            super().put(item, *args, **kw)
            action()

    # files swap in and out of a one-file LRU; every answer is the model's
    for model in ("a", "b", "a"):
        assert engine.submit(ask(model)).result(timeout=60).text == "the color is blue"
    assert list(engine._workers) == [str(exported)]
    # a request cancelled while it runs stops at the next token; one cancelled in the queue never runs
    model = engine.tokenizer_for("a")
    streamed = ask("a", stream=CancelAtFirstToken())
    action = streamed.cancel
    waiting = ask("a")
    with model.lock:  # the worker is held until both are queued
        engine.submit(streamed)
        engine.submit(waiting)
        waiting.cancel()
    for req in (streamed, waiting):
        with pytest.raises(Cancelled):
            req.future.result(timeout=60)
    assert streamed.stream.get() != [] and streamed.stream.get() is None and streamed.stream.empty()
    # close() ends the running request at its next token and fails the queued ones
    running, queued = ask("a", stream=CancelAtFirstToken()), ask("a")
    action = engine.close
    with model.lock:
        engine.submit(running)
        engine.submit(queued)
    wait([running.future, queued.future], timeout=60)
    assert all(isinstance(r.future.exception(), Cancelled) for r in (running, queued))
    with pytest.raises(Cancelled):
        engine.submit(ask("a"))


def test_llamacpp_engine_holds_answers_to_a_format(lab, home, exported):
    """response_format through llama.cpp's grammar sampler: JSON schemas and JSON objects parse, choices are
    choices; a regex has no llama.cpp grammar here (a 400 naming response_format)."""
    import jsonschema

    from tunery.config import AnswerFormat
    from tunery.models.llamacpp import GGUFModel
    from tunery.serve import structured

    name = lab["run"].info.name
    schema = {"type": "object", "properties": {"color": {"enum": ["red", "blue"]}, "n": {"type": "integer"}},
              "required": ["color", "n"], "additionalProperties": False}
    with _client("llamacpp") as client:
        api = _openai(client)
        kw = dict(model=name, messages=[{"role": "user", "content": "color 3"}], temperature=0, max_tokens=40)
        answer = api.chat.completions.create(response_format={"type": "json_schema", "json_schema": {
            "name": "c", "schema": schema}}, **kw).choices[0]
        assert answer.finish_reason == "stop"
        jsonschema.validate(json.loads(answer.message.content), schema)
        obj = api.chat.completions.create(response_format={"type": "json_object"}, **kw).choices[0]
        # this model says "the color is blue": held to an object, it runs on inside a key until max_tokens
        assert obj.message.content.startswith('{"') and (obj.finish_reason == "length" or isinstance(
            json.loads(obj.message.content), dict))
        streamed = "".join(c.choices[0].delta.content or "" for c in api.chat.completions.create(
            stream=True, response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}, **kw)
            if c.choices)
        assert streamed == answer.message.content
        def pattern(p):
            return client.post("/v1/chat/completions", headers=AUTH, json=kw | {"response_format": {
                "type": "json_schema", "json_schema": {"name": "c", "schema": {"type": "string", "pattern": p}}}})

        anchored, bare = pattern("^[a-z]{3}$"), pattern("[a-z]+")  # llama.cpp's converter wants anchors
        assert len(json.loads(anchored.json()["choices"][0]["message"]["content"])) == 3
        assert _error(bare, 400)["param"] == "response_format.json_schema.schema"
        assert "llama.cpp cannot express this schema" in _error(bare, 400)["message"]
    model = GGUFModel(exported)
    try:
        labels = ["card_lost", "card_lost_abroad", 'say "hi"', r"ünï\code"]
        prompt = model.tokenize(model.render([{"role": "user", "content": "color 3"}]))
        for seed in range(3):
            out = model.complete(prompt, max_tokens=20, temperature=1.0, seed=seed,
                                 grammar=structured.gbnf(AnswerFormat(choices=labels)))
            assert out.text in labels and out.finish_reason == "stop", out
        assert model.grammar_error("root ::= [unclosed")
    finally:
        model.close()
    with pytest.raises(TuneryError, match="response_format: a regex format needs tunery's own engine"):
        structured.gbnf(AnswerFormat(regex="[0-9]+"))


@pytest.fixture(scope="module")
def tools_exported(lab):
    """The lab's tiny Llama fully fine-tuned on examples/tools with its chatml_tools template, exported at
    f16: a GGUF whose template carries tool calls. Returns the fine-tune's name."""
    from pathlib import Path

    from tunery.export import export
    from tunery.training import train

    examples = Path(__file__).parent.parent / "examples/tools"
    old = os.environ.get("TUNERY_HOME")
    os.environ["TUNERY_HOME"] = str(lab["home"])
    try:
        run = train(dict(model=str(lab["root"] / "tiny"), data=str(examples / "train.jsonl"), val_split=0,
                         template=str(examples / "chatml_tools.jinja"), method="full", max_steps=40, lr=3e-3,
                         batch_size=8, out=str(lab["root"] / "tools-run")), progress=False)
        export(run.dir, "gguf", lab["root"] / "tools-served", verify=False)
    finally:
        os.environ["TUNERY_HOME"] = old if old is not None else os.environ.pop("TUNERY_HOME")
    return run.info.name


CITY = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"enum": ["Vienna", "Seoul", "Lima"]}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"], "additionalProperties": False}}}
SUM = {"type": "function", "function": {"name": "calculate", "description": "Arithmetic", "parameters": {
    "type": "object", "properties": {"operation": {"enum": ["add", "subtract"]}, "exact": {"type": "boolean"}},
    "required": ["operation", "exact"], "additionalProperties": False}}}


def test_llamacpp_engine_forces_tool_calls_with_a_grammar(lab, home, tools_exported):
    """tool_choice `required` or a named function, through llama.cpp's grammar sampler as through tunery's
    engine: the answer is a call the API reads back, its arguments valid against the tool's schema; with
    tools left to the model and a response_format, the answer is either calls or the format."""
    import jsonschema

    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (CITY, SUM)}
    ask = [{"role": "user", "content": "Tell me the weather for Lima."}]
    for engine in ("pytorch", "llamacpp"):
        with _client(engine) as client:
            api = _openai(client)
            kw = dict(model=tools_exported, messages=ask, tools=[CITY, SUM], temperature=0, max_tokens=96,
                      parallel_tool_calls=False)  # this barely trained model would repeat its call until max_tokens
            for choice, names in (("required", {"get_weather", "calculate"}),
                                  ({"type": "function", "function": {"name": "calculate"}}, {"calculate"})):
                answer = api.chat.completions.create(tool_choice=choice, **kw).choices[0]
                assert answer.finish_reason == "tool_calls" and len(answer.message.tool_calls) == 1, (engine, answer)
                for call in answer.message.tool_calls:
                    assert call.function.name in names, (engine, call)
                    jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
            for seed in range(3):  # sampled: still a call
                answer = api.chat.completions.create(tool_choice="required", **kw | dict(temperature=1.0, seed=seed)).choices[0]
                assert answer.finish_reason == "tool_calls", (engine, seed, answer)
            either = api.chat.completions.create(tool_choice="auto", response_format={"type": "json_schema", "json_schema": {
                "name": "w", "schema": schemas["get_weather"]}}, **kw).choices[0]
            if either.finish_reason != "tool_calls":
                jsonschema.validate(json.loads(either.message.content), schemas["get_weather"])


def test_serve_engines_bench_quick():
    """The bench harness, smoke-run (its speed is never asserted)."""
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / "bench" / "serve_engines.py"
    out = subprocess.run([sys.executable, str(bench), "--quick", "--json"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["same_answers"] == "8/8" and set(r["engines"]) == {"pytorch", "llamacpp"}
    for e in r["engines"].values():
        assert e["single_tokens_per_s"] > 0 and e["concurrent_tokens_per_s"] > 0 and e["first_token_ms"] > 0
    assert r["engines"]["pytorch"]["completion_tokens_single_burst"] == r["engines"]["llamacpp"]["completion_tokens_single_burst"]
