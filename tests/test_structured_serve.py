"""Structured outputs in the server: response_format (json_schema, json_object, text) on an untrained
model, plain, streamed and batched with other formats; the 400s a bad or hostile schema gets; a
fine-tune's recorded constraint as the default; tools left to the model beside a format. The last test
crosses the process boundary: a real server and the official openai client's `parse`."""

import json
import os
import threading

import jsonschema
import pytest
from fastapi.testclient import TestClient
from test_serve import KEY, client, start_server
from tiny import build_model

from conftest import write_jsonl
from tunery.serve.app import create_app
from tunery.serve.catalog import Catalog

AUTH = {"Authorization": f"Bearer {KEY}"}
ASK = [{"role": "user", "content": "Who is Ada? Answer in JSON."}]
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "pilot"],
          "properties": {"name": {"type": "string", "maxLength": 10}, "age": {"type": "integer", "minimum": 0, "maximum": 99},
                         "pilot": {"type": "boolean"}}}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
LABELS = ["check_balance", "card_lost", "card_lost_abroad", "transfer"]
CHATML_TOOLS = (__import__("pathlib").Path(__file__).parent.parent / "examples/tools/chatml_tools.jinja").read_text()
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}}, "required": ["city"],
    "additionalProperties": False}}}


@pytest.fixture(scope="module")
def labelled(tiny_model, tmp_path_factory):
    """A fine-tune whose recipe records the labels as its constraint (two steps: not a labeller yet)."""
    from tunery.training import train

    folder = tmp_path_factory.mktemp("labelled")
    rows = [{"messages": [{"role": "user", "content": f"request {i}"},
                          {"role": "assistant", "content": LABELS[i % 4]}]} for i in range(16)]
    before = os.environ.get("TUNERY_HOME")
    os.environ["TUNERY_HOME"] = str(folder / "home")
    try:
        run = train(dict(model=str(tiny_model), data=str(write_jsonl(folder / "d.jsonl", rows)), out=str(folder / "run"),
                         max_steps=2, batch_size=8, val_split=0, constraint="choices:" + ",".join(LABELS)), progress=False)
    finally:
        os.environ.pop("TUNERY_HOME") if before is None else os.environ.update(TUNERY_HOME=before)
    return run.dir


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("tiny-tools"), template=CHATML_TOOLS, context=2048)


@pytest.fixture
def api(tiny_model, labelled, tool_model):
    catalog = Catalog({"tiny": str(tiny_model), "labelled": str(labelled), "tools": str(tool_model)})
    with TestClient(create_app(api_key=KEY, jobs_worker=False, catalog=catalog)) as c:
        yield c


def chat(api, **body):
    return api.post("/v1/chat/completions", headers=AUTH, json={"model": "tiny", "messages": ASK,
                                                                "max_tokens": 80} | body)


def test_json_schema_and_json_object_answers_always_parse(api):
    """An untrained model writes JSON matching the schema, every choice (sampled too) and every time."""
    r = chat(api, response_format=SCHEMA_FORMAT, n=4, temperature=1.0, seed=3)
    assert r.status_code == 200, r.text
    for choice in r.json()["choices"]:
        assert choice["finish_reason"] == "stop"
        jsonschema.validate(json.loads(choice["message"]["content"]), PERSON)
    free = chat(api, max_tokens=20, temperature=0).json()["choices"][0]["message"]["content"]
    with pytest.raises(ValueError):
        json.loads(free)  # the same model, unconstrained
    obj = chat(api, response_format={"type": "json_object"}, max_tokens=200, temperature=0).json()["choices"][0]
    assert obj["finish_reason"] == "stop" and isinstance(json.loads(obj["message"]["content"]), dict)
    text = chat(api, response_format={"type": "text"}, max_tokens=20, temperature=0).json()["choices"][0]["message"]["content"]
    assert text == free


