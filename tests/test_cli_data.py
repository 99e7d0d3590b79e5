"""`tunery data check` as a user runs it: exit codes, one-line errors (in-process, and once
through the installed console script)."""

import json
import os
import subprocess

import pytest
from clirun import TUNERY, tunery_cli
from conftest import write_jsonl

GOOD = {"messages": [{"role": "user", "content": "What is the capital of France?"},
                     {"role": "assistant", "content": "The capital of France is Paris."}]}


def tunery(*args):
    return tunery_cli(*args, env={"COLUMNS": "200", "NO_COLOR": "1"})


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    other = {"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there."}]}
    clean = write_jsonl(d / "clean.jsonl", [GOOD, other])
    bad = write_jsonl(d / "bad.jsonl", [GOOD, {"messages": [{"role": "user", "content": "q"}]}, "{oops", GOOD])
    return clean, bad


def test_json_report_of_a_clean_file_exits_0(cli_files, tiny_model):
    clean, _ = cli_files
    proc = tunery("data", "check", clean, "--model", tiny_model, "--json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1  # one JSON object, nothing else on stdout
    report = json.loads(lines[0])
    assert {"ok", "examples", "good", "errors", "warnings", "stats"} <= set(report)
    assert report["ok"] is True and report["examples"] == 2 and report["good"] == 2
    assert report["errors"] == [] and report["warnings"] == []
    stats = report["stats"]
    assert stats["format"] == "chat" and stats["trainable_tokens"] > 0
    assert {"min", "median", "p95", "max"} <= set(stats["tokens_per_example"])
    assert sum(b["count"] for b in stats["histogram"]) == 2
    assert stats["suggested_epochs"] >= 1 and stats["tokens_per_epoch"] > stats["trainable_tokens"]


def test_json_report_with_errors_exits_1(cli_files, tiny_model):
    _, bad = cli_files
    proc = tunery("data", "check", bad, "--model", tiny_model, "--json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is False and report["examples"] == 4 and report["good"] == 2
    assert [(e["line"], e["code"]) for e in report["errors"]] == [(2, "no_assistant"), (3, "invalid_json")]
    assert all(e["message"] for e in report["errors"])
    assert [(w["line"], w["code"]) for w in report["warnings"]] == [(4, "duplicate")]
    assert "Traceback" not in proc.stderr


def test_human_report_and_show(cli_files, tiny_model):
    clean, bad = cli_files
    proc = tunery("data", "check", clean, "--model", tiny_model, "--show", "1")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "examples 2" in out and "good 2" in out
    assert "example 1 (line 1)" in out
    # Not a colour terminal: the trained tokens are marked in the text itself.
    assert "trained tokens between ⟦ and ⟧" in out
    assert "user\nWhat is the capital of France?<|im_end|>" in out
    assert "assistant\n⟦The capital of France is Paris.<|im_end|>⟧\n" in out
    # With --json, stdout stays one JSON object, which carries the example and its trained spans.
    proc = tunery("data", "check", bad, "--model", tiny_model, "--json", "--show", "4", "--max-length", "64")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["stats"]["max_length"] == 64
    example = report["example"]
    assert (example["index"], example["line"]) == (4, 4)
    assert example["trained"] == ["The capital of France is Paris.<|im_end|>"]
    assert "What is the capital of France?" in example["text"]
    assert "Traceback" not in proc.stderr


def test_invalid_utf8_is_listed_with_the_other_errors(tmp_path, tiny_model):
    path = tmp_path / "latin1.jsonl"
    latin1 = json.dumps(GOOD).replace("France?", "France? Cafe").encode().replace(b"Cafe", b"Caf\xe9")  # Latin-1
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + latin1 + b"\n"
                     + json.dumps({"messages": [{"role": "user", "content": "q"}]}).encode() + b"\n")
    proc = tunery("data", "check", path, "--model", tiny_model, "--json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert [(e["line"], e["code"]) for e in report["errors"]] == [(2, "invalid_utf8"), (3, "no_assistant")]
    assert "byte 0xe9 at column" in report["errors"][0]["message"] and report["good"] == 1
    proc = tunery("data", "check", path, "--model", tiny_model)
    assert proc.returncode == 1 and "invalid_utf8" in proc.stdout and "2 errors" in proc.stdout


def test_every_example_dropped_exits_1(tmp_path, tiny_model):
    long = {"messages": [GOOD["messages"][0], {"role": "assistant", "content": "fox " * 200}]}
    path = write_jsonl(tmp_path / "long.jsonl", [long])
    proc = tunery("data", "check", path, "--model", tiny_model, "--max-length", "64", "--json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is False and [e["code"] for e in report["errors"]] == ["no_usable_examples"]
    proc = tunery("data", "check", path, "--model", tiny_model, "--max-length", "64")
    assert proc.returncode == 1
    assert "no_usable_examples" in proc.stdout and "longer than max_length 64" in proc.stdout


def test_one_long_line_is_an_error_not_a_memory_blowup(tmp_path, tiny_model, monkeypatch):
    from tunery.data import readers

    monkeypatch.setattr(readers, "MAX_ROW_BYTES", 4096)  # 8 MiB in use; small here to keep the test fast
    path = tmp_path / "one-line.jsonl"
    path.write_text(json.dumps({"messages": [GOOD["messages"][0], {"role": "assistant", "content": "fox " * 50_000}]}))
    proc = tunery("data", "check", path, "--model", tiny_model, "--json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert [(e["line"], e["code"]) for e in report["errors"]] == [(1, "too_large")]
    assert "over the 4,096 bytes one example may take" in report["errors"][0]["message"]
    csv_path = tmp_path / "one-line.csv"  # in a CSV the structure is lost there: one line, exit 1
    csv_path.write_text("prompt,completion\nq," + "x" * 5000 + "\n")
    proc = tunery("data", "check", csv_path, "--model", tiny_model)
    assert_one_line_error(proc, "one-line.csv:2: the line is 5,002 bytes, over the 4,096 bytes")


@pytest.mark.parametrize("case", ["missing-file", "suffix", "model"])
def test_one_line_errors(tmp_path, tiny_model, case):
    if case == "missing-file":
        proc = tunery("data", "check", tmp_path / "nope.jsonl", "--model", tiny_model)
        assert_one_line_error(proc, "nope.jsonl", "no such file")
    elif case == "suffix":
        path = tmp_path / "data.txt"
        path.write_text(json.dumps(GOOD) + "\n")
        proc = tunery("data", "check", path, "--model", tiny_model)
        assert_one_line_error(proc, "unsupported file type", ".txt")
    else:
        path = write_jsonl(tmp_path / "d.jsonl", [GOOD])
        proc = tunery("data", "check", path, "--model", tmp_path / "no-such-model")
        assert_one_line_error(proc, "no-such-model", "not found")
    assert proc.stdout == ""


def test_bad_option_value_and_missing_example(cli_files, tiny_model):
    clean, _ = cli_files
    proc = tunery("data", "check", clean, "--model", tiny_model, "--overlong", "shrink")
    assert_one_line_error(proc, "overlong")
    assert proc.returncode == 2
    proc = tunery("data", "check", clean, "--model", tiny_model, "--show", "9")
    assert_one_line_error(proc, "no example 9")


@pytest.mark.process
def test_the_installed_script(cli_files, tiny_model, tmp_path):
    """The console script itself: the same exit codes and one-line errors as in-process."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    clean, _ = cli_files
    proc = subprocess.run([TUNERY, "data", "check", clean, "--model", tiny_model, "--json"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"], proc.stderr
    proc = subprocess.run([TUNERY, "data", "check", tmp_path / "nope.jsonl", "--model", tiny_model],
                          capture_output=True, text=True, env=env, timeout=120)
    assert_one_line_error(proc, "nope.jsonl")
