"""Structured outputs: answers held to a format (a JSON schema, any JSON object, a regex, a closed list of
choices) token by token on an untrained model, each row of a batch with its own grammar; the recipe's
recorded constraint; choices scored by log-probability; the command line's flags and one-line errors; the
recipe's constraint applied by eval and compare."""

import json
import re

import jsonschema
import pytest

from clirun import one_line_error, tunery_cli
from conftest import write_jsonl
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


def test_a_row_the_loop_ends_early_is_padded_without_breaking_its_grammar(gen):
    """A row ended by the loop while others go on (its budget, a stop string) is padded; with a pad
    token that is no stop token (as Gemma's <pad>), the padding is not fed to the row's grammar."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    from tunery.generation import generate_batch

    class EndRowZero(StoppingCriteria):
        steps = 0

        def __call__(self, input_ids, scores, **kw):
            self.steps += 1
            return torch.tensor([self.steps >= 3, False])

    pad = gen.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert pad not in gen.stop_ids
    fmt = AnswerFormat(regex="[a-z]{10}")
    rows = [_constraint(gen, fmt) for _ in range(2)]
    before, gen.tokenizer.pad_token = gen.tokenizer.pad_token, "<|im_start|>"
    try:
        out = generate_batch(gen.model, gen.tokenizer, [gen.prompt_ids(a) for a in _asks(2)], gen.stop_ids,
                             max_new_tokens=14, stopping_criteria=StoppingCriteriaList([EndRowZero()]), constraints=rows)
    finally:
        gen.tokenizer.pad_token = before
    padding = out[0].token_ids[3:]
    assert padding and set(padding) == {pad} and rows[0].error is None and rows[0].done
    assert rows[1].error is None and re.fullmatch("[a-z]{10}", out[1].text), out[1]


def test_a_schema_that_admits_no_answer_fails_when_compiled(gen):
    with pytest.raises(ConfigError, match="^f: admits no answer"):
        Constraint.from_format(AnswerFormat(json_schema={"$ref": "#"}), gen.tokenizer, gen.stop_ids, "f")
    any_json = _constraint(gen, AnswerFormat(json_schema={}))  # the empty schema: any JSON value
    out = gen.chat(_asks(1), max_new_tokens=40, constraints=[any_json])
    if out[0].finish_reason == "stop":
        json.loads(out[0].text)  # any JSON value parses


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


# -- the command line ------------------------------------------------------------------------------
INTENTS = ["check_balance", "card_lost", "card_lost_abroad", "transfer", "pin_blocked", "close_account"]


@pytest.fixture(scope="module")
def labelled(tiny_model, tmp_path_factory):
    """A fine-tune whose recipe records the labels as its constraint (trained a few steps: its answers
    are not yet labels by themselves)."""
    from tunery.training import train

    folder = tmp_path_factory.mktemp("structured")
    rows = [{"messages": [{"role": "user", "content": f"request {i}"},
                          {"role": "assistant", "content": INTENTS[i % len(INTENTS)]}]} for i in range(40)]
    train_file = write_jsonl(folder / "train.jsonl", rows[:32])
    test_file = write_jsonl(folder / "test.jsonl", rows[32:])
    labels = folder / "labels.txt"
    labels.write_text("\n".join(INTENTS) + "\n")
    run = train(dict(model=str(tiny_model), data=str(train_file), out=str(folder / "run"), method="lora",
                     max_steps=2, batch_size=8, val_split=0, constraint=f"choices:{labels}"), progress=False)
    return run, train_file, test_file, labels


def _cli(tmp_path, *args):
    out = tunery_cli(*args, home=tmp_path / "home")
    return out


def test_a_recipe_constraint_is_recorded_and_evaluated_with_by_default(labelled, tmp_path):
    import yaml

    run, _, test_file, _ = labelled
    assert yaml.safe_load((run.dir / "config.yaml").read_text())["constraint"] == {"choices": INTENTS}
    out = _cli(tmp_path, "eval", run.dir, "--data", test_file, "--max-new-tokens", "12", "--json")
    assert out.returncode == 0, out.stderr
    held = json.loads(out.stdout)
    assert held["decoding"] == "constrained" and held["metrics"]["valid"] == 1.0 and held["grammar_errors"] == 0
    assert all(e["prediction"] in INTENTS for e in held["examples"])
    out = _cli(tmp_path, "eval", run.dir, "--data", test_file, "--max-new-tokens", "12", "--no-constrain", "--json")
    free = json.loads(out.stdout)
    assert free["decoding"] == "free" and free["metrics"]["valid"] < 1.0  # scored against the format all the same
    out = _cli(tmp_path, "generate", run.dir, "--prompt", "request 3", "--max-new-tokens", "12")
    assert out.returncode == 0 and out.stdout.strip() in INTENTS, out


def test_an_answer_whose_grammar_gave_up_is_counted_not_hidden(labelled, monkeypatch):
    """A grammar that reaches a parser limit ends its answer; eval says which and how many."""
    from tunery.constrain import Constraint
    from tunery.evaluate.evaluator import evaluate, format_options, load_cases, recorded_format
    from tunery.generation import Generator

    run, _, test_file, _ = labelled
    real_copy = Constraint.copy

    def broken(self):
        c = real_copy(self)
        c.matcher.consume_token(self.stop_ids[0])  # refused by the grammar: in error from the start
        return c

    monkeypatch.setattr(Constraint, "copy", broken)
    cases = load_cases(test_file)
    result = evaluate(Generator(str(run.dir)), cases, ["exact"], max_new_tokens=8,
                      options=format_options(recorded_format(str(run.dir))))
    assert result["grammar_errors"] == len(cases) - 1  # every answer but the first, whose grammar is the original
    assert [("grammar_error" in e) for e in result["examples"]] == [False] + [True] * (len(cases) - 1)
    assert result["metrics"]["valid"] <= 1 / len(cases)


def test_choices_are_scored_by_log_probability(labelled, tmp_path):
    """--score ranks every label by its log-probability (the label and its end-of-turn marker), one
    forward pass per example: the answer is the most likely label, and the ranking gives top-3."""
    from tunery.evaluate.choices import ranked, score_choices
    from tunery.generation import Generator

    run, _, test_file, labels = labelled
    out = _cli(tmp_path, "eval", run.dir, "--data", test_file, "--choices", labels, "--score", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["decoding"] == "scored" and {"choice_accuracy", "choice_top3", "valid"} <= result["metrics"].keys()
    assert result["metrics"]["choice_top3"] >= result["metrics"]["choice_accuracy"]
    assert all(e["prediction"] == e["top"][0][0] and len(e["top"]) == 3 for e in result["examples"])
    # The scores are the summed log-probabilities of each label's answer tokens, computed by hand here.
    import torch

    gen = Generator(str(run.dir))
    prompt = [{"role": "user", "content": "request 5"}]
    scores = score_choices(gen, [prompt], INTENTS)[0]
    for label, score in zip(INTENTS, scores):
        ids = gen.prompt_ids(prompt)
        answer = gen.tokenizer(label + "<|im_end|>", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = gen.model(torch.tensor([ids + answer])).logits[0].float().log_softmax(-1)
        by_hand = sum(logits[len(ids) - 1 + k, t].item() for k, t in enumerate(answer))
        assert score == pytest.approx(by_hand, abs=1e-3)
    assert ranked(scores, INTENTS)[0][0] == INTENTS[max(range(len(INTENTS)), key=scores.__getitem__)]


def test_compare_runs_each_contestant_with_and_without_the_constraint(labelled, tmp_path):
    run, train_file, test_file, _ = labelled
    out = _cli(tmp_path, "compare", "--base", run.config["model"], "--tuned", run.dir, "--data", test_file,
               "--few-shot", "1", "--metrics", "exact", "--max-new-tokens", "12", "--json",
               "--report-dir", tmp_path / "report")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    cs = result["contestants"]
    assert set(cs) == {f"{n}{s}" for n in ("base", "prompt_only", "tuned") for s in ("", "_constrained")}
    s = result["summary"]  # the fine-tune the verdict judged, against the baseline run the same way
    assert s["tuned"] == result["verdict"]["best_tuned"]
    assert s["baseline"] == "prompt_only" + ("_constrained" if s["tuned"].endswith("_constrained") else "")
    assert s["prompt_tokens_saved_per_request"] == cs[s["baseline"]]["prompt_tokens_per_request"] - \
        cs[s["tuned"]]["prompt_tokens_per_request"]
    for name, c in cs.items():
        assert c["decoding"] == ("constrained" if name.endswith("_constrained") else "free")
        if name.endswith("_constrained"):
            assert c["metrics"]["valid"] == 1.0
    assert "tuned_constrained" in (tmp_path / "report" / "report.html").read_text()
    out = _cli(tmp_path, "compare", "--base", run.config["model"], "--tuned", run.dir, "--data", test_file,
               "--few-shot", "0", "--max-new-tokens", "4", "--no-constrain", "--json", "--report-dir", tmp_path / "r2")
    assert set(json.loads(out.stdout)["contestants"]) == {"base", "prompt_only", "tuned"}


def test_bad_formats_on_the_command_line_are_one_line_errors(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "t.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                            {"role": "assistant", "content": "a"}]}])
    (tmp_path / "bad.json").write_text('{"type": "object",\n  oops}')
    (tmp_path / "empty.txt").write_text("\n \n")
    cases = [(["--schema", tmp_path / "missing.json"], "--schema", "no such file"),
             (["--schema", tmp_path / "bad.json"], "--schema", "bad.json:2: not JSON"),
             (["--regex", "a(b"], "--regex", "unclosed group"),
             (["--choices", tmp_path / "empty.txt"], "--choices", "no choices"),
             (["--choices", tmp_path / "nope.txt"], "--choices", "no such file"),
             (["--choices", "a,b", "--regex", "x"], "--regex and --choices", "one format"),
             (["--score"], "--score", "needs the choices"),
             (["--regex", "[0-9]+", "--score"], "--score", "closed list")]
    for flags, field, words in cases:
        for command in (["eval", tiny_model, "--data", data], ["generate", tiny_model, "--prompt", "q"]):
            if "--score" in flags and command[0] == "generate":
                continue
            line = one_line_error(_cli(tmp_path, *command, *flags))
            assert line.startswith(f"error: {field}") and words in line, (command[0], line)
    out = _cli(tmp_path, "generate", tiny_model, "--prompt", "q", "--regex", "[0-9]{3}-(yes|no)", "--max-new-tokens", "20")
    assert out.returncode == 0 and re.fullmatch("[0-9]{3}-(yes|no)", out.stdout.strip()), out


def test_the_structured_example_is_what_make_data_writes_and_every_answer_holds(tmp_path):
    """examples/structured: the committed files are make_data.py's deterministic output, the held-out
    messages never appear in training, and every answer holds to the format its recipe records."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from tunery.config import answer_format

    example = Path(__file__).parent.parent / "examples/structured"
    shutil.copy(example / "make_data.py", tmp_path)
    subprocess.run([sys.executable, str(tmp_path / "make_data.py")], check=True, capture_output=True)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".py")
    assert written and written == sorted(p.relative_to(example) for p in example.rglob("*")
                                         if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts)
    for rel in written:
        assert (tmp_path / rel).read_bytes() == (example / rel).read_bytes(), rel
    formats = {"intents": answer_format(choices=str(example / "intents/labels.txt")),
               "tickets": answer_format(schema=str(example / "tickets/schema.json"))}
    assert len(formats["intents"].choices) == 40
    for task, fmt in formats.items():
        rows = {split: [json.loads(line)["messages"] for line in (example / task / f"{split}.jsonl").open()]
                for split in ("train", "test")}
        assert not {m[0]["content"] for m in rows["train"]} & {m[0]["content"] for m in rows["test"]}
        for messages in rows["train"] + rows["test"]:
            assert holds(fmt, messages[-1]["content"]), messages