def test_a_streamed_structured_answer_is_the_plain_one(api):
    from openai import OpenAI

    c = OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=api, max_retries=0)
    kw = dict(model="tiny", messages=ASK, max_tokens=80, temperature=0, response_format=SCHEMA_FORMAT)
    plain = c.chat.completions.create(**kw).choices[0].message.content
    chunks = list(c.chat.completions.create(**kw, stream=True))
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == plain and len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content]) > 3
    jsonschema.validate(json.loads(streamed), PERSON)
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"


def test_requests_with_different_formats_share_a_batch(api, monkeypatch):
    """Queued requests for one model batch together, each row held to its own format (or none)."""
    from tunery.serve import engine as engine_module

    sizes, gate = [], threading.Event()
    real = engine_module.generate_batch

    def spy(model, tokenizer, prompts, *a, **kw):
        gate.wait(10)  # the first batch waits until every request is queued
        sizes.append(len(prompts))
        return real(model, tokenizer, prompts, *a, **kw)

    monkeypatch.setattr(engine_module, "generate_batch", spy)
    formats = [None, SCHEMA_FORMAT, {"type": "json_object"}, SCHEMA_FORMAT, None]
    results = [None] * len(formats)

    def send(i):
        results[i] = chat(api, temperature=0, max_tokens=60, **({"response_format": formats[i]} if formats[i] else {}))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(formats))]
    for t in threads:
        t.start()
    engine = api.app.state.engine
    for _ in range(200):
        if len(engine._pending) >= len(formats) - 1:
            break
        threading.Event().wait(0.05)
    gate.set()
    for t in threads:
        t.join()
    assert max(sizes) >= 3, sizes  # the queued requests ran together
    for fmt, r in zip(formats, results):
        assert r.status_code == 200, r.text
        content = r.json()["choices"][0]["message"]["content"]
        if fmt is SCHEMA_FORMAT:
            jsonschema.validate(json.loads(content), PERSON)
        elif fmt:
            assert r.json()["choices"][0]["finish_reason"] != "stop" or isinstance(json.loads(content), dict)
    assert results[0].json()["choices"][0]["message"]["content"] == results[4].json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("rf, param, words", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 3}}},
     "response_format.json_schema.schema", "not a valid JSON schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "not": {"type": "string"}}}},
     "response_format.json_schema.schema", "not"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "https://evil.example/s.json"}}},
     "response_format.json_schema.schema", "$ref"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"enum": ["a" * 100] * 1000}}},
     "response_format.json_schema.schema", "larger than"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": json.loads('{"items": ' * 30 + "{}" + "}" * 30)}},
     "response_format.json_schema.schema", "deeper than"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "a(?=b)"}}},
     "response_format.json_schema.schema", "look-around"),
    ({"type": "json_schema"}, "response_format.json_schema", "required"),
    ({"type": "json_object", "json_schema": {"name": "x", "schema": {}}}, "response_format.json_schema", "only with"),
    ({"type": "json_schema", "json_schema": {"name": "no spaces", "schema": {}}}, "response_format.json_schema.name", ""),
    ({"type": "xml"}, "response_format.type", ""),
])
def test_bad_response_formats_are_400s_naming_the_problem(api, rf, param, words):
    r = chat(api, response_format=rf)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_hostile_schemas_are_bounded(api):
    """Within the size limit, schemas built to blow up a parser compile lazily under llguidance's limits:
    the answer comes back (or a 400), never a hung server."""
    for schema in ({"type": "string", "pattern": "^(a|b)*a(a|b){24}$"},
                   {"type": "array", "items": {"type": "string", "pattern": "(x+x+)+y"}, "minItems": 5000},
                   {"enum": [f"label {i}" for i in range(4000)]}):
        r = chat(api, max_tokens=30, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
        assert r.status_code in (200, 400), r.text


def test_a_grammar_that_gives_up_while_generating_fails_its_request_alone(api, monkeypatch):
    """A parser limit reached mid-answer (forced here) ends that answer: a 400 naming the format; the
    engine goes on answering others."""
    from tunery.serve import engine as engine_module

    real = engine_module.structured.constraint

    def breaking(req, tokenizer, stop_ids):
        c = real(req, tokenizer, stop_ids)
        if c is not None and req.format_given and req.format.json_object:
            c.matcher.consume_token(stop_ids[0])  # a token the grammar refuses: in error from the start
        return c

    monkeypatch.setattr(engine_module.structured, "constraint", breaking)
    broken = chat(api, response_format={"type": "json_object"}, temperature=0)
    assert broken.status_code == 400 and broken.json()["error"]["param"] == "response_format"
    assert "reached a limit while generating" in broken.json()["error"]["message"]
    assert chat(api, response_format=SCHEMA_FORMAT, temperature=0).status_code == 200


def test_strict_false_ignores_what_the_grammar_cannot_hold(api):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"not": {"type": "string"}}},
              "required": ["a"], "additionalProperties": False}
    strict = chat(api, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert strict.status_code == 400
    loose = chat(api, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": False}})
    assert loose.status_code == 200, loose.text
    assert isinstance(json.loads(loose.json()["choices"][0]["message"]["content"])["a"], int)


def test_a_fine_tunes_recorded_constraint_is_the_default(api):
    ask = [{"role": "user", "content": "request 7"}]
    labels = [chat(api, model="labelled", messages=ask, max_tokens=12, temperature=1.0, seed=s).json()
              for s in range(3)]
    assert all(r["choices"][0]["message"]["content"] in LABELS for r in labels), labels
    free = chat(api, model="labelled", messages=ask, max_tokens=12, temperature=0, response_format={"type": "text"}).json()
    assert free["choices"][0]["message"]["content"] not in LABELS
    json_answer = chat(api, model="labelled", messages=ask, response_format=SCHEMA_FORMAT).json()
    jsonschema.validate(json.loads(json_answer["choices"][0]["message"]["content"]), PERSON)


def test_tools_and_a_format_together(api):
    """Tools left to the model beside a format: the answer is calls or the format; a forced call is a call."""
    body = dict(model="tools", tools=[WEATHER], response_format=SCHEMA_FORMAT, max_tokens=80, temperature=1.0,
                parallel_tool_calls=False)
    for seed in range(4):
        choice = chat(api, seed=seed, **body).json()["choices"][0]
        if choice["finish_reason"] == "tool_calls":
            assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
        else:
            jsonschema.validate(json.loads(choice["message"]["content"]), PERSON)
    forced = chat(api, tool_choice="required", **body).json()["choices"][0]
    assert forced["finish_reason"] == "tool_calls", forced
    none = chat(api, tool_choice="none", **body).json()["choices"][0]
    jsonschema.validate(json.loads(none["message"]["content"]), PERSON)


@pytest.mark.process
def test_response_format_through_a_real_server_and_the_openai_client(tiny_model, labelled, tmp_path):
    """The official client's `parse` with a pydantic model, and a streamed json_object, over HTTP."""
    from pydantic import BaseModel, Field

    class Person(BaseModel):
        name: str = Field(max_length=10)
        age: int
        pilot: bool

    proc, url = start_server(tmp_path / "home", "--api-key", KEY, "--no-jobs", "--base", f"tiny={tiny_model}",
                             "--base", f"labelled={labelled}")
    try:
        c = client(url)
        parsed = c.chat.completions.parse(model="tiny", messages=ASK, max_tokens=80, response_format=Person)
        message = parsed.choices[0].message
        assert isinstance(message.parsed, Person) and message.refusal is None
        stream = c.chat.completions.create(model="tiny", messages=ASK, max_tokens=200, stream=True, temperature=0,
                                           response_format={"type": "json_object"})
        text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
        assert isinstance(json.loads(text), dict)
        label = c.chat.completions.create(model="labelled", messages=[{"role": "user", "content": "request 1"}],
                                          max_tokens=12)
        assert label.choices[0].message.content in LABELS
        bad = c.chat.completions.with_raw_response
        with pytest.raises(Exception) as err:
            bad.create(model="tiny", messages=ASK, response_format={"type": "json_schema", "json_schema": {
                "name": "x", "schema": {"type": "object", "not": {}}}})
        assert getattr(err.value, "status_code", None) == 400
    finally:
        proc.kill()
        proc.wait()
