"""Structured outputs: answers held to a format (a JSON schema, any JSON object, a regex, a closed list of
choices) token by token on an untrained model, each row of a batch with its own grammar; the recipe's
recorded constraint."""

import json
import re

import jsonschema
import pytest

from tunery.config import AnswerFormat, load_train_config
from tunery.constrain import Constraint, check_format
from tunery.errors import ConfigError

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags"],
          "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}}}
LABELS = ["card_lost", "card_lost_abroad", "pin_blocked", "transfer_failed", 'say "hi"', "ünïcode"]
REGEX = r"[0-9]{3}-(yes|no)/x"
FORMATS = [AnswerFormat(json_schema=PERSON), AnswerFormat(regex=REGEX), AnswerFormat(choices=LABELS),
           AnswerFormat(json_object=True)]


def holds(fmt: AnswerFormat, text: str) -> bool:
    if fmt.choices is not None:
        return text in fmt.choices
    if fmt.regex is not None:
        return re.fullmatch(fmt.regex, text) is not None
    value = json.loads(text)
    if fmt.json_object:
        return isinstance(value, dict)
    jsonschema.validate(value, fmt.json_schema)
    return True


@pytest.fixture(scope="module")
def gen(tiny_model):
    from tunery.generation import Generator

    return Generator(str(tiny_model))


def _constraint(gen, fmt):
    return Constraint.from_format(fmt, gen.tokenizer, gen.stop_ids, "constraint")


def _asks(n):
    return [[{"role": "user", "content": f"question {i}: who?"}] for i in range(n)]


def test_each_row_of_a_batch_holds_to_its_own_format(gen):
    """Rows with different formats and a free row, in one batch: every constrained answer parses
    and matches, and the free row answers exactly as it does without any constraint."""
    fmts = FORMATS + [None]
    free = gen.chat(_asks(len(fmts)), max_new_tokens=60)
    out = gen.chat(_asks(len(fmts)), max_new_tokens=60, batch_size=len(fmts),
                   constraints=[_constraint(gen, f) if f else None for f in fmts])
    for fmt, g in zip(FORMATS, out):
        assert g.finish_reason == "stop" and holds(fmt, g.text), (fmt.describe(), g.text)
    assert out[-1].text == free[-1].text
    assert not holds(AnswerFormat(choices=LABELS), free[0].text)  # the untrained model does not by itself


def test_sampled_answers_always_hold(gen):
    """Sampling explores what greedy never does: 12 sampled answers per format, all in the format (an
    answer that runs out of tokens is cut: any JSON object may be longer than max_tokens)."""
    for fmt in FORMATS:
        first = _constraint(gen, fmt)
        out = gen.chat(_asks(12), max_new_tokens=60, batch_size=12, temperature=1.0, seed=1,
                       constraints=[first] + [first.copy() for _ in range(11)])
        assert all(holds(fmt, g.text) for g in out if g.finish_reason == "stop"), [g.text for g in out]
        assert sum(g.finish_reason == "stop" for g in out) >= (6 if fmt.json_object else 12)
        if fmt.choices:
            assert len({g.text for g in out}) > 1  # the copies start afresh, each its own state


def test_formats_that_do_not_compile_are_config_errors_naming_the_field(gen):
    bad = [(AnswerFormat(regex="a(b"), "unclosed group"), (AnswerFormat(regex="a(?=b)"), "look-around"),
           (AnswerFormat(json_schema={"type": "object", "not": {"type": "string"}}), "not"),
           (AnswerFormat(json_schema={"properties": {"a": {"$ref": "https://example.com/s.json"}}}), "example.com")]
    for fmt, words in bad:
        for compile_ in (lambda: check_format(fmt, "--regex"), lambda: Constraint.from_format(
                fmt, gen.tokenizer, gen.stop_ids, "--regex")):
            with pytest.raises(ConfigError) as err:
                compile_()
            assert err.value.field == "--regex" and str(err.value).startswith("--regex: cannot be compiled")
            assert words in str(err.value) and "\n" not in str(err.value)


def test_many_choices_are_one_automaton(gen):
    """Ten thousand choices compile (a single lexeme, not ten thousand parser items) and hold."""
    labels = [f"label number {i} of many" for i in range(10_000)]
    out = gen.chat(_asks(2), max_new_tokens=40, constraints=[_constraint(gen, AnswerFormat(choices=labels))
                                                              for _ in range(2)])
    assert all(g.text in labels for g in out)


def test_a_grammar_past_its_limits_ends_the_answer(gen):
    """A parser limit reached while generating puts the grammar in error: the row may then only stop."""
    c = _constraint(gen, AnswerFormat(regex="[a-z]+"))
    c.matcher.consume_token(gen.stop_ids[0])  # a token the grammar refuses: the matcher is in error
    out = gen.chat(_asks(1), max_new_tokens=20, constraints=[c])
    assert out[0].text == "" and out[0].finish_reason == "stop" and c.error


# -- the recipe's constraint ---------------------------------------------------------------------------
def test_the_recipe_records_a_constraint_in_every_written_form(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("yes\nno\n\nmaybe\nno\n")
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(PERSON))
    forms = {f"choices:{labels}": {"choices": ["yes", "no", "maybe"]}, "choices:a,b": {"choices": ["a", "b"]},
             f"schema:{schema}": {"json_schema": PERSON}, "regex:[0-9]+": {"regex": "[0-9]+"},
             "json": {"json_object": True}, "none": None}
    for given, dumped in forms.items():
        cfg = load_train_config(data="x.jsonl", constraint=given)
        assert cfg.model_dump()["constraint"] == dumped
        assert load_train_config(data="x.jsonl", constraint=dumped).constraint == cfg.constraint  # read back
    yaml_file = tmp_path / "r.yaml"
    yaml_file.write_text(f"data: x.jsonl\nconstraint:\n  choices: {labels}\n")
    assert load_train_config(str(yaml_file)).constraint.choices == ["yes", "no", "maybe"]
    for given, words in ((f"choices:{tmp_path}/nope.txt", "no such file"), ("regex:", "write json"),
                         ({"regex": "a", "choices": ["b"]}, "exactly one"), ({"choices": []}, "at least 1")):
        with pytest.raises(ConfigError) as err:
            load_train_config(data="x.jsonl", constraint=given)
        assert err.value.field.startswith("constraint") and words in str(err.value)



def test_training_evaluates_generation_under_its_constraint(tiny_model, tmp_path):
    """--eval-generate-every generates under the recipe's constraint: `valid` is 1 even untrained."""
    from conftest import write_jsonl
    from tunery.training import train

    rows = [{"messages": [{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": "yes"}]}
            for i in range(16)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    kw = dict(model=str(tiny_model), data=str(data), method="lora", max_steps=2, batch_size=8, val_split=0.25,
              eval_generate_every=2, eval_metric="valid", eval_samples=4, eval_max_new_tokens=8)
    with pytest.raises(ConfigError, match="eval_metric: valid"):
        train(dict(kw, out=str(tmp_path / "a")), progress=False)
    with pytest.raises(ConfigError, match="constraint: cannot be compiled"):
        train(dict(kw, out=str(tmp_path / "b"), constraint="regex:a(b"), progress=False)
    run = train(dict(kw, out=str(tmp_path / "c"), constraint="choices:yes,no"), progress=False)
    assert [r["eval_valid"] for r in run.metrics if "eval_valid" in r] == [1.0]
