"""Tool calls: the call format learnt from each family's template (written by the template, read
back), the API's checks on tools, forced calls constrained on an untrained model, answers that are
not valid calls returned as text with a warning, streamed calls as the openai client assembles them."""

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_templates import tokenizer_for
from tiny import CHATML, build_model, family_tokenizer

from tunery.data import load_template
from tunery.data.tool_calls import Call, CallFormat
from tunery.generation import Generation
from tunery.serve import tools as serve_tools
from tunery.serve.app import create_app
from tunery.serve.catalog import Catalog
from tunery.serve.engine import ChatRequest

ROOT = Path(__file__).parent.parent
CHATML_TOOLS = (ROOT / "examples/tools/chatml_tools.jinja").read_text()
KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
                                     "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"], "additionalProperties": False}}}
CALC = {"type": "function", "function": {"name": "calculate", "description": "Arithmetic", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99}}, "required": ["a"],
    "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]

# Families whose templates render tool calls, and what the probe must learn of them.
SUPPORTED = {"qwen2_5": True, "qwen3": True, "llama3_1": False, "mistral_v3": True, "gpt_oss": False}
UNSUPPORTED = {"llama3": "does not render tools", "gemma3": "does not render tools",
               "granite3_3": "does not render assistant tool calls"}


def _assistant(calls):
    return {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "id": f"Ab{k}cd{k}ef{k}", "function": {"name": n, "arguments": a}}
        for k, (n, a) in enumerate(calls)]}


def _turn(template, calls) -> str:
    """What the template renders for an assistant turn of these calls, after the generation prompt,
    up to its end-of-turn token (what a model generates)."""
    prompt = template.render(ASK, [WEATHER, CALC], add_generation_prompt=True)
    full = template.render(ASK + [_assistant(calls)], [WEATHER, CALC])
    assert full.startswith(prompt)
    turn = full[len(prompt):]
    ends = [turn.find(s) for s in template.stop_strings if s in turn]
    return turn[: min(ends)] if ends else turn


@pytest.mark.parametrize("family", SUPPORTED)
def test_each_familys_calls_are_read_back_as_written(family):
    template = load_template(tokenizer_for(family))
    fmt = template.tool_calls
    assert isinstance(fmt, CallFormat), fmt
    assert fmt.parallel == SUPPORTED[family]
    calls = [("get_weather", {"city": "Paris", "days": 3}), ("calculate", {"a": 7})]
    for n in (1, 2) if fmt.parallel else (1,):
        parsed = fmt.parse(_turn(template, calls[:n]))
        assert parsed is not None and parsed.error is None, parsed
        assert [(c.name, c.arguments) for c in parsed.calls] == calls[:n]
        assert parsed.content == ""
    if family == "mistral_v3":  # the model writes the call's id
        assert fmt.parse(_turn(template, calls[:1])).calls[0].id == "Ab0cd0ef0"
    assert fmt.parse("The weather is fine.") is None


def test_text_beside_a_call_and_looser_whitespace_are_read():
    fmt = load_template(tokenizer_for("qwen2_5")).tool_calls
    parsed = fmt.parse('Let me check.\n<tool_call>\n{"name":"get_weather",\n "arguments":{"city": "Oslo"}}</tool_call>')
    assert parsed.content == "Let me check." and parsed.calls == [Call("get_weather", {"city": "Oslo"})]
    broken = fmt.parse('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"</tool_call>')
    assert broken.calls == [] and "not valid JSON" in broken.error


@pytest.mark.parametrize("family", UNSUPPORTED)
def test_templates_without_tool_calls_say_why(family):
    fmt = load_template(tokenizer_for(family)).tool_calls
    assert not isinstance(fmt, CallFormat) and UNSUPPORTED[family] in str(fmt)


def test_the_shipped_template_is_chatml_with_hermes_calls():
    tok = family_tokenizer(CHATML_TOOLS, specials=["<|im_start|>"], eos="<|im_end|>")
    template, chatml = load_template(tok), load_template(tok, CHATML)
    system = [{"role": "system", "content": "Be brief."}]
    for conv in (ASK, ASK + [{"role": "assistant", "content": "Sunny."}], system + ASK):
        for gen in (False, True):  # without tools: plain ChatML, no default system prompt
            assert template.render(conv, None, gen) == chatml.render(conv, None, gen)
    fmt = template.tool_calls
    assert fmt.call == ('<tool_call>\n{"name": "', "name", '", "arguments": ', "arguments", "}\n</tool_call>")
    assert fmt.parallel and fmt.sep == "\n"
    with_tools = template.render(system + ASK, [WEATHER], add_generation_prompt=True)
    assert with_tools.startswith("<|im_start|>system\nBe brief.\n\n# Tools") and '"name": "get_weather"' in with_tools


