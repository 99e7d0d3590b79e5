"""The command line for people and for scripts: --json prints one JSON document on stdout and
nothing else, --quiet prints the result alone, long steps show progress on stderr (forced here with
TUNERY_PROGRESS=1, since tests have no terminal), and errors end with what to do next. In-process,
on the tiny model: one short training run serves every command that needs a fine-tune."""

import io
import json
import re
import sys

import pytest

from clirun import one_line_error, tunery_cli
from conftest import write_jsonl

FORCED = {"TUNERY_PROGRESS": "1"}


def rows(n: int, start: int = 0) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": "the color is blue"}]} for i in range(start, start + n)]


def one_json(out) -> dict | list:
    """stdout holds exactly one JSON document."""
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip().splitlines()) == 1, out.stdout
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def lab(tiny_model, tmp_path_factory):
    """A LoRA fine-tune trained through the CLI with --json and forced progress."""
    folder = tmp_path_factory.mktemp("friendly")
    data = write_jsonl(folder / "blue.jsonl", rows(16))
    test = write_jsonl(folder / "test.jsonl", rows(4, start=16))
    home = folder / "home"
    out = tunery_cli("train", "--model", tiny_model, "--data", data, "--out", folder / "run", "--max-steps", "3",
                     "--batch-size", "8", "--val-split", "0.25", "--json", home=home, env=FORCED)
    return {"folder": folder, "data": data, "test": test, "home": home, "train": out}


def cli(lab, *args, env=None):
    return tunery_cli(*args, home=lab["home"], env=env)


# -- --json --------------------------------------------------------------------------------------

def test_train_json_is_the_run_record_and_progress_stays_on_stderr(lab):
    record = one_json(lab["train"])
    assert record["dir"] == str(lab["folder"] / "run") and record["status"] == "completed"
    assert record["name"].startswith("ft:") and record["final"]["steps"] == 3 and record["config"]["max_steps"] == 3
    err = lab["train"].stderr
    assert re.search(r"^train  3/3 steps  100%  in \d:\d\d:\d\d  loss \d+\.\d{4} val \d+\.\d{4} \d+ tok/s$", err, re.M), err
    assert "train lora on" in err and "done: ft:" in err  # the status lines, beside the progress


def test_every_result_command_prints_one_json_document(lab, tiny_model):
    name = one_json(lab["train"])["name"]
    run = lab["folder"] / "run"
    generated = one_json(cli(lab, "generate", run, "-p", "question 1", "--max-new-tokens", "4", "--json"))
    assert set(generated) >= {"text", "finish_reason", "prompt_tokens", "completion_tokens"}
    checked = one_json(cli(lab, "data", "check", lab["data"], "--model", tiny_model, "--json", "--quiet"))
    assert checked["ok"] and checked["examples"] == 16
    evaluated = one_json(cli(lab, "eval", name, "--data", lab["test"], "--max-new-tokens", "4", "--json"))
    assert "exact" in evaluated["metrics"] and len(evaluated["examples"]) == 4
    assert one_json(cli(lab, "models", "list", "--json"))[0]["name"] == name
    assert one_json(cli(lab, "models", "show", name, "--json", "--quiet"))["name"] == name
    assert one_json(cli(lab, "lineage", name, "--json"))["model"]["name"] == name
    merged = one_json(cli(lab, "merge", run, lab["folder"] / "merged", "--json"))
    assert merged == {"out": str(lab["folder"] / "merged")}
    exported = one_json(cli(lab, "export", name, "--format", "peft", "--out", lab["folder"] / "peft", "--json",
                            env=FORCED))
    assert exported["format"] == "peft" and exported["verification"]["max_abs_logit_diff"] <= 1e-3


def test_compare_json_with_progress_per_contestant(lab, tiny_model):
    out = cli(lab, "compare", "--base", tiny_model, "--tuned", lab["folder"] / "run", "--data",
              lab["test"], "--few-shot", "1", "--max-new-tokens", "4", "--batch-size", "2", "--json", env=FORCED)
    result = one_json(out)
    assert set(result["contestants"]) == {"base", "prompt_only", "tuned"} and "verdict" in result
    for who in ("base", "prompt_only", "tuned"):
        assert re.search(rf"^generate {who}  4/4 answers  100%  in ", out.stderr, re.M), out.stderr


