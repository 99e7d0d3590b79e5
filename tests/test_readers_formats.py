"""Readers (JSONL, JSON array, CSV, Parquet) with their line numbers, and the five formats
normalised into one conversation."""

import csv
import json

import pytest
from conftest import write_jsonl

from tunery.data import Renderer, load_template, scan_file
from tunery.data.formats import detect_file_format, normalise
from tunery.data.readers import RowError, read_rows
from tunery.errors import DataError

QA = [{"role": "user", "content": "What is the capital of France?"},
      {"role": "assistant", "content": "The capital of France is Paris."}]


def chat(*pairs):
    msgs = []
    for q, a in pairs:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return {"messages": msgs}


def renderer(tok, mask="assistant"):
    return Renderer(tok, load_template(tok), mask)


def scan(path, tok, **kw):
    kw.setdefault("max_length", 512)
    return scan_file(path, renderer(tok), keep=True, **kw)


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# -- readers and line numbers ------------------------------------------------------------------

def test_jsonl_lines_count_blank_lines_and_bad_rows(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"b": 2}\n{oops\n{"c": 3}\n')
    rows = list(read_rows(path))
    assert [line for line, _ in rows] == [1, 4, 5, 6]
    assert rows[0][1] == {"a": 1} and rows[1][1] == {"b": 2} and rows[3][1] == {"c": 3}
    assert isinstance(rows[2][1], RowError) and rows[2][1].code == "invalid_json"


def test_json_array_reports_the_line_each_element_starts_on(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(
        "[\n"                      # 1
        '  {"a": 1},\n'            # 2
        "\n"                       # 3
        "  {\n"                    # 4
        '    "b": 2\n'             # 5
        '  }, {"c": 3}\n'          # 6  (two elements start on line 4 and 6)
        "  ,\n"                    # 7
        '{"d":\n'                  # 8
        "4}]\n"                    # 9
    )
    rows = list(read_rows(path))
    assert rows == [(2, {"a": 1}), (4, {"b": 2}), (6, {"c": 3}), (8, {"d": 4})]


def test_json_array_element_on_line_5(tmp_path, tiny_tokenizer):
    rows = [chat(("q1", "a1")), chat(("q2", "a2"))]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows, indent=2))  # element 2 starts further down
    text = path.read_text().splitlines()
    second_start = next(i for i, t in enumerate(text, 1) if t == "  {" and i > 2)
    s = scan(path, tiny_tokenizer)
    assert [e.line for e in s.kept] == [2, second_start]
    # Exactly the layout the brief names: an element starting on line 5.
    path.write_text('[\n{"messages": [{"role": "user", "content": "q"},\n'
                    ' {"role": "assistant", "content": "a"}]},\n\n'
                    '{"messages": [{"role": "user", "content": "q2"}]}\n]\n')
    s = scan(path, tiny_tokenizer)
    assert [e.line for e in s.kept] == [2]
    assert [(e.line, e.code) for e in s.errors] == [(5, "no_assistant")]


def test_json_syntax_error_reports_its_own_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"a": 1},\n  {"b": 2,,}\n]\n')
    rows = list(read_rows(path))
    assert rows[0] == (2, {"a": 1})
    assert rows[1][0] == 3 and isinstance(rows[1][1], RowError) and rows[1][1].code == "invalid_json"


def test_json_must_be_an_array(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"messages": []}')
    with pytest.raises(DataError, match="one JSON array"):
        list(read_rows(path))


def test_csv_messages_column_is_json_and_lines_are_file_lines(tmp_path, tiny_tokenizer):
    path = tmp_path / "d.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["messages", "note"])                                             # line 1
        w.writerow([json.dumps(chat(("q1", "a1"))["messages"]), "x"])                # line 2
        w.writerow([json.dumps(chat(("q2", "a2"))["messages"]), "multi\nline\nnote"])  # lines 3-5
        w.writerow([json.dumps([{"role": "user", "content": "no answer"}]), "z"])    # line 6
    s = scan(path, tiny_tokenizer)
    assert s.format == "chat"
    assert [e.line for e in s.kept] == [2, 3]
    assert [(e.line, e.code) for e in s.errors] == [(6, "no_assistant")]


