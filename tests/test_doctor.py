"""The data doctor: every error code with its line, warnings, length policies, the stats block,
and the train/validation split."""

import json
import statistics

import pytest
from conftest import write_jsonl

from tunery.config import DataConfig
from tunery.data import Renderer, check_dataset, load_template, scan_file, split_examples
from tunery.data.dataset import Example
from tunery.data.types import Conversation
from tunery.errors import DataError


def u(text):
    return {"role": "user", "content": text}


def a(text, **extra):
    return {"role": "assistant", "content": text, **extra}


def ok_row(i=0):
    return {"messages": [u(f"What is {i} + {i}?"), a(f"It is {2 * i}.")]}


def issues(report, kind="errors"):
    return [(e["line"], e["code"]) for e in report[kind]]


def check(path, tok, **kw):
    return check_dataset(path, tokenizer=tok, **kw)


def test_clean_file(tmp_path, tiny_tokenizer):
    report = check(write_jsonl(tmp_path / "d.jsonl", [ok_row(i) for i in range(3)]), tiny_tokenizer)
    assert report["ok"] is True
    assert (report["examples"], report["good"], report["errors"], report["warnings"]) == (3, 3, [], [])
    assert report["stats"]["bad"] == 0 and report["stats"]["format"] == "chat"


def test_one_file_with_every_problem_lists_them_all(tmp_path, tiny_tokenizer):
    call = lambda args: {"id": "c", "type": "function", "function": {"name": "f", "arguments": args}}  # noqa: E731
    rows = [
        ok_row(1),                                                                   # 1
        '{"messages": [{"role": "user", "content": "hi"}',                           # 2 invalid_json
        "[1, 2, 3]",                                                                 # 3 not_object
        {"prompt": "wrong format"},                                                  # 4 missing_messages
        {"messages": "hello"},                                                       # 5 messages_not_list
        {"messages": [{"role": "robot", "content": "beep"}, a("x")]},                # 6 unknown_role
        {"messages": [{"role": "user"}, a("x")]},                                    # 7 missing_content
        {"messages": [u("   "), a("x")]},                                            # 8 empty_content
        {"messages": [u("q"), a(42)]},                                               # 9 content_type
        {"messages": [u("just a question")]},                                        # 10 no_assistant
        {"messages": [u("q"), a("x", weight=0)]},                                    # 11 nothing_trainable
        {"messages": [u("q"), a(None, tool_calls=[call("{not json")])]},             # 12 bad_tool_arguments
        {"messages": [u("q"), a("x", weight=2)]},                                    # 13 bad_weight
        "",                                                                          # 14 (blank: skipped)
        ok_row(1),                                                                   # 15 duplicate of 1
        {"messages": [u("q"), a("x", tool_calls=[{"function": {"arguments": {}}}])]},  # 16 bad_tool_call
        {"messages": [u("q"), a(None, tool_calls=[call("[1, 2]")])]},                # 17 bad_tool_arguments
        {"messages": [u("q"), {"role": "assistant", "content": "x", "weight": True}]},  # 18 bad_weight
        {"messages": [u("q"), a("x"), u("r"), a("y", weight=0.5)]},                  # 19 bad_weight
        {"messages": [{"role": "user", "content": "q", "weight": 1}, a("x")]},       # 20 bad_weight (user)
        ok_row(2),                                                                   # 21
    ]
    report = check(write_jsonl(tmp_path / "d.jsonl", rows), tiny_tokenizer)
    assert issues(report) == [
        (2, "invalid_json"), (3, "not_object"), (4, "missing_messages"), (5, "messages_not_list"),
        (6, "unknown_role"), (7, "missing_content"), (8, "empty_content"), (9, "content_type"),
        (10, "no_assistant"), (11, "nothing_trainable"), (12, "bad_tool_arguments"), (13, "bad_weight"),
        (16, "bad_tool_call"), (17, "bad_tool_arguments"), (18, "bad_weight"), (19, "bad_weight"),
        (20, "bad_weight"),
    ]
    assert issues(report, "warnings") == [(15, "duplicate")]
    assert "line 1" in report["warnings"][0]["message"]
    assert report["ok"] is False
    assert report["examples"] == 20 and report["good"] == 3   # 1, 15 (a duplicate is kept) and 21
    assert report["error_count"] == 17 and report["stats"]["bad"] == 17
    assert report["stats"]["duplicates"] == 1
    by_line = {e["line"]: e["message"] for e in report["errors"]}
    assert "robot" in by_line[6] and "messages[1].content" in by_line[9]
    assert "messages[1].tool_calls[0].function.arguments" in by_line[12]
    for e in report["errors"]:
        assert set(e) == {"line", "code", "message"} and e["message"]


