"""Loss masks token by token on the tiny ChatML template, against sequences built by hand."""

import pytest
from conftest import write_jsonl

from tunery.data import ChatTemplate, Renderer, check_dataset, load_template
from tunery.data.formats import Invalid
from tunery.data.types import Conversation

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
Q1 = {"role": "user", "content": "What is the capital of France?"}
A1 = {"role": "assistant", "content": "The capital of France is Paris."}
Q2 = {"role": "user", "content": "How are you today?"}
A2 = {"role": "assistant", "content": "I am fine, thank you."}

# Same turns as ChatML, but the assistant's text sits in {% generation %} markers.
GENERATION_CHATML = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# No end-of-turn token anywhere: turns are separated by blank lines.
PLAIN = (
    "{% for m in messages %}{{ m['role'] + ':\n' + m['content'] + '\n\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:\n' }}{% endif %}"
)
# Renders the conversation backwards: no prefix of it is a prefix of the whole.
REVERSED = (
    "{% for m in messages|reverse %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Drops the content of every assistant turn but the last (as reasoning templates drop thinking).
DROPS_EARLIER = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' and not loop.last %}{{ '<|im_start|>assistant\n<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The generation prompt names a different role than assistant turns do.
MISMATCHED_PROMPT = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>model\n' }}{% endif %}"
)


def ids(tok, text):
    return tok.encode(text, add_special_tokens=False)


def build(tok, pieces):
    """Expected (input_ids, mask) from (text, trained) pieces, each tokenized on its own."""
    out_ids, out_mask = [], []
    for text, trained in pieces:
        piece = [text] if isinstance(text, int) else ids(tok, text)
        out_ids += piece
        out_mask += [int(trained)] * len(piece)
    return out_ids, out_mask


def chatml(messages, trained_turns):
    """The ChatML pieces: role header, content, <|im_end|>, newline; trained turns mark content+end."""
    pieces = []
    for i, m in enumerate(messages):
        t = i in trained_turns
        pieces += [("<|im_start|>" + m["role"] + "\n", 0), (m["content"], t), ("<|im_end|>", t), ("\n", 0)]
    return pieces


def encode(tok, messages, mask="assistant", weights=None, template=None):
    tmpl = ChatTemplate(template) if template else load_template(tok)
    conv = Conversation(messages=messages, weights=weights or [None] * len(messages))
    return Renderer(tok, tmpl, mask).encode_many([conv])[0]


def assert_encoded(enc, expected, tok):
    assert not isinstance(enc, Invalid), enc
    exp_ids, exp_mask = expected
    assert enc.input_ids == exp_ids, (tok.convert_ids_to_tokens(enc.input_ids), tok.convert_ids_to_tokens(exp_ids))
    got = [(tok.convert_ids_to_tokens(i), m) for i, m in zip(enc.input_ids, enc.loss_mask)]
    want = [(tok.convert_ids_to_tokens(i), m) for i, m in zip(exp_ids, exp_mask)]
    assert got == want


def test_pieces_tokenize_like_the_whole(tiny_tokenizer):
    # The hand-built sequences below are only meaningful if pieces do not merge across borders.
    msgs = [SYSTEM, Q1, A1, Q2, A2]
    text = load_template(tiny_tokenizer).render(msgs)
    assert build(tiny_tokenizer, chatml(msgs, set()))[0] == ids(tiny_tokenizer, text)


def test_single_turn(tiny_tokenizer):
    msgs = [Q1, A1]
    enc = encode(tiny_tokenizer, msgs)
    assert_encoded(enc, build(tiny_tokenizer, chatml(msgs, {1})), tiny_tokenizer)
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    # Exactly the answer's tokens plus the <|im_end|> closing it.
    trained = [t for t, m in zip(enc.input_ids, enc.loss_mask) if m]
    assert trained == ids(tiny_tokenizer, A1["content"]) + [im_end]