def test_csv_blank_line_between_rows_keeps_line_numbers_right(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\nhi,"multi\nline"\n\nhey,there\n')
    assert list(read_rows(path)) == [(2, {"prompt": "hi", "completion": "multi\nline"}),
                                     (5, {"prompt": "hey", "completion": "there"})]


def test_csv_prompt_completion_columns(tmp_path, tiny_tokenizer):
    path = tmp_path / "d.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "completion"])
        w.writerow(["What is the capital of France?", "The capital of France is Paris."])
        w.writerow(["empty answer", ""])
    s = scan(path, tiny_tokenizer)
    assert s.format == "completion"
    assert [e.line for e in s.kept] == [2]
    assert [(e.line, e.code) for e in s.errors] == [(3, "empty_content")]
    ref = scan(write_jsonl(tmp_path / "r.jsonl", [{"messages": QA}]), tiny_tokenizer)
    assert s.kept[0].input_ids == ref.kept[0].input_ids
    assert s.kept[0].loss_mask == ref.kept[0].loss_mask


def test_parquet_rows_are_numbered_from_1(tmp_path, tiny_tokenizer):
    rows = [{"prompt": f"question {i}", "completion": f"answer {i}" if i != 3 else " "} for i in range(1, 6)]
    s = scan(write_parquet(tmp_path / "d.parquet", rows), tiny_tokenizer)
    assert s.format == "completion"
    assert [e.line for e in s.kept] == [1, 2, 4, 5]
    assert [(e.line, e.code) for e in s.errors] == [(3, "empty_content")]


def test_parquet_messages_as_nested_lists_or_json_text(tmp_path, tiny_tokenizer):
    nested = write_parquet(tmp_path / "n.parquet", [{"messages": QA}, {"messages": QA[:1]}])
    as_text = write_parquet(tmp_path / "t.parquet", [{"messages": json.dumps(QA)}])
    ref = scan(write_jsonl(tmp_path / "r.jsonl", [{"messages": QA}]), tiny_tokenizer).kept[0]
    a, b = scan(nested, tiny_tokenizer), scan(as_text, tiny_tokenizer)
    assert [(e.line, e.code) for e in a.errors] == [(2, "no_assistant")]
    assert a.kept[0].line == 1 and b.kept[0].line == 1
    for got in (a.kept[0], b.kept[0]):
        assert (got.input_ids, got.loss_mask) == (ref.input_ids, ref.loss_mask)


def test_unreadable_parquet_and_missing_file_and_suffix(tmp_path):
    bad = tmp_path / "d.parquet"
    bad.write_text("not parquet")
    with pytest.raises(DataError, match="Parquet"):
        list(read_rows(bad))
    with pytest.raises(DataError, match="no such file"):
        list(read_rows(tmp_path / "missing.jsonl"))
    txt = tmp_path / "d.txt"
    txt.write_text("{}")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        list(read_rows(txt))


def test_every_file_type_gives_the_same_tokens(tmp_path, tiny_tokenizer):
    rows = [chat(("q1", "a1")), chat(("What is the capital of France?", "Paris."), ("And Italy?", "Rome."))]
    jsonl = write_jsonl(tmp_path / "d.jsonl", rows)
    js = tmp_path / "d.json"
    js.write_text(json.dumps(rows))
    cs = tmp_path / "d.csv"
    with open(cs, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["messages"])
        for r in rows:
            w.writerow([json.dumps(r["messages"])])
    pq = write_parquet(tmp_path / "d.parquet", [{"messages": json.dumps(r["messages"])} for r in rows])
    scans = [scan(p, tiny_tokenizer) for p in (jsonl, js, cs, pq)]
    expect = [(e.input_ids, e.loss_mask) for e in scans[0].kept]
    assert len(expect) == 2 and all(sum(m) > 0 for _, m in expect)
    for s in scans:
        assert s.ok and s.format == "chat"
        assert [(e.input_ids, e.loss_mask) for e in s.kept] == expect
    assert [e.line for e in scans[0].kept] == [1, 2]   # JSONL: lines
    assert [e.line for e in scans[1].kept] == [1, 1]   # JSON on one line: both on line 1
    assert [e.line for e in scans[2].kept] == [2, 3]   # CSV: header is line 1
    assert [e.line for e in scans[3].kept] == [1, 2]   # Parquet: rows from 1


# -- formats -----------------------------------------------------------------------------------

def test_all_formats_normalise_to_the_same_conversation():
    q, a = "What is the capital of France?", "The capital of France is Paris."
    rows = {
        "chat": {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
        "completion": {"prompt": q, "completion": a},
        "alpaca": {"instruction": q, "output": a},
        "sharegpt": {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]},
    }
    for fmt, row in rows.items():
        assert detect_file_format([(1, row)], "f") == fmt
        conv, issues = normalise(7, row, fmt)
        assert issues == []
        assert conv.line == 7
        assert conv.messages == [{"role": "user", "content": q}, {"role": "assistant", "content": a}], fmt
        assert conv.text is None and conv.tools is None


def test_alpaca_input_and_system():
    conv, _ = normalise(1, {"instruction": "Translate", "input": "good morning", "output": "bonjour",
                            "system": "You translate."}, "alpaca")
    assert conv.messages == [{"role": "system", "content": "You translate."},
                             {"role": "user", "content": "Translate\n\ngood morning"},
                             {"role": "assistant", "content": "bonjour"}]
    conv, _ = normalise(1, {"instruction": "Hi", "input": "", "output": "Hello"}, "alpaca")
    assert conv.messages[0] == {"role": "user", "content": "Hi"}


def test_sharegpt_roles_and_system():
    row = {"system": "Be brief.", "conversations": [
        {"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
        {"from": "user", "value": "q2"}, {"from": "assistant", "value": "a2"}]}
    conv, issues = normalise(1, row, "sharegpt")
    assert issues == []
    assert [(m["role"], m["content"]) for m in conv.messages] == [
        ("system", "Be brief."), ("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")]
    _, issues = normalise(3, {"conversations": [{"from": "alien", "value": "x"}]}, "sharegpt")
    assert [(i.line, i.code) for i in issues] == [(3, "unknown_role")]


def test_chat_tools_tool_calls_string_arguments_and_weights():
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    row = {"tools": tools, "messages": [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "weight": 0, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny.", "weight": 1},
    ]}
    conv, issues = normalise(1, row, "chat")
    assert issues == []
    assert conv.tools == tools
    assert [m["role"] for m in conv.messages] == ["system", "user", "assistant", "tool", "assistant"]
    call = conv.messages[2]
    assert call["content"] == ""
    assert call["tool_calls"] == [{"type": "function", "id": "c1",
                                   "function": {"name": "weather", "arguments": {"city": "Paris"}}}]
    assert conv.messages[3]["tool_call_id"] == "c1"
    assert conv.weights == [None, None, 0.0, None, 1.0]


def test_chat_content_parts_are_joined():
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                        {"role": "assistant", "content": "c"}]}
    conv, _ = normalise(1, row, "chat")
    assert conv.messages[0]["content"] == "ab"
    row["messages"][0]["content"] = [{"type": "image_url", "image_url": {"url": "x"}}]
    _, issues = normalise(1, row, "chat")
    assert [i.code for i in issues] == ["content_type"]


