"""Loss masks on the real chat templates of 15 model families (fixtures in tests/templates/,
sources in tests/templates/SOURCES.md), each with a tokenizer made here with the family's
special tokens, on four conversation shapes."""

import functools
import itertools
from pathlib import Path

import pytest
from conftest import write_jsonl
from tiny import CHATML, family_tokenizer

from tunery.data import Renderer, check_dataset, load_template
from tunery.data.formats import Invalid, normalise
from tunery.data.types import Conversation

Q1 = {"role": "user", "content": "What is the capital of France?"}
A1 = {"role": "assistant", "content": "The capital of France is Paris."}
Q2 = {"role": "user", "content": "How are you today?"}
A2 = {"role": "assistant", "content": "I am fine, thank you."}
Q3 = {"role": "user", "content": "Translate to French: good morning"}
A3 = {"role": "assistant", "content": "bonjour"}
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}

SHAPES = {
    "single": ([Q1, A1], [None, None]),
    "three_turns": ([Q1, A1, Q2, A2, Q3, A3], [None] * 6),
    "system": ([SYSTEM, Q1, A1], [None] * 3),
    "weight0_middle": ([Q1, A1, Q2, A2, Q3, A3], [None, None, None, 0.0, None, None]),
}

FAMILIES = {
    "llama3": dict(bos="<|begin_of_text|>", eos="<|eot_id|>", specials=["<|start_header_id|>", "<|end_header_id|>"]),
    "llama3_1": dict(bos="<|begin_of_text|>", eos="<|eot_id|>", specials=["<|start_header_id|>", "<|end_header_id|>"]),
    "qwen2_5": dict(eos="<|im_end|>", specials=["<|im_start|>", "<|endoftext|>"]),
    "qwen3": dict(eos="<|im_end|>", specials=["<|im_start|>", "<|endoftext|>", "<think>", "</think>"]),
    "gemma2": dict(bos="<bos>", eos="<eos>", specials=["<start_of_turn>", "<end_of_turn>"]),
    "gemma3": dict(bos="<bos>", eos="<eos>", specials=["<start_of_turn>", "<end_of_turn>"]),
    "mistral_v1": dict(bos="<s>", eos="</s>", specials=["[INST]", "[/INST]"]),
    "mistral_v3": dict(bos="<s>", eos="</s>", specials=["[INST]", "[/INST]"]),
    "phi3": dict(bos="<s>", eos="<|endoftext|>", specials=["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]),
    "phi3_5": dict(bos="<s>", eos="<|endoftext|>", specials=["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]),
    "deepseek_r1_distill": dict(bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>",
                                specials=["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"]),
    "granite3_3": dict(eos="<|end_of_text|>", specials=["<|start_of_role|>", "<|end_of_role|>", "<|tool_call|>"]),
    "command_r": dict(bos="<BOS_TOKEN>", eos="<|END_OF_TURN_TOKEN|>",
                      specials=["<|START_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>"]),
    "command_a": dict(bos="<BOS_TOKEN>", eos="<|END_OF_TURN_TOKEN|>",
                      specials=["<|START_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>",
                                "<|START_RESPONSE|>", "<|END_RESPONSE|>", "<|START_THINKING|>", "<|END_THINKING|>"]),
    "gpt_oss": dict(bos="<|startoftext|>", eos="<|return|>",
                    specials=["<|start|>", "<|message|>", "<|channel|>", "<|end|>", "<|call|>", "<|constrain|>"]),
    "smolvlm": dict(bos="<|im_start|>", eos="<end_of_utterance>", specials=["<image>"]),
}

# How each family renders a trained assistant turn around its content: the text its trained tokens
# must decode to, written out here from the templates rather than taken from the code under test.
TURN = {
    "llama3": ("", "<|eot_id|>"), "llama3_1": ("", "<|eot_id|>"),
    "qwen2_5": ("", "<|im_end|>"), "qwen3": ("<think>\n\n</think>\n\n", "<|im_end|>"),
    "gemma2": ("", "<end_of_turn>"), "gemma3": ("", "<end_of_turn>"),
    "mistral_v1": (" ", "</s>"), "mistral_v3": (" ", "</s>"),
    "phi3": ("", "<|end|>"), "phi3_5": ("", "<|end|>"),
    "deepseek_r1_distill": ("", "<｜end▁of▁sentence｜>"),
    "granite3_3": ("", "<|end_of_text|>"),
    "command_r": ("", "<|END_OF_TURN_TOKEN|>"),
    # Command-A always appends the next reply's header: it must not be trained.
    "command_a": ("", "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>"),
    "gpt_oss": ("<|channel|>final<|message|>", "<|return|>"),
    "smolvlm": (" ", "<end_of_utterance>"),
}

# Cells where no correct mask exists, and the error that says so.
REFUSED = {
    # Qwen 3 and GPT-OSS render an earlier assistant turn differently once a later one follows.
    ("qwen3", "three_turns"): "mask_underivable", ("qwen3", "weight0_middle"): "mask_underivable",
    ("gpt_oss", "three_turns"): "mask_underivable", ("gpt_oss", "weight0_middle"): "mask_underivable",
    # The R1 distill prompt ends in "<think>\n", which its rendered assistant turns never contain.
    **{("deepseek_r1_distill", shape): "mask_underivable" for shape in SHAPES},
    # Mistral v3 keeps the system message only when the last message is the user's (at inference).
    ("mistral_v3", "system"): "mask_underivable",
    ("gemma2", "system"): "template_error",  # raise_exception('System role not supported')
}

TEMPLATES = Path(__file__).parent / "templates"


@functools.cache
def tokenizer_for(family: str):
    return family_tokenizer((TEMPLATES / f"{family}.jinja").read_text(encoding="utf-8"), **FAMILIES[family])


def encode(tok, messages, weights, mask="assistant", template=None):
    conv = Conversation(messages=messages, weights=weights)
    return Renderer(tok, load_template(tok, template), mask).encode_many([conv])[0]


def trained_runs(tok, enc) -> list[str]:
    """The trained tokens, decoded run by run."""
    runs = [[t for t, _ in group] for trained, group in
            itertools.groupby(zip(enc.input_ids, enc.loss_mask), key=lambda p: p[1]) if trained]
    return [tok.decode(run, skip_special_tokens=False) for run in runs]


def reference_ids(tok, messages) -> list[int]:
    """transformers' own render and tokenization of the conversation."""
    if tok.chat_template and "for line in message['content']" in tok.chat_template:  # SmolVLM takes parts
        messages = [m | {"content": [{"type": "text", "text": m["content"]}]} for m in messages]
    return list(tok.apply_chat_template(messages, tokenize=True)["input_ids"])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_family_masks(family, shape):
    tok = tokenizer_for(family)
    messages, weights = SHAPES[shape]
    enc = encode(tok, messages, weights)
    if (family, shape) in REFUSED:
        assert isinstance(enc, Invalid) and enc.code == REFUSED[family, shape], enc
        return
    assert not isinstance(enc, Invalid), enc
    # The example is exactly the template's own render, tokenized: nothing inserted, nothing lost.
    assert enc.input_ids == reference_ids(tok, messages)
    # Every trained assistant turn, in order: its content and end-of-turn marker, nothing else.
    before, after = TURN[family]
    expected = [before + m["content"] + after for m, w in zip(messages, weights) if m["role"] == "assistant" and w != 0]
    assert trained_runs(tok, enc) == expected
    assert not enc.warnings
    assert Renderer(tok, load_template(tok)).template_warnings() == []


@pytest.mark.parametrize("family", ["qwen3", "gpt_oss"])
def test_history_rewriting_templates_train_the_last_turn_with_mask_last(family):
    tok = tokenizer_for(family)
    messages, weights = SHAPES["three_turns"]
    enc = encode(tok, messages, weights, mask="last")
    assert enc.input_ids == reference_ids(tok, messages)
    before, after = TURN[family]
    assert trained_runs(tok, enc) == [before + A3["content"] + after]


def test_underivable_message_names_the_ways_out(tmp_path):
    tok = tokenizer_for("qwen3")
    messages, weights = SHAPES["three_turns"]
    msg = str(encode(tok, messages, weights))
    assert "messages[1]" in msg and "--mask last" in msg and "--template FILE" in msg
    # A template the user already passed is not answered with "pass --template".
    mine = tmp_path / "mine.jinja"
    mine.write_text(tok.chat_template)
    msg = str(encode(tok, messages, weights, template=str(mine)))
    assert "--mask last" in msg and "--template FILE" not in msg and str(mine) in msg
    # The final turn itself failing: --mask last would not help, so it is not offered.
    r1 = tokenizer_for("deepseek_r1_distill")
    msg = str(encode(r1, [Q1, A1], [None, None]))
    assert "--mask last" not in msg and "--template FILE" in msg


# -- the four silent errors, kept as regression tests -------------------------------------------

def test_reply_header_appended_by_the_template_is_not_trained():
    tok = tokenizer_for("command_a")
    enc = encode(tok, [Q1, A1], [None, None])
    reference = reference_ids(tok, [Q1, A1])
    assert enc.input_ids == reference  # no EOS inserted after the trailing header
    assert tok.decode(reference[-2:]) == "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
    assert enc.loss_mask[-2:] == [0, 0]
    assert trained_runs(tok, enc) == [A1["content"] + "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>"]


def test_end_marker_that_is_not_a_special_token(tmp_path):
    # A ChatML tokenizer given a Llama 3 template: <|eot_id|> is plain text to it, and it has learnt
    # merges across "<|eot_id|><|start_header_id|>", as real tokenizers have.
    llama3 = (TEMPLATES / "llama3.jinja").read_text(encoding="utf-8")
    tok = family_tokenizer(CHATML, specials=[], eos="<|im_end|>", bos="<|im_start|>",
                           corpus=["<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"])
    renderer = Renderer(tok, load_template(tok, llama3))
    [(code, message)] = renderer.template_warnings()
    assert code == "end_marker_not_special" and "'<|eot_id|>'" in message and "model's own template" in message
    # One turn: the marker is trained as text, and no EOS is appended after it.
    single = renderer.encode_many([Conversation(messages=[Q1, A1], weights=[None, None])])[0]
    assert single.input_ids == tok(llama3_render := load_template(tok, llama3).render([Q1, A1]),
                                   add_special_tokens=False)["input_ids"]
    assert trained_runs(tok, single) == [A1["content"] + "<|eot_id|>"]
    assert tok.eos_token_id not in single.input_ids and llama3_render.endswith("<|eot_id|>")
    # Several turns: a token crosses from the marker into the next header; an error with evidence.
    multi = renderer.encode_many([Conversation(messages=[Q1, A1, Q2, A2], weights=[None] * 4)])[0]
    assert isinstance(multi, Invalid) and multi.code == "mask_invariant"
    assert "messages[1]" in str(multi) and "crosses its end" in str(multi) and "Paris.<|eot_id|><" in str(multi)
    # The doctor reports both, and does not say ok.
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [Q1, A1]}, {"messages": [Q1, A1, Q2, A2]}])
    report = check_dataset(path, tokenizer=tok, template=llama3)
    assert report["ok"] is False
    assert [(e["line"], e["code"]) for e in report["errors"]] == [(2, "mask_invariant")]
    assert [(w["line"], w["code"]) for w in report["warnings"]] == [(0, "end_marker_not_special")]


def test_reasoning_content_is_rendered_and_trained(tmp_path):
    tok = tokenizer_for("qwen3")
    row = {"messages": [Q1, A1 | {"reasoning_content": "Paris is the capital."}]}
    path = write_jsonl(tmp_path / "r.jsonl", [row, {"messages": [Q1, A1 | {"reasoning": "It is Paris."}]}])
    report = check_dataset(path, tokenizer=tok)
    assert report["ok"] and report["good"] == 2 and not report["warnings"]
    conv, _ = normalise(1, row, "chat")
    enc = Renderer(tok, load_template(tok)).encode_many([conv])[0]
    assert trained_runs(tok, enc) == ["<think>\nParis is the capital.\n</think>\n\n" + A1["content"] + "<|im_end|>"]
    reference = tok.apply_chat_template(row["messages"], tokenize=True)["input_ids"]
    assert enc.input_ids == list(reference)
    # GPT-OSS reads it as `thinking`, into its analysis channel.
    gpt = tokenizer_for("gpt_oss")
    enc = Renderer(gpt, load_template(gpt)).encode_many([conv])[0]
    [trained] = trained_runs(gpt, enc)
    assert trained.startswith("<|channel|>analysis<|message|>Paris is the capital.<|end|>")
    assert trained.endswith("<|channel|>final<|message|>" + A1["content"] + "<|return|>")
    # A template that does not render reasoning: trained without it, and the doctor says so.
    report = check_dataset(path, tokenizer=tokenizer_for("llama3"))
    assert report["ok"] and [(w["line"], w["code"]) for w in report["warnings"]] == [
        (1, "reasoning_dropped"), (2, "reasoning_dropped")]


def test_content_given_as_text_parts(tmp_path):
    tok = tokenizer_for("smolvlm")
    parts = [{"type": "text", "text": "The capital of "}, {"type": "text", "text": "France is Paris."}]
    rows = [{"messages": [Q1, {"role": "assistant", "content": parts}]}, {"messages": [Q1, A1]}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    report = check_dataset(path, tokenizer=tok)
    assert report["ok"] and report["good"] == 2
    for row in rows:
        conv, _ = normalise(1, row, "chat")
        enc = Renderer(tok, load_template(tok)).encode_many([conv])[0]
        assert trained_runs(tok, enc) == [" The capital of France is Paris.<end_of_utterance>"]
    # A template that renders nothing for the content is an error, never "ok".
    empty = "{% for m in messages %}{{ m['role'] }}: {% for p in m['content'] %}{% endfor %}<|im_end|>{% endfor %}"
    report = check_dataset(path, tokenizer=tok, template=empty)
    assert report["ok"] is False and {e["code"] for e in report["errors"]} == {"template_error"}


def test_report_prints_template_text_verbatim(tmp_path):
    # Messages quote template text such as Mistral's "[/INST]", which is rich markup syntax.
    from rich.console import Console

    from tunery.data.report import print_report

    tok = tokenizer_for("mistral_v3")
    path = write_jsonl(tmp_path / "s.jsonl", [{"messages": [SYSTEM, Q1, A1]}])
    report = check_dataset(path, tokenizer=tok)
    report["errors"][0]["message"] += " [/INST] [bold]"
    console = Console(record=True, width=400, color_system=None)
    print_report(report, console)
    assert "[/INST] [bold]" in console.export_text()


def test_generation_prompt_ending_inside_a_token_is_an_error():
    # "assistant: " + "the ..." tokenizes as ":" + " the": the prompt's trailing space belongs to
    # the answer's first token, so no mask can match what the model sees at inference.
    tok = tokenizer_for("llama3")
    template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '<|eot_id|>' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    enc = encode(tok, [Q1, {"role": "assistant", "content": "the capital is Paris."}], [None, None], template=template)
    assert isinstance(enc, Invalid) and enc.code == "mask_invariant"
    assert "generation prompt ends inside a token" in str(enc) and "' the'" in str(enc)


@pytest.mark.process
def test_foreign_templates_on_the_default_model(tmp_path):
    """The default model (SmolLM2, ChatML specials) given other families' templates: their markers
    are plain text to it. Each is flagged once, and no example is silently mis-masked: it either
    keeps exactly the template's tokenization, marker trained as text, or is a mask_invariant error."""
    from tunery.models import load_tokenizer

    tok = load_tokenizer("default")
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [Q1, A1]}, {"messages": [Q1, A1, Q2, A2]}])
    errors = {}
    for family in ("llama3", "command_r", "granite3_3", "gemma2", "gpt_oss"):
        template = str(TEMPLATES / f"{family}.jinja")
        report = check_dataset(path, tokenizer=tok, template=template)
        assert [(w["line"], w["code"]) for w in report["warnings"]] == [(0, "end_marker_not_special")], family
        errors[family] = [(e["line"], e["code"]) for e in report["errors"]]
        renderer = Renderer(tok, load_template(tok, template))
        for messages in ([Q1, A1], [Q1, A1, Q2, A2]):
            enc = renderer.encode_many([Conversation(messages=messages, weights=[None] * len(messages))])[0]
            if isinstance(enc, Invalid):  # GPT-OSS rewrites earlier turns whatever the tokenizer
                assert enc.code == ("mask_underivable" if family == "gpt_oss" else "mask_invariant")
                assert (2, enc.code) in errors[family]
                continue
            text = load_template(tok, template).render(messages)
            assert enc.input_ids == tok(text, add_special_tokens=False)["input_ids"]
            assert trained_runs(tok, enc)[-1].endswith(A2["content"] + TURN[family][1] if len(messages) == 4
                                                       else A1["content"] + TURN[family][1])
    # Llama 3 is the case from the report: "|><|" merges the marker's end into the next header.
    assert errors["llama3"] == [(2, "mask_invariant")]