def test_multi_turn_with_system(tiny_tokenizer):
    msgs = [SYSTEM, Q1, A1, Q2, A2]
    enc = encode(tiny_tokenizer, msgs)
    assert_encoded(enc, build(tiny_tokenizer, chatml(msgs, {2, 4})), tiny_tokenizer)
    assert enc.n_trained == len(ids(tiny_tokenizer, A1["content"])) + len(ids(tiny_tokenizer, A2["content"])) + 2


def test_mask_last(tiny_tokenizer):
    msgs = [SYSTEM, Q1, A1, Q2, A2]
    assert_encoded(encode(tiny_tokenizer, msgs, mask="last"), build(tiny_tokenizer, chatml(msgs, {4})), tiny_tokenizer)


def test_mask_all_trains_every_token_and_adds_nothing(tiny_tokenizer):
    msgs = [SYSTEM, Q1, A1, Q2, A2]
    enc = encode(tiny_tokenizer, msgs, mask="all")
    expected_ids = ids(tiny_tokenizer, load_template(tiny_tokenizer).render(msgs))
    assert enc.input_ids == expected_ids
    assert enc.loss_mask == [1] * len(expected_ids)


def test_weight_zero_turn_is_excluded(tiny_tokenizer):
    msgs = [SYSTEM, Q1, A1, Q2, A2]
    enc = encode(tiny_tokenizer, msgs, weights=[None, None, 0.0, None, 1.0])
    assert_encoded(enc, build(tiny_tokenizer, chatml(msgs, {4})), tiny_tokenizer)
    enc = encode(tiny_tokenizer, msgs, weights=[None, None, 1.0, None, 0.0])
    assert_encoded(enc, build(tiny_tokenizer, chatml(msgs, {2})), tiny_tokenizer)


def test_all_weights_zero_is_nothing_trainable(tiny_tokenizer):
    enc = encode(tiny_tokenizer, [Q1, A1, Q2, A2], weights=[None, 0.0, None, 0.0])
    assert isinstance(enc, Invalid) and enc.code == "nothing_trainable"
    # With --mask last, a weight-0 last turn leaves nothing either.
    enc = encode(tiny_tokenizer, [Q1, A1, Q2, A2], mask="last", weights=[None, None, None, 0.0])
    assert isinstance(enc, Invalid) and enc.code == "nothing_trainable"


def test_tool_call_turns(tiny_tokenizer):
    tool_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}"
        "{% if m.get('tool_calls') %}{% for c in m['tool_calls'] %}{{ c['function']['name'] + ' ' + c['function']['arguments']|tojson }}{% endfor %}"
        "{% else %}{{ m['content'] }}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    call = {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]}
    msgs = [Q1, call, {"role": "tool", "content": "sunny"}, A1]
    enc = encode(tiny_tokenizer, msgs, template=tool_template)
    pieces = [("<|im_start|>user\n", 0), (Q1["content"], 0), ("<|im_end|>", 0), ("\n", 0),
              ("<|im_start|>assistant\n", 0), ('weather {"city": "Paris"}', 1), ("<|im_end|>", 1), ("\n", 0),
              ("<|im_start|>tool\n", 0), ("sunny", 0), ("<|im_end|>", 0), ("\n", 0),
              ("<|im_start|>assistant\n", 0), (A1["content"], 1), ("<|im_end|>", 1), ("\n", 0)]
    assert_encoded(enc, build(tiny_tokenizer, pieces), tiny_tokenizer)


def test_template_without_end_token_gets_eos_appended_and_trained(tiny_tokenizer):
    msgs = [Q1, A1, Q2, A2]
    eos = tiny_tokenizer.eos_token_id
    enc = encode(tiny_tokenizer, msgs, template=PLAIN)
    pieces = [("user:\n", 0), (Q1["content"], 0), ("\n\n", 0),
              ("assistant:\n", 0), (A1["content"], 1), (eos, 1), ("\n\n", 0),
              ("user:\n", 0), (Q2["content"], 0), ("\n\n", 0),
              ("assistant:\n", 0), (A2["content"], 1), (eos, 1), ("\n\n", 0)]
    assert_encoded(enc, build(tiny_tokenizer, pieces), tiny_tokenizer)