def test_text_format_trains_every_token(tmp_path, tiny_tokenizer):
    s = scan(write_jsonl(tmp_path / "d.jsonl", [{"text": "Hello, how are you today?"}]), tiny_tokenizer)
    assert s.format == "text" and s.ok
    ex = s.kept[0]
    body = tiny_tokenizer.encode("Hello, how are you today?", add_special_tokens=False)
    tok = tiny_tokenizer
    assert ex.input_ids == [tok.bos_token_id] + body + [tok.eos_token_id]
    assert ex.loss_mask == [0] + [1] * len(body) + [1]


def test_detection_is_per_file_and_format_overrides(tmp_path, tiny_tokenizer):
    files = {
        "chat": [{"messages": QA}],
        "completion": [{"prompt": "q", "completion": "a"}],
        "alpaca": [{"instruction": "q", "output": "a"}],
        "sharegpt": [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}],
        "text": [{"text": "some text"}],
    }
    for fmt, rows in files.items():
        s = scan(write_jsonl(tmp_path / f"{fmt}.jsonl", rows), tiny_tokenizer)
        assert (s.format, s.ok, len(s.kept)) == (fmt, True, 1)
    # A row that has both prompt/completion and text: detected as completion, overridden to text.
    both = write_jsonl(tmp_path / "both.jsonl", [{"prompt": "q", "completion": "a", "text": "Hello world"}])
    auto, forced = scan(both, tiny_tokenizer), scan(both, tiny_tokenizer, fmt="text")
    assert auto.format == "completion" and forced.format == "text"
    body = tiny_tokenizer.encode("Hello world", add_special_tokens=False)
    assert forced.kept[0].input_ids[1:-1] == body
    assert auto.kept[0].input_ids != forced.kept[0].input_ids
    # Forcing a format the rows do not have: every row says what it lacks.
    s = scan(write_jsonl(tmp_path / "c.jsonl", [{"prompt": "q", "completion": "a"}]), tiny_tokenizer, fmt="chat")
    assert [(e.line, e.code) for e in s.errors] == [(1, "missing_messages")]
    with pytest.raises(DataError, match="format must be"):
        scan(both, tiny_tokenizer, fmt="yaml")