def test_index_commands_print_one_json_document(lab, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Trains\n\nThe night train leaves from platform 4.\n")
    (docs / "b.md").write_text("# Fares\n\nA return fare costs 12 euros.\n")
    out = cli(lab, "index", "build", docs, "--out", tmp_path / "ix", "--json", env=FORCED)
    assert one_json(out)["documents"] == 2
    assert re.search(r"^chunk documents  2/2 documents  100%", out.stderr, re.M)
    assert re.search(r"^embed chunks  \d+/\d+ chunks  100%", out.stderr, re.M), out.stderr
    hits = one_json(cli(lab, "index", "search", "ix", "-q", "platform", "--json"))["results"]
    assert hits[0]["source"].endswith("a.md")
    assert one_json(cli(lab, "index", "info", "ix", "--json"))["chunks"] >= 2
    assert [r["name"] for r in one_json(cli(lab, "index", "list", "--json"))] == ["ix"]
    assert one_json(cli(lab, "index", "rm", "ix", "--yes", "--json"))["removed"] == "ix"


# -- --quiet -------------------------------------------------------------------------------------

def test_quiet_prints_the_result_alone(lab, tiny_model):
    out = cli(lab, "train", "--model", tiny_model, "--data", lab["data"], "--out", lab["folder"] / "quiet",
              "--max-steps", "1", "--batch-size", "8", "--quiet", env=FORCED)  # --quiet wins over forced progress
    assert out.returncode == 0 and out.stderr == "" and out.stdout == f"{lab['folder'] / 'quiet'}\n"
    out = cli(lab, "generate", tiny_model, "-p", "hi", "--max-new-tokens", "3", "--quiet", env=FORCED)
    assert out.returncode == 0 and out.stderr == "" and len(out.stdout.splitlines()) == 1
    out = cli(lab, "data", "check", lab["data"], "--model", tiny_model, "--quiet", env=FORCED)
    assert out.returncode == 0 and out.stderr == "" and "examples 16" in out.stdout


def test_progress_of_reading_a_data_file_counts_its_bytes(lab, tiny_model):
    from rich.filesize import decimal

    out = cli(lab, "data", "check", lab["data"], "--model", tiny_model, "--json", env=FORCED)
    size = decimal(lab["data"].stat().st_size)
    assert re.search(rf"^read blue\.jsonl  {size}/{size}  100%  in .*  16 examples$", out.stderr, re.M), out.stderr
    assert json.loads(out.stdout)["ok"]  # progress never on stdout


def test_no_progress_without_a_terminal_unless_asked(lab, tiny_model):
    out = cli(lab, "data", "check", lab["data"], "--model", tiny_model, "--json")
    assert out.stderr == ""
    out = cli(lab, "data", "check", lab["data"], "--model", tiny_model, "--json", env={"TUNERY_PROGRESS": "0"})
    assert out.stderr == ""


# -- the renderers ---------------------------------------------------------------------------------

def test_bars_show_count_eta_and_note_on_a_terminal():
    from rich.console import Console

    from tunery.cli_output import Bars
    from tunery.progress import Task, listening, say

    screen = io.StringIO()
    bars = Bars(Console(file=screen, force_terminal=True, width=120, color_system=None))
    with listening(bars):
        with Task("train", 4, unit="steps") as task:
            say("warning: [not markup]")
            for step in range(1, 5):
                task.update(step, note=f"loss {1 / step:.4f}")
        assert bars.bars is None  # no step runs: the bars are gone, a result prints cleanly
    text = screen.getvalue()
    assert "train" in text and "4/4 steps" in text and "loss 0.2500" in text and "0:00:00" in text
    assert "warning: [not markup]" in text


def test_lines_tell_the_eta_of_a_running_step(monkeypatch, capsys):
    from tunery import progress
    from tunery.cli_output import Lines

    clock = [100.0]
    monkeypatch.setattr("time.monotonic", lambda: clock[0])
    with progress.listening(Lines()):
        with progress.Task("embed chunks", 100, unit="chunks") as task:
            clock[0] += 10
            task.advance(25, note="batch 1")
    err = capsys.readouterr().err.splitlines()
    assert err == ["embed chunks  25/100 chunks  25%  ETA 0:00:30  batch 1",
                   "embed chunks  25/100 chunks  25%  in 0:00:10  batch 1"]


def test_the_processes_of_a_run_report_through_the_launcher(tmp_path):
    """Rank 0's tasks and status lines cross to the launcher's listener with its step rows."""
    from tunery.progress import Listener, Task, listening, say
    from tunery.training.control import Channel, Mirror, ToLauncher

    channel = Channel(tmp_path)
    with listening(ToLauncher(channel)):
        with Task("train", 2, unit="steps") as task:
            channel.on_step({"step": 1, "loss": 1.0})
            task.update(1, note="loss 1.0000")
        say("done: ft:x")

    class Heard(Listener):
        def __init__(self):
            self.events = []

        def update(self, task):
            self.events.append(("update", task.what, task.done, task.total, task.note))

        def end(self, task):
            self.events.append(("end", task.what, task.done))

        def say(self, message):
            self.events.append(("say", message))

    heard, mirror, steps = Heard(), Mirror(), []
    with listening(heard):
        for row in channel.rows(0):
            if not mirror.take(row):
                steps.append(row)
    assert steps == [{"step": 1, "loss": 1.0}]
    assert heard.events == [("update", "train", 0, 2, ""), ("update", "train", 1, 2, "loss 1.0000"),
                            ("end", "train", 1), ("say", "done: ft:x")]


# -- errors that say what to do next -----------------------------------------------------------------

def test_an_unknown_model_says_where_to_look(lab):
    line = one_line_error(cli(lab, "generate", "no-such-model", "-p", "hi"))
    assert "model 'no-such-model' not found" in line and line.endswith(
        "; run `tunery models list` to see the registered fine-tunes, or put the model in a folder or the Hugging "
        "Face cache first")
    line = one_line_error(cli(lab, "models", "show", "ft:nope", "--json"))
    assert line == "error: model 'ft:nope' is not in the registry; run `tunery models list` to see the names"


def test_a_bad_data_file_points_to_the_data_doctor(lab, tiny_model, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", rows(4) + ["{oops", {"messages": []}])
    out = cli(lab, "train", "--model", tiny_model, "--data", bad, "--out", tmp_path / "r", "--max-steps", "1", "--json")
    line = one_line_error(out)
    assert out.stdout == "" and f"{bad}:5: invalid JSON" in line and "(and 1 more)" in line
    assert line.endswith(f"; run `tunery data check {bad}` to see every problem")
    line = one_line_error(cli(lab, "eval", lab["folder"] / "run", "--data", bad))
    assert line.endswith(f"; run `tunery data check {bad}` to see every problem")


def test_a_missing_extra_names_the_pip_command(lab, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pypdf", None)  # as if pypdf were not installed
    (tmp_path / "paper.pdf").write_bytes(b"%PDF-1.4\n")
    line = one_line_error(cli(lab, "index", "build", tmp_path / "paper.pdf", "--out", tmp_path / "ix"))
    assert line.endswith("reading .pdf needs pypdf; run `pip install pypdf`")


def test_the_hint_is_the_clis_alone_and_crosses_processes():
    from tunery.errors import ModelNotFound
    from tunery.training.control import error_from, error_report

    exc = ModelNotFound("model 'x' not found", hint="run `tunery models list`")
    assert str(exc) == "model 'x' not found"  # what the server answers
    assert exc.line() == "model 'x' not found; run `tunery models list`"
    again = error_from(error_report(exc))
    assert isinstance(again, ModelNotFound) and again.line() == exc.line()


def test_model_names_are_printed_as_written_not_as_emoji(capsys):
    """`ft:m:train:...` holds `:m:`, rich's code for Ⓜ: a name must print as it is typed back."""
    from tunery.cli_output import console

    console().print("ft:m:train:45d561b5 ft:x:ok:new:1")
    assert "ft:m:train:45d561b5 ft:x:ok:new:1" in capsys.readouterr().out