# -- found in review: what templates do to content, other ways to end a turn ------------------------

TOOL_CALL = [{"type": "function", "id": "c1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]


def test_template_rewriting_content_trains_what_it_renders():
    # Qwen 3 moves reasoning written inside the content into its own think block.
    tok = tokenizer_for("qwen3")
    answer = {"role": "assistant", "content": "<think>Recall the capital.</think>Paris."}
    enc = encode(tok, [Q1, answer], [None, None])
    assert enc.input_ids == reference_ids(tok, [Q1, answer]) and not enc.warnings
    assert trained_runs(tok, enc) == ["<think>\nRecall the capital.\n</think>\n\nParis.<|im_end|>"]
    # Llama 3.1 renders a tool call and drops text beside it: trained as rendered, and said.
    tok = tokenizer_for("llama3_1")
    call = {"role": "assistant", "content": "Let me check.", "tool_calls": TOOL_CALL}
    enc = encode(tok, [Q1, call], [None, None])
    assert not isinstance(enc, Invalid), enc
    [trained] = trained_runs(tok, enc)
    assert "get_weather" in trained and trained.endswith("<|eot_id|>") and "Let me check." not in trained
    assert [code for code, _ in enc.warnings] == ["content_dropped"]


def test_turn_closed_by_another_end_token():
    # A GPT-OSS tool call ends with <|call|>, its final answers with <|return|>.
    tok = tokenizer_for("gpt_oss")
    call = {"role": "assistant", "content": "", "tool_calls": TOOL_CALL}
    enc = encode(tok, [Q1, call], [None, None])
    assert not isinstance(enc, Invalid), enc
    [trained] = trained_runs(tok, enc)
    assert "get_weather" in trained and trained.endswith("<|call|>")
    assert enc.input_ids == reference_ids(tok, [Q1, call])


def test_turn_rendered_as_only_its_end_is_an_error():
    # Granite 3.3 without tools in the request renders no tool call: the turn would be its end alone.
    tok = tokenizer_for("granite3_3")
    enc = encode(tok, [Q1, {"role": "assistant", "content": "", "tool_calls": TOOL_CALL}], [None, None])
    assert isinstance(enc, Invalid) and enc.code == "mask_invariant" and "without its content" in str(enc)


def test_content_starting_with_whitespace_is_named_as_the_cause():
    # A tokenizer that merges runs of newlines, as real ones do: the prompt's "\n" and the content's
    # "\n\n" become one token.
    tok = family_tokenizer(CHATML, specials=["<|im_start|>"], eos="<|im_end|>", corpus=["a\n\n\nb\n\n"])
    enc = encode(tok, [Q1, {"role": "assistant", "content": "\n\nParis."}], [None, None])
    assert isinstance(enc, Invalid) and enc.code == "mask_invariant" and "starts with whitespace" in str(enc)
    enc = encode(tok, [Q1, {"role": "assistant", "content": "Paris."}], [None, None])
    assert trained_runs(tok, enc) == ["Paris.<|im_end|>"]


def test_template_rejecting_the_probe_still_works_with_mask_all():
    tok = tokenizer_for("qwen2_5")
    needs_tools = ("{% if not tools %}{{ raise_exception('tools required') }}{% endif %}"
                   "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
                   "{% endfor %}")
    conv = Conversation(messages=[Q1, A1], weights=[None, None], tools=[{"type": "function", "function": {"name": "f"}}])
    enc = Renderer(tok, load_template(tok, needs_tools), "all").encode_many([conv])[0]
    assert not isinstance(enc, Invalid), enc
    assert enc.n_trained == len(enc.input_ids) and tok.eos_token_id in enc.input_ids  # the template's own <|im_end|>
    enc = Renderer(tok, load_template(tok, needs_tools)).encode_many([conv])[0]
    assert isinstance(enc, Invalid) and enc.code == "template_error"


def test_template_without_end_token_that_appends_the_next_header():
    tok = tokenizer_for("qwen2_5")
    template = "{% for m in messages %}### {{ m.role }}:\n{{ m.content }}\n\n{% endfor %}### assistant:\n"
    renderer = Renderer(tok, load_template(tok, template))
    assert [code for code, _ in renderer.template_warnings()] == ["no_end_marker"]
    enc = renderer.encode_many([Conversation(messages=[Q1, A1], weights=[None, None])])[0]
    # Jinja drops the template's final newline, so the prompt ends at "assistant:" and the newline
    # opens the turn. EOS is appended after the content; the trailing header is not trained.
    assert trained_runs(tok, enc) == ["\n" + A1["content"] + "<|im_end|>"]