def test_majority_format_wins_and_unknown_rows_fail(tmp_path, tiny_tokenizer):
    rows = [{"messages": QA}, {"messages": QA + QA}, {"prompt": "q", "completion": "a"}]
    s = scan(write_jsonl(tmp_path / "d.jsonl", rows), tiny_tokenizer)
    assert s.format == "chat"
    assert [(e.line, e.code) for e in s.errors] == [(3, "missing_messages")]
    with pytest.raises(DataError, match="cannot tell the dataset format"):
        scan(write_jsonl(tmp_path / "u.jsonl", [{"foo": 1}]), tiny_tokenizer)


def test_file_of_only_broken_rows_lists_each(tmp_path, tiny_tokenizer):
    s = scan(write_jsonl(tmp_path / "d.jsonl", ["{broken", "[1, 2]"]), tiny_tokenizer)
    assert [(e.line, e.code) for e in s.errors] == [(1, "invalid_json"), (2, "not_object")]


# -- strict UTF-8 ------------------------------------------------------------------------------

def test_jsonl_invalid_utf8_is_an_error_on_its_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": "caf\xe9"}\n{"c": 3}\n')  # line 2 saved as Latin-1
    rows = list(read_rows(path))
    assert [line for line, _ in rows] == [1, 2, 3]
    assert rows[0][1] == {"a": 1} and rows[2][1] == {"c": 3}
    err = rows[1][1]
    assert isinstance(err, RowError) and err.code == "invalid_utf8"
    assert "byte 0xe9 at column 11" in err.message and "save the file as UTF-8" in err.message