def test_hostile_rows_are_row_errors_not_crashes(tmp_path, tiny_tokenizer):
    """What a network upload may hold: a role that is an object, an integer of thousands of digits,
    nesting deeper than Python's parser goes; each is its row's error, the rest are read."""
    rows = [{"messages": [{"role": {"a": 1}, "content": "x"}, a("y")]},                 # 1 unknown_role
            '{"messages": [], "n": ' + "9" * 5000 + "}",                                # 2 invalid_json
            "[" * 100_000 + "]" * 100_000,                                             # 3 invalid_json
            ok_row(1)]
    report = check(write_jsonl(tmp_path / "d.jsonl", rows), tiny_tokenizer)
    assert issues(report) == [(1, "unknown_role"), (2, "invalid_json"), (3, "invalid_json")]
    assert "too long" in report["errors"][1]["message"] and "nested too deeply" in report["errors"][2]["message"]
    assert report["good"] == 1
    deep = tmp_path / "d.json"
    deep.write_text("[" + "[" * 100_000 + "]" * 100_000 + "]")
    with pytest.raises(DataError, match=r"d.json:1: invalid JSON .*nested too deeply"):
        check(deep, tiny_tokenizer)


def test_empty_file(tmp_path, tiny_tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text("\n\n")
    report = check(path, tiny_tokenizer)
    assert issues(report) == [(0, "empty_file")] and report["ok"] is False
    empty = tmp_path / "e.json"
    empty.write_text("[]")
    assert issues(check(empty, tiny_tokenizer)) == [(0, "empty_file")]


def long_row(n_words=200):
    return {"messages": [u("Tell me a long story."), a(" ".join(["fox"] * n_words))]}


def lengths_of(tok, rows, mask="assistant"):
    """Token counts and trained counts of chat rows, straight from the renderer."""
    r = Renderer(tok, load_template(tok), mask)
    convs = [Conversation(messages=row["messages"], weights=[None] * len(row["messages"])) for row in rows]
    encs = r.encode_many(convs)
    return [len(e.input_ids) for e in encs], [e.n_trained for e in encs]


def test_overlong_drop_is_the_default(tmp_path, tiny_tokenizer):
    rows = [ok_row(1), long_row(), ok_row(2)]
    (n1, nlong, n2), (t1, _, t2) = lengths_of(tiny_tokenizer, rows)
    assert nlong > 64 >= max(n1, n2)
    report = check(write_jsonl(tmp_path / "d.jsonl", rows), tiny_tokenizer, max_length=64)
    assert report["ok"] is True and report["errors"] == []
    assert issues(report, "warnings") == [(2, "too_long")]
    assert "dropped" in report["warnings"][0]["message"] and str(nlong) in report["warnings"][0]["message"]
    s = report["stats"]
    assert (report["good"], s["dropped"], s["truncated"]) == (2, 1, 0)
    assert s["tokens_per_epoch"] == n1 + n2 and s["trainable_tokens"] == t1 + t2
    assert s["tokens_per_example"]["max"] == nlong  # lengths are before the length policy


def test_every_example_dropped_is_not_ok(tmp_path, tiny_tokenizer):
    rows = [long_row(), long_row(150)]
    (n1, n2), _ = lengths_of(tiny_tokenizer, rows)
    report = check(write_jsonl(tmp_path / "d.jsonl", rows), tiny_tokenizer, max_length=64)
    assert report["ok"] is False and report["good"] == 0 and report["stats"]["dropped"] == 2
    assert issues(report) == [(0, "no_usable_examples")]
    assert report["errors"][0]["message"] == (
        f"no usable examples: all 2 examples are longer than max_length 64 (the shortest has {min(n1, n2)} tokens); "
        "raise max_length or set overlong to truncate")
    assert issues(report, "warnings") == [(1, "too_long"), (2, "too_long")]
    # One example: said so. Some dropped, the rest bad: both counted.
    report = check(write_jsonl(tmp_path / "one.jsonl", [long_row()]), tiny_tokenizer, max_length=64)
    assert report["errors"][0]["message"].startswith("no usable examples: the one example is longer than max_length 64")
    report = check(write_jsonl(tmp_path / "mixed.jsonl", [{"messages": [u("x")]}, long_row(), "{bad"]),
                   tiny_tokenizer, max_length=64)
    assert issues(report) == [(0, "no_usable_examples"), (1, "no_assistant"), (3, "invalid_json")]
    assert report["errors"][0]["message"].startswith(
        "no usable examples: 1 is longer than max_length 64, the other 2 have errors")
    # Training refuses such a file with that one line.
    scan = scan_file(tmp_path / "d.jsonl", Renderer(tiny_tokenizer, load_template(tiny_tokenizer)), max_length=64)
    with pytest.raises(DataError, match=r"d\.jsonl: no usable examples: all 2 examples"):
        scan.raise_if_errors()


def test_overlong_truncate(tmp_path, tiny_tokenizer):
    rows = [ok_row(1), long_row()]
    (n1, nlong), (t1, tlong) = lengths_of(tiny_tokenizer, rows)
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    report = check(path, tiny_tokenizer, max_length=64, overlong="truncate")
    assert report["ok"] is True
    assert issues(report, "warnings") == [(2, "truncated")]
    assert f"{nlong} tokens truncated to 64" in report["warnings"][0]["message"]
    s = report["stats"]
    assert (report["good"], s["dropped"], s["truncated"]) == (2, 0, 1)
    assert s["tokens_per_epoch"] == n1 + 64
    # The prompt is the same in both rows up to the answer; the cut keeps 64 tokens of which the
    # trained ones are the answer's first tokens.
    scan = scan_file(path, Renderer(tiny_tokenizer, load_template(tiny_tokenizer)), max_length=64,
                     overlong="truncate", keep=True)
    cut = scan.kept[1]
    assert len(cut.input_ids) == len(cut.loss_mask) == 64
    full = Renderer(tiny_tokenizer, load_template(tiny_tokenizer)).encode_many(
        [Conversation(messages=rows[1]["messages"], weights=[None, None])])[0]
    assert cut.input_ids == full.input_ids[:64] and cut.loss_mask == full.loss_mask[:64]
    assert s["trainable_tokens"] == t1 + sum(full.loss_mask[:64]) < t1 + tlong


def test_overlong_error(tmp_path, tiny_tokenizer):
    report = check(write_jsonl(tmp_path / "d.jsonl", [ok_row(1), long_row()]), tiny_tokenizer,
                   max_length=64, overlong="error")
    assert issues(report) == [(2, "too_long")] and report["ok"] is False
    assert "longer than max_length 64" in report["errors"][0]["message"]
    assert report["good"] == 1 and report["stats"]["dropped"] == 0


def test_truncation_that_leaves_nothing_trained_is_an_error(tmp_path, tiny_tokenizer):
    row = {"messages": [u(" ".join(["dog"] * 200)), a("Yes.")]}
    report = check(write_jsonl(tmp_path / "d.jsonl", [ok_row(1), row]), tiny_tokenizer,
                   max_length=64, overlong="truncate")
    assert issues(report) == [(2, "nothing_trainable")] and report["ok"] is False
    assert report["stats"]["truncated"] == 0 and report["good"] == 1


def test_bad_policy_is_rejected(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [ok_row(1)])
    with pytest.raises(DataError, match="overlong must be"):
        scan_file(path, Renderer(tiny_tokenizer, load_template(tiny_tokenizer)), max_length=64, overlong="shrink")


def test_stats_block(tmp_path, tiny_tokenizer):
    # 21 good examples of varied length, one bad one and one dropped for length.
    rows = [{"messages": [u("Say fox."), a(" ".join(["fox"] * (i + 1)))]} for i in range(21)]
    rows.insert(5, {"messages": [u("no answer")]})
    rows.append(long_row(300))
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    good_rows = [r for r in rows if len(r["messages"]) == 2]
    lengths, trained = lengths_of(tiny_tokenizer, good_rows)
    report = check(path, tiny_tokenizer, max_length=128)
    s = report["stats"]
    assert report["examples"] == 23 and report["good"] == 21
    assert issues(report) == [(6, "no_assistant")] and issues(report, "warnings") == [(23, "too_long")]

    ordered = sorted(lengths)
    assert len(set(ordered)) > 5  # the lengths really vary
    tpe = s["tokens_per_example"]
    assert tpe["min"] == ordered[0] and tpe["max"] == ordered[-1] == lengths[-1]
    assert tpe["median"] == statistics.median(ordered)
    assert tpe["p95"] == ordered[round(0.95 * (len(ordered) - 1))]  # 22 lengths: nearest rank
    assert tpe["min"] <= tpe["median"] <= tpe["p95"] <= tpe["max"]

    hist = s["histogram"]
    assert hist and all(b["lo"] <= b["hi"] for b in hist)
    assert sum(b["count"] for b in hist) == len(lengths) == 22  # every example before the length policy
    for n in lengths:  # each length falls in exactly one bin
        assert sum(b["lo"] <= n <= b["hi"] for b in hist) == 1
    assert hist[0]["lo"] == ordered[0] and hist[-1]["hi"] >= ordered[-1]

    assert s["trainable_tokens"] == sum(trained[:-1])  # the dropped one does not count
    assert s["tokens_per_epoch"] == sum(lengths[:-1])
    assert s["suggested_epochs"] == 10  # 21 examples: small sets are seen many times
    assert (s["dropped"], s["truncated"], s["bad"]) == (1, 0, 1)
    assert s["max_length"] == 128 and s["mask"] == "assistant" and s["overlong"] == "drop"
    json.dumps(report)  # the report is plain JSON


def test_trainable_tokens_is_the_sum_of_masks(tmp_path, tiny_tokenizer):
    rows = [{"messages": [u("q"), a("one"), u("r"), a("two", weight=0), u("s"), a("three")]}, ok_row(3)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    for mask in ("assistant", "last", "all"):
        kept = scan_file(path, Renderer(tiny_tokenizer, load_template(tiny_tokenizer), mask),
                         max_length=512, keep=True).kept
        report = check(path, tiny_tokenizer, mask=mask)
        assert report["stats"]["trainable_tokens"] == sum(sum(e.loss_mask) for e in kept)
        assert report["stats"]["tokens_per_epoch"] == sum(len(e.input_ids) for e in kept)
    counts = {m: check(path, tiny_tokenizer, mask=m)["stats"]["trainable_tokens"] for m in ("assistant", "last", "all")}
    assert counts["last"] < counts["assistant"] < counts["all"]


def test_suggested_epochs_shrink_with_size(tmp_path, tiny_tokenizer):
    few = check(write_jsonl(tmp_path / "few.jsonl", [ok_row(i) for i in range(4)]), tiny_tokenizer)
    many = check(write_jsonl(tmp_path / "many.jsonl", [ok_row(i) for i in range(400)]), tiny_tokenizer)
    assert few["stats"]["suggested_epochs"] == 10
    assert many["stats"]["suggested_epochs"] == 3


def test_check_dataset_with_a_config_and_model(tmp_path, tiny_model):
    path = write_jsonl(tmp_path / "d.jsonl", [ok_row(1), {"messages": [u("x")]}])
    report = check_dataset(path, DataConfig(model=str(tiny_model), max_length=64))
    assert report["stats"]["model"] == str(tiny_model)
    assert issues(report) == [(2, "no_assistant")]


def test_scan_refuses_training_on_errors(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [ok_row(1), {"messages": [u("x")]}, "{bad"])
    scan = scan_file(path, Renderer(tiny_tokenizer, load_template(tiny_tokenizer)), max_length=64)
    with pytest.raises(DataError) as err:
        scan.raise_if_errors()
    assert str(err.value).startswith(f"{path}:2: ") and "no_assistant" in str(err.value)
    assert "and 1 more" in str(err.value)


# -- the split -------------------------------------------------------------------------------

def examples(n):
    return [Example(line=i + 1, input_ids=[i], loss_mask=[1]) for i in range(n)]


def test_split_is_deterministic_disjoint_and_complete():
    exs = examples(50)
    train, val = split_examples(exs, 0.2, seed=7)
    again_train, again_val = split_examples(exs, 0.2, seed=7)
    assert [e.line for e in train] == [e.line for e in again_train]
    assert [e.line for e in val] == [e.line for e in again_val]
    assert len(val) == 10 and len(train) == 40
    t, v = {e.line for e in train}, {e.line for e in val}
    assert not t & v and t | v == set(range(1, 51))
    other = {e.line for e in split_examples(exs, 0.2, seed=8)[1]}
    assert other != v  # the seed matters
    assert [e.line for e in train] == sorted(t)  # file order is kept on each side


def test_split_edges():
    train, val = split_examples(examples(2), 0.01, seed=0)
    assert len(train) == 1 and len(val) == 1
    train, val = split_examples(examples(3), 0.99, seed=0)
    assert len(train) == 1 and len(val) == 2
    with pytest.raises(DataError, match="at least 2"):
        split_examples(examples(1), 0.5, seed=0)
    with pytest.raises(DataError, match="between 0 and 1"):
        split_examples(examples(10), 1.0, seed=0)


def test_issues_are_listed_in_file_order(tmp_path, tiny_tokenizer):
    rows = [long_row(), ok_row(1), ok_row(1), {"messages": [u("q"), a("x", weight=0)]}, "{bad", long_row(150)]
    report = check(write_jsonl(tmp_path / "d.jsonl", rows), tiny_tokenizer, max_length=64)
    assert issues(report) == [(4, "nothing_trainable"), (5, "invalid_json")]
    assert issues(report, "warnings") == [(1, "too_long"), (3, "duplicate"), (6, "too_long")]


def test_tokenizer_batches_are_bounded_by_text_size(tmp_path, tiny_tokenizer, monkeypatch):
    from tunery.data import dataset

    rows = [ok_row(i) for i in range(6)] + [long_row(300), ok_row(7), ok_row(1), "{bad"]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    renderer = Renderer(tiny_tokenizer, load_template(tiny_tokenizer))
    whole = scan_file(path, renderer, max_length=128, keep=True)
    batches = []
    encode_many = Renderer.encode_many
    monkeypatch.setattr(Renderer, "encode_many", lambda self, convs: batches.append([c.line for c in convs])
                        or encode_many(self, convs))
    monkeypatch.setattr(dataset, "CHUNK_CHARS", 400)  # about 3 short rows; the long one is ~1,300
    bounded = scan_file(path, renderer, max_length=128, keep=True)
    assert [7] in batches and all(1 <= len(b) <= 3 for b in batches)
    assert sum(batches, []) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert [(e.line, e.input_ids, e.loss_mask) for e in bounded.kept] == [(e.line, e.input_ids, e.loss_mask)
                                                                         for e in whole.kept]
    assert (bounded.errors, bounded.warnings, bounded.length_counts) == (whole.errors, whole.warnings, whole.length_counts)
    assert [(w.line, w.code) for w in whole.warnings] == [(7, "too_long"), (9, "duplicate")]


# -- bounded memory: what a scan keeps does not grow with the file ----------------------------

def test_issue_lists_are_bounded_and_counts_exact(tmp_path, tiny_tokenizer, monkeypatch):
    from tunery.data import dataset

    monkeypatch.setattr(dataset, "MAX_LISTED", 3)
    rows = ["{bad"] * 4 + [ok_row(1)] * 5 + [{"messages": [u("x")]}] * 4  # 8 errors, 4 duplicates
    report = check(write_jsonl(tmp_path / "d.jsonl", rows[::-1]), tiny_tokenizer)  # errors last and first
    assert report["error_count"] == 8 and report["stats"]["bad"] == 8
    assert report["warning_count"] == 4 and report["stats"]["duplicates"] == 4
    assert issues(report) == [(1, "no_assistant"), (2, "no_assistant"), (3, "no_assistant")]  # the lowest lines
    assert [w["line"] for w in report["warnings"]] == [6, 7, 8]
    assert report["examples"] == 13 and report["good"] == 5


def test_duplicates_spilled_to_files_are_the_same(tmp_path, tiny_tokenizer, monkeypatch):
    from tunery.data import dataset

    rows = [ok_row(i % 7) for i in range(40)] + [ok_row(100), ok_row(3)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    in_memory = check(path, tiny_tokenizer)["warnings"]
    spilled = []
    spill = dataset._Duplicates._spill
    monkeypatch.setattr(dataset._Duplicates, "SPILL_BYTES", 24 * 5)  # five records, then a spill
    monkeypatch.setattr(dataset._Duplicates, "_spill", lambda self: spilled.append(1) or spill(self))
    assert check(path, tiny_tokenizer)["warnings"] == in_memory
    assert len(spilled) >= 8
    assert len(in_memory) == 34 and in_memory[0] == {"line": 8, "code": "duplicate", "message": "exact duplicate of line 1"}
    assert in_memory[-1]["message"] == "exact duplicate of line 4"  # line 42 repeats ok_row(3), first on line 4