def test_generation_markers_still_work(tiny_tokenizer):
    msgs = [SYSTEM, Q1, A1, Q2, A2]
    enc = encode(tiny_tokenizer, msgs, template=GENERATION_CHATML)
    assert_encoded(enc, build(tiny_tokenizer, chatml(msgs, {2, 4})), tiny_tokenizer)


@pytest.mark.parametrize("template", [REVERSED, DROPS_EARLIER, MISMATCHED_PROMPT],
                         ids=["reversed", "drops-earlier-turns", "mismatched-prompt"])
def test_underivable_template_is_an_error_never_a_mask(tiny_tokenizer, template):
    enc = encode(tiny_tokenizer, [Q1, A1, Q2, A2], template=template)
    assert isinstance(enc, Invalid)
    assert enc.code == "mask_underivable"


def test_drops_earlier_turns_is_fine_when_only_the_last_is_trained(tiny_tokenizer):
    msgs = [Q1, A1, Q2, A2]
    enc = encode(tiny_tokenizer, msgs, mask="last", template=DROPS_EARLIER)
    pieces = [("<|im_start|>user\n", 0), (Q1["content"], 0), ("<|im_end|>", 0), ("\n", 0),
              ("<|im_start|>assistant\n", 0), ("<|im_end|>", 0), ("\n", 0),
              ("<|im_start|>user\n", 0), (Q2["content"], 0), ("<|im_end|>", 0), ("\n", 0),
              ("<|im_start|>assistant\n", 0), (A2["content"], 1), ("<|im_end|>", 1), ("\n", 0)]
    assert_encoded(enc, build(tiny_tokenizer, pieces), tiny_tokenizer)


def test_underivable_template_through_the_doctor(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [Q1, A1]}, {"messages": [Q1, A1, Q2, A2]}])
    report = check_dataset(path, tokenizer=tiny_tokenizer, template=REVERSED)
    # A single-turn conversation reversed still fails: the answer renders before the question.
    assert [(e["line"], e["code"]) for e in report["errors"]] == [(1, "mask_underivable"), (2, "mask_underivable")]
    assert report["ok"] is False and report["good"] == 0
    assert report["stats"]["trainable_tokens"] == 0


def test_template_errors_and_missing_template(tiny_tokenizer):
    raising = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
               "{{ m['content'] }}{% endfor %}")
    enc = encode(tiny_tokenizer, [SYSTEM, Q1, A1], template=raising)
    assert isinstance(enc, Invalid) and enc.code == "template_error" and "no system role" in str(enc)
    conv = Conversation(messages=[Q1, A1], weights=[None, None])
    enc = Renderer(tiny_tokenizer, None).encode_many([conv])[0]
    assert isinstance(enc, Invalid) and enc.code == "no_template"
    # Plain text needs no template.
    enc = Renderer(tiny_tokenizer, None).encode_many([Conversation(text="hello")])[0]
    assert not isinstance(enc, Invalid) and enc.n_trained == len(ids(tiny_tokenizer, "hello")) + 1


def test_batch_encoding_matches_one_by_one(tiny_tokenizer):
    convs = [Conversation(messages=[Q1, A1], weights=[None, None]),
             Conversation(messages=[Q1, A1, Q2, A2], weights=[None, 0.0, None, None]),
             Conversation(messages=[Q2], weights=[None]),  # no assistant: nothing to train
             Conversation(text="Hello world")]
    r = Renderer(tiny_tokenizer, load_template(tiny_tokenizer))
    batch = r.encode_many(convs)
    for conv, got in zip(convs, batch):
        one = r.encode_many([conv])[0]
        if isinstance(one, Invalid):
            assert isinstance(got, Invalid) and got.code == one.code
        else:
            assert (got.input_ids, got.loss_mask) == (one.input_ids, one.loss_mask)