def test_json_invalid_utf8_names_the_line_of_the_bad_bytes(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(b'[\n  {"a": 1},\n  {"b": 2,\n   "c": "caf\xe9"},\n  {"d": 4}\n]\n')
    rows = list(read_rows(path))
    assert rows[0] == (2, {"a": 1}) and rows[2] == (5, {"d": 4}) and len(rows) == 3
    line, err = rows[1]
    assert line == 4 and isinstance(err, RowError) and err.code == "invalid_utf8"
    assert "byte 0xe9 at column 13" in err.message and "starting on line 3" in err.message
    # Bad bytes between elements break the array's structure: named where they are, reading stops.
    path.write_bytes(b'[{"a": 1},\n \xff {"b": 2}]')
    rows = list(read_rows(path))
    assert rows[0] == (1, {"a": 1}) and len(rows) == 2
    assert rows[1][0] == 2 and rows[1][1].code == "invalid_utf8" and "byte 0xff at column 2" in rows[1][1].message


def test_csv_invalid_utf8_names_the_line_and_keeps_the_rest(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b'prompt,completion\nhi,there\nq,"multi\nline caf\xe9"\nhey,you\n')
    rows = list(read_rows(path))
    assert rows[0] == (2, {"prompt": "hi", "completion": "there"})
    assert rows[2] == (5, {"prompt": "hey", "completion": "you"}) and len(rows) == 3
    line, err = rows[1]
    assert line == 4 and isinstance(err, RowError) and err.code == "invalid_utf8"
    assert "byte 0xe9 at column 9" in err.message and "starting on line 3" in err.message
    path.write_bytes(b"pr\xf6mpt,completion\nhi,there\n")  # the header is no example: the file is refused
    with pytest.raises(DataError, match=r"d\.csv:1: invalid UTF-8: byte 0xf6 at column 3"):
        list(read_rows(path))


def test_invalid_utf8_is_listed_with_the_other_errors(tmp_path, tiny_tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(chat(("q", "a"))).encode() + b"\n"
                     + json.dumps(chat(("q", "caf\u00e9"))).encode().replace(b"\\u00e9", b"\xe9") + b"\n"
                     + b'{"messages": [{"role": "user", "content": "no answer"}]}\n')
    s = scan(path, tiny_tokenizer)
    assert [(e.line, e.code) for e in s.errors] == [(2, "invalid_utf8"), (3, "no_assistant")]
    assert [e.line for e in s.kept] == [1]


# -- JSON syntax errors are named where they are -----------------------------------------------

def test_jsonl_truncated_row_reports_its_own_line_and_column(tmp_path):
    truncated = '{"messages": [{"role": "user", "content": "hi"}'
    for end in ("\n", "\r\n"):
        path = tmp_path / "d.jsonl"
        path.write_bytes(f'{{"a": 1}}{end}{truncated}{end}{{"b": 2}}{end}'.encode())
        rows = list(read_rows(path))
        assert [line for line, _ in rows] == [1, 2, 3] and rows[2][1] == {"b": 2}
        err = rows[1][1]
        assert isinstance(err, RowError) and err.code == "invalid_json"
        assert err.message == f"invalid JSON: Expecting ',' delimiter (column {len(truncated) + 1})"


@pytest.mark.parametrize("text, line, message", [
    # a truncated object at the end of a line: the end of that line, not column 1 of the next
    ('[\n  {"a": 1},\n  {"b": 2\n]\n', 3, "Expecting ',' delimiter (column 10)"),
    ('[\n  {"a": 1}\n  {"b": 2}\n]\n', 2, "expected ',' or ']' after an element (column 11)"),
    ('[\n  {"a": 1,\n  }\n]\n', 2, "Expecting property name enclosed in double quotes (column 11)"),
    ('[\n  {"a": 1},\n  {"b": 2}\n', 3, "expected ',' or ']' after an element (column 11)"),
    ('[\n  {"a": 1},\n', 2, "Expecting value (column 12)"),
    ('[\n', 1, "Expecting value (column 2)"),
    # a bad token or a stray comma is itself the problem: named where it is
    ('[\n  {"a": 1},\n  oops\n]\n', 3, "Expecting value (column 3)"),
    ('[\n  {"a": 1},\n  ,\n]\n', 3, "Expecting value (column 3)"),
    ('[\n  {"a": "x\n"}\n]\n', 2, "Invalid control character at (column 11)"),
    # anything after the closing bracket would be silently lost
    ('[\n  {"a": 1}\n]\n[\n  {"b": 2}\n]\n', 4, "extra data after the array's closing ']' (column 1)"),
])
def test_json_syntax_errors_name_the_real_line_and_column(tmp_path, text, line, message):
    path = tmp_path / "d.json"
    path.write_text(text)
    rows = list(read_rows(path))
    assert isinstance(rows[-1][1], RowError) and rows[-1][1].code == "invalid_json"
    assert (rows[-1][0], rows[-1][1].message) == (line, f"invalid JSON: {message}")
    assert all(not isinstance(value, RowError) for _, value in rows[:-1])


# -- bounded reading ---------------------------------------------------------------------------

def test_one_long_jsonl_line_is_an_error_naming_the_cap(tmp_path, monkeypatch, tiny_tokenizer):
    from tunery.data import readers

    monkeypatch.setattr(readers, "MAX_ROW_BYTES", 1000)
    path = tmp_path / "d.jsonl"
    long = json.dumps(chat(("q", "fox " * 5000)))
    path.write_text(long)  # one line, no newline at the end
    rows = list(read_rows(path))
    assert len(rows) == 1 and rows[0][0] == 1
    err = rows[0][1]
    assert isinstance(err, RowError) and err.code == "too_large"
    assert err.message == (f"the line is {len(long):,} bytes, over the 1,000 bytes one example may take; "
                           "shorten or split it")
    # Between other lines: only that line is refused, and the lines after it keep their numbers.
    path.write_text(f"{json.dumps(chat(('q1', 'a1')))}\n{long}\n\n{json.dumps(chat(('q2', 'a2')))}\n")
    s = scan(path, tiny_tokenizer)
    assert [(e.line, e.code) for e in s.errors] == [(2, "too_large")] and [e.line for e in s.kept] == [1, 4]
    # At the cap exactly (newline not counted) is fine.
    path.write_text(json.dumps({"text": "x" * (1000 - 12)}) + "\r\n")
    assert len(path.read_bytes()) == 1002 and list(read_rows(path)) == [(1, {"text": "x" * 988})]


def test_json_file_over_its_cap_is_refused_and_big_elements_are_errors(tmp_path, monkeypatch):
    from tunery.data import readers

    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"a": 1}, {"text": "x" * 2000}, {"b": 2}], indent=1))
    monkeypatch.setattr(readers, "MAX_JSON_BYTES", 1000)
    with pytest.raises(DataError, match=r"d\.json: the file is 2,0\d\d bytes, over the 1,000 bytes a \.json dataset "
                                        r"may take \(it is read whole\); convert it to \.jsonl"):
        list(read_rows(path))
    monkeypatch.setattr(readers, "MAX_JSON_BYTES", 10_000)
    monkeypatch.setattr(readers, "MAX_ROW_BYTES", 1000)
    rows = list(read_rows(path))
    assert rows[0] == (2, {"a": 1}) and rows[2] == (8, {"b": 2})
    assert rows[1][0] == 5 and rows[1][1].code == "too_large"
    assert rows[1][1].message.startswith("the example is 2,0") and "over the 1,000 bytes" in rows[1][1].message