def test_an_answer_that_is_not_a_valid_call_is_text_with_a_warning(tiny_tokenizer):
    fmt = CallFormat.probe(load_template(tiny_tokenizer, CHATML_TOOLS))
    req = ChatRequest(model="m", messages=ASK, tools=[WEATHER, CALC], call_format=fmt)

    def answer(text, **kw):
        for k, v in kw.items():
            setattr(req, k, v)
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        return serve_tools.answer(Generation(text, 5, len(ids), "stop", ids), req, tiny_tokenizer)

    good = Call("get_weather", {"city": "Lima", "days": 2})
    message, finish, warnings = answer(fmt.text([good]))
    assert finish == "tool_calls" and warnings == [] and message["content"] is None
    [call] = message["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Lima", "days": 2}'}
    for text, code in ((fmt.text([Call("get_weather", {"city": "Rome", "days": 2})]), "invalid_tool_arguments"),
                       (fmt.text([Call("launch", {})]), "unknown_tool"),
                       ('<tool_call>\n{"name": "calculate", "arguments": {"a": 1,,}}\n</tool_call>', "unreadable_tool_call")):
        message, finish, warnings = answer(text)
        assert message == {"role": "assistant", "content": text} and finish == "stop"
        assert [w["code"] for w in warnings] == [code], warnings
    two = fmt.text([good, Call("calculate", {"a": 3})])
    message, finish, warnings = answer(two, parallel_tool_calls=False)
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_weather"]
    assert [w["code"] for w in warnings] == ["tool_calls_dropped"]
    message, finish, warnings = answer(two, tool_choice="none")
    assert message == {"role": "assistant", "content": two} and finish == "stop" and not warnings


# -- the API, in-process, on tiny untrained models ------------------------------------------------------
@pytest.fixture(scope="module")
def tool_model(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("tiny-tools"), template=CHATML_TOOLS, context=2048)


@pytest.fixture
def api(tiny_model, tool_model):
    app = create_app(api_key=KEY, jobs_worker=False, catalog=Catalog({"tiny": str(tiny_model), "tools": str(tool_model)}))
    with TestClient(app) as client:
        yield client


def chat(api, **body):
    return api.post("/v1/chat/completions", headers=AUTH, json={"model": "tools", "messages": ASK,
                                                                "max_tokens": 8} | body)


def error_param(r, status=400):
    assert r.status_code == status, r.text
    return r.json()["error"]["param"]


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools[0].function.name"),
    ({"tools": [WEATHER, {"type": "function", "function": {"name": "x", "parameters": {"type": "string"}}}]},
     "tools[1].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "x", "parameters": {"type": "object", "properties": 3}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "x", "parameters": {"$ref": "http://evil/x"}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "x", "parameters": {"type": "object", "properties": {
        "a": {"properties": {"b": {}}}} | {"patternProperties": {"(a+)+$": {}}}}}}]}, "tools[0].function.parameters"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    ({"tools": [WEATHER] * 129}, "tools"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "calculate"}}},
     "tool_choice.function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"messages": ASK + [{"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
        "name": "get_weather", "arguments": "{not json"}}]}]}, "messages[1].tool_calls"),
])
def test_malformed_tool_requests_are_400s_naming_the_field(api, body, param):
    assert error_param(chat(api, **body)) == param


def test_tools_on_a_template_without_them_are_a_400_naming_the_way_out(api):
    r = chat(api, model="tiny", tools=[WEATHER])
    assert error_param(r) == "tools"
    assert "examples/tools/chatml_tools.jinja" in r.json()["error"]["message"]


def test_a_forced_call_on_an_untrained_model_is_a_valid_call(api):
    """An untrained model never writes a call by itself: the grammar makes it write one."""
    for choice, names in (({"type": "function", "function": {"name": "get_weather"}}, {"get_weather"}),
                          ("required", {"get_weather", "calculate"})):
        r = chat(api, tools=[WEATHER, CALC], tool_choice=choice, parallel_tool_calls=False, max_tokens=120)
        assert r.status_code == 200, r.text
        [choice_] = r.json()["choices"]
        assert choice_["finish_reason"] == "tool_calls", choice_
        [call] = choice_["message"]["tool_calls"]
        assert call["function"]["name"] in names
        args = json.loads(call["function"]["arguments"])
        schema = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, CALC)}[call["function"]["name"]]
        assert set(args) == set(schema["required"])
    free = chat(api, tools=[WEATHER, CALC], max_tokens=20).json()["choices"][0]
    assert free["finish_reason"] != "tool_calls" and "tool_calls" not in free["message"]


def test_a_round_trip_conversation_is_accepted_and_rendered_as_in_training(api, tool_model):
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris", "days": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'}]
    r = chat(api, messages=history, tools=[WEATHER])
    assert r.status_code == 200, r.text
    from tunery.serve.app import _message
    from tunery.serve.schemas import Message

    req = ChatRequest(model="m", messages=serve_tools.messages([_message(Message(**m)) for m in history]),
                      tools=[WEATHER])
    prompt = serve_tools.render(load_template(tokenizer_for("qwen2_5"), CHATML_TOOLS), req)
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 1}}'
            '\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n{"temperature": 21}\n</tool_response>'
            '<|im_end|>\n<|im_start|>assistant\n') in prompt


def test_streamed_calls_are_assembled_by_the_openai_client(api):
    from openai import OpenAI
    from openai.lib.streaming.chat import ChatCompletionStreamState

    client = OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=api, max_retries=0)
    kw = dict(model="tools", messages=ASK, tools=[WEATHER, CALC], max_tokens=120, parallel_tool_calls=False,
              tool_choice={"type": "function", "function": {"name": "calculate"}})
    plain = client.chat.completions.create(**kw)
    state = ChatCompletionStreamState()
    for chunk in client.chat.completions.create(**kw, stream=True):
        state.handle_chunk(chunk)
    streamed = state.get_final_completion().choices[0]
    assert streamed.finish_reason == "tool_calls" == plain.choices[0].finish_reason
    [call] = streamed.message.tool_calls
    assert call.id.startswith("call_") and call.function.name == "calculate"
    assert call.function.arguments == plain.choices[0].message.tool_calls[0].function.arguments