def test_csv_line_or_row_over_the_cap_is_one_line_error(tmp_path, monkeypatch):
    from tunery.data import readers

    monkeypatch.setattr(readers, "MAX_ROW_BYTES", 1000)
    path = tmp_path / "d.csv"
    path.write_text(f"prompt,completion\nhi,there\nq,{'x' * 2000}\n")
    with pytest.raises(DataError, match=r"d\.csv:3: the line is 2,002 bytes, over the 1,000 bytes one example may take"):
        list(read_rows(path))
    many = "\n".join(["x" * 99] * 20)  # each line is short, the row is not
    path.write_text(f'prompt,completion\nhi,there\n\nq,"{many}"\n')
    with pytest.raises(DataError, match=r"d\.csv:\d+: the row starting on line 4 is over the 1,000 bytes"):
        list(read_rows(path))


def test_csv_cells_longer_than_the_csv_modules_default_limit(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(f'prompt,completion\nq,"{"x" * 200_000}"\n')  # csv's default field limit is 131072
    assert list(read_rows(path)) == [(2, {"prompt": "q", "completion": "x" * 200_000})]


def test_parquet_row_over_the_cap_is_an_error(tmp_path, monkeypatch):
    from tunery.data import readers

    monkeypatch.setattr(readers, "MAX_ROW_BYTES", 1000)
    path = write_parquet(tmp_path / "d.parquet", [{"prompt": "q", "completion": c} for c in ("a", "x" * 2000, "b")])
    rows = list(read_rows(path))
    assert rows[0] == (1, {"prompt": "q", "completion": "a"}) and rows[2] == (3, {"prompt": "q", "completion": "b"})
    assert rows[1][0] == 2 and rows[1][1].code == "too_large" and "over the 1,000 bytes" in rows[1][1].message


def test_a_byte_order_mark_is_skipped(tmp_path):
    """Excel and Notepad save UTF-8 with a BOM: the first row (and a CSV header) reads as without."""
    bom = b"\xef\xbb\xbf"
    (tmp_path / "a.jsonl").write_bytes(bom + b'{"prompt": "p", "completion": "c"}\n')
    (tmp_path / "a.csv").write_bytes(bom + b"prompt,completion\np,c\n")
    (tmp_path / "a.json").write_bytes(bom + b'[{"prompt": "p", "completion": "c"}]')
    for name in ("a.jsonl", "a.csv", "a.json"):
        assert [r for _, r in read_rows(tmp_path / name)] == [{"prompt": "p", "completion": "c"}], name
