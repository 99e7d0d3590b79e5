"""The registry on tiny models: recording and lineage, ft: names, diff, retrain with a regression gate
that passes and fails on purpose, reeval on another base, stale bases, removal, a corrupt database,
and parallel writers."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from clirun import one_line_error, tunery_cli
from conftest import write_jsonl
from tiny import build_model
from tunery.errors import ModelNotFound, RegistryError
from tunery.models import resolve_model
from tunery.registry import store
from tunery.registry.db import SCHEMA_VERSION, connect
from tunery.registry.diff import diff
from tunery.run_folder import RunFolder
from tunery.training import train


def rows(answer: str, n: int, start: int = 0) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": answer}]} for i in range(start, start + n)]


@pytest.fixture(scope="module")
def lab(tiny_model, tmp_path_factory):
    """One registered LoRA fine-tune that answers "the color is blue", with one recorded eval."""
    folder = tmp_path_factory.mktemp("registry")
    home = folder / "home"
    files = {"train": write_jsonl(folder / "blue.jsonl", rows("the color is blue", 48)),
             "test": write_jsonl(folder / "test.jsonl", rows("the color is blue", 12, start=48)),
             "red": write_jsonl(folder / "red.jsonl", rows("the color is red", 48))}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNERY_HOME", str(home))
        run = train(dict(model=str(tiny_model), data=str(files["train"]), out=str(folder / "runs" / "blue"),
                         max_steps=40, lr=3e-2, batch_size=8, val_split=0.1, eval_every=20), progress=False)
        from tunery.evaluate.evaluator import evaluate_model
        from tunery.registry import recorder

        result = evaluate_model(run.info.name, files["test"], ["exact"], max_new_tokens=16)
        assert result["metrics"]["exact"] == 1.0, "the fixture model learned its answer"
        recorder.record_eval(run.info.id, "eval", files["test"], result,
                             {"metrics": ["exact"], "options": {}, "max_new_tokens": 16, "limit": None})
    return {"home": home, "run": run, "name": run.info.name, "folder": folder, **files}


@pytest.fixture
def at_lab(lab, monkeypatch):
    monkeypatch.setenv("TUNERY_HOME", str(lab["home"]))
    return lab


def cli(*args, home):
    return tunery_cli(*args, home=home)


def quick(tiny_model, data, out, **kw):
    return train(dict(model=str(tiny_model), data=str(data), out=str(out), max_steps=2, batch_size=8,
                      val_split=0.25) | kw, progress=False)


# -- recording ----------------------------------------------------------------------------------

def test_training_is_recorded(at_lab, tiny_model):
    run, name = at_lab["run"], at_lab["name"]
    assert name.startswith("ft:") and name.split(":")[1:3] == [Path(tiny_model).name, "blue"]
    assert name.split(":")[3] == run.info.id[:8]
    assert json.loads((run.dir / "run.json").read_text())["name"] == name  # the run folder knows its name
    assert f"`{name}`" in (run.dir / "README.md").read_text()

    out = cli("models", "show", name, "--json", home=at_lab["home"])
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert row["status"] == "completed" and row["method"] == "lora" and row["files"] == "ok"
    assert row["base_ref"] == str(Path(tiny_model).resolve()) and row["base_source"] == "folder"
    assert len(row["base_weights_sha256"]) == 64 and len(row["base_tokenizer_sha256"]) == 64
    train_data = row["data"]["train"]
    assert train_data["file"] == str(at_lab["train"].resolve()) and train_data["examples"] == 48
    assert train_data["used"] == 43 and len(train_data["sha256"]) == 64
    assert row["data"]["val"]["split"] == 0.1 and row["data"]["val"]["used"] == 5
    assert row["config"]["lr"] == 3e-2 and row["config"]["max_steps"] == 40 and row["config"]["suffix"] == "blue"
    assert row["metrics"]["val_loss"] == pytest.approx(run.info.final.val_loss)
    assert {"tunery", "torch", "transformers", "peft"} <= row["versions"].keys()
    assert row["run_dir"] == str(run.dir.resolve()) and row["artifact"] == "adapter"
    assert row["created"] <= row["finished"] and row["derived_from"] is None
    assert [e["results"]["exact"] for e in row["evals"]] == [1.0]

    listed = json.loads(cli("models", "list", "--json", home=at_lab["home"]).stdout)
    assert [r["name"] for r in listed] == [name]


def test_ft_name_works_for_generate_and_eval_records(at_lab):
    name, home = at_lab["name"], at_lab["home"]
    out = cli("generate", name, "--prompt", "question 7", "--max-new-tokens", "16", home=home)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "the color is blue"
    short = name.split(":")[3]  # the short id works as a reference too
    out = cli("eval", short, "--data", at_lab["test"], "--metrics", "exact,contains", "--max-new-tokens", "16",
              "--json", home=home)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["metrics"]["contains"] == 1.0
    with connect() as conn:
        last = store.evals(conn, store.get(conn, name)["id"])[-1]
    assert last["kind"] == "eval" and last["params"]["metrics"] == ["exact", "contains"]
    assert last["results"]["contains"] == 1.0 and last["examples"] == 12 and len(last["data_sha256"]) == 64
    out = cli("generate", "ft:nope:x:12345678", "--prompt", "hi", home=home)
    assert "not in the registry" in one_line_error(out)


# -- retrain, lineage, diff ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def base2(tmp_path_factory):
    """Another base with the same shapes (a different random init): a "new version" of the base."""
    return build_model(tmp_path_factory.mktemp("base2"), seed=1)


def test_retrain_on_new_base_passes_the_gate_and_records_lineage(at_lab, base2):
    old, home = at_lab["name"], at_lab["home"]
    out = cli("retrain", old, "--base", base2, "--eval", at_lab["test"], "--metrics", "exact",
              "--max-new-tokens", "16", "--max-regression", "0.5", "--out", at_lab["folder"] / "runs" / "pass",
              "--json", home=home)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    by_metric = {r["metric"]: r for r in result["rows"]}
    assert set(by_metric) == {"exact", "loss", "perplexity"}
    assert by_metric["exact"]["old"] == 1.0 and by_metric["exact"]["new"] == 1.0
    assert result["regressions"] == [] and result["eval"]["examples"] == 12
    new = result["new"]
    assert new.startswith(f"ft:{Path(base2).name}:blue:")

    lin = json.loads(cli("lineage", new, "--json", home=home).stdout)
    assert [a["name"] for a in lin["ancestors"]] == [old]
    assert lin["model"]["derived_from"] == at_lab["run"].info.id
    lin = json.loads(cli("lineage", old, "--json", home=home).stdout)
    assert new in [d["name"] for d in lin["descendants"]]
    text = cli("lineage", old, home=home).stdout
    assert text.index(old) < text.index(new)

    diff = json.loads(cli("models", "diff", old, new, "--json", home=home).stdout)
    assert diff["base"]["weights_sha256"][0] != diff["base"]["weights_sha256"][1]
    assert diff["base"]["reference"] == [str(Path(at_lab["run"].config["model"]).resolve()), str(Path(base2).resolve())]
    assert diff["data"] == {} and diff["config"] == {}, "same recipe, same data"
    assert diff["metrics"]["train.steps"] == [40, 40, 0]
    text = cli("models", "diff", old, new, home=home).stdout
    assert "weights_sha256" in text and "data: same" in text and "config: same" in text

    with connect() as conn:  # both were evaluated, the same way, and recorded
        for n in (old, new):
            assert store.evals(conn, store.get(conn, n)["id"])[-1]["kind"] == "retrain"


def test_retrain_gate_fails_on_a_regression(at_lab, tiny_model):
    """New data that teaches another answer: exact drops from 1 to 0, so the gate must fail."""
    old, home = at_lab["name"], at_lab["home"]
    out = cli("retrain", old, "--base", tiny_model, "--data", at_lab["red"], "--eval", at_lab["test"],
              "--metrics", "exact", "--max-new-tokens", "16", "--max-regression", "0.05",
              "--out", at_lab["folder"] / "runs" / "fail", home=home)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "regressed" in out.stdout and "exact" in out.stdout
    err = out.stderr.strip().splitlines()[-1]  # after the training progress
    assert err.startswith("error: ")
    assert "exact worse by 1.0000" in err and "--max-regression 0.05" in err
    with connect() as conn:
        new = store.find(conn, str(at_lab["folder"] / "runs" / "fail"))
        assert new["derived_from"] == at_lab["run"].info.id and new["status"] == "completed"
        assert new["data"]["train"]["file"] == str(at_lab["red"].resolve())
        d = diff(conn, store.get(conn, old), new)
    assert d["data"]["train.file"] == [str(at_lab["train"].resolve()), str(at_lab["red"].resolve())]
    assert d["metrics"][next(k for k in d["metrics"] if k.endswith(".exact"))][:2] == [1.0, 0.0]


def test_reeval_on_new_base_and_a_base_that_does_not_fit(at_lab, base2, tmp_path):
    home, name = at_lab["home"], at_lab["name"]
    out = cli("reeval", name, "--base", base2, "--json", home=home)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["eval"]["data"] == str(at_lab["test"].resolve())  # the recorded evaluation
    rows_ = {r["metric"]: r for r in result["rows"]}
    # The adapter learned against other random weights: on this base it no longer gives the answer.
    assert rows_["exact"]["old"] == 1.0 and rows_["exact"]["new"] < 1.0 and rows_["loss"]["change"] == "worse"
    with connect() as conn:
        last = store.evals(conn, store.get(conn, name)["id"])[-1]
    assert last["kind"] == "reeval" and last["base_ref"] == str(Path(base2).resolve())

    wider = build_model(tmp_path / "wider", hidden=48)
    err = one_line_error(cli("reeval", name, "--base", wider, home=home))
    assert "does not fit" in err and "size mismatch" in err and f"tunery retrain {name} --base" in err


# -- stale bases --------------------------------------------------------------------------------

def test_stale_when_base_content_changes_under_the_same_reference(tiny_model, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    data = write_jsonl(tmp_path / "d.jsonl", rows("the color is blue", 8))
    on_copy = quick(base, data, tmp_path / "r1")
    on_other = quick(tiny_model, data, tmp_path / "r2")
    home = os.environ["TUNERY_HOME"]
    assert json.loads(cli("models", "list", "--stale", "--json", home=home).stdout) == []

    weights = base / "model.safetensors"
    w = load_file(weights)
    key = next(iter(w))
    w[key] = w[key] + 0.01 * torch.ones_like(w[key])
    save_file(w, weights, metadata={"format": "pt"})  # re-saved in place: same path, new content
    stale = json.loads(cli("models", "list", "--stale", "--json", home=home).stdout)
    assert [r["name"] for r in stale] == [on_copy.info.name]
    assert stale[0]["stale_reason"] == "base weights changed"
    assert on_other.info.name not in cli("models", "list", "--stale", home=home).stdout

    fresh = quick(base, data, tmp_path / "r3")  # trained on the new content: not stale
    stale = json.loads(cli("models", "list", "--stale", "--json", home=home).stdout)
    assert [r["name"] for r in stale] == [on_copy.info.name]
    with connect() as conn:
        assert store.get(conn, fresh.info.name)["base_weights_sha256"] != stale[0]["base_weights_sha256"]


# -- failures, resume, removal, missing files ---------------------------------------------------

def test_failed_run_is_marked_and_resume_keeps_the_name(tiny_model, tmp_path, monkeypatch):
    from tunery.training import loop

    data = write_jsonl(tmp_path / "d.jsonl", rows("x", 8))

    def broken_export(*a, **k):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(loop, "export", broken_export)
        with pytest.raises(OSError):
            quick(tiny_model, data, tmp_path / "r")
    with connect() as conn:
        (row,) = store.list_models(conn)
    assert row["status"] == "failed" and row["error"] == "OSError: disk full" and row["files"] == "none"
    info = RunFolder(tmp_path / "r").read_info()  # run.json does not claim it is still running
    assert (info.status, info.error, info.id) == ("failed", "OSError: disk full", row["id"]) and info.finished

    resumed = train(dict(model=str(tiny_model), data=str(data), out=str(tmp_path / "r"), max_steps=2,
                         batch_size=8, val_split=0.25, resume=True), progress=False)
    with connect() as conn:
        (row,) = store.list_models(conn)
    assert row["name"] == resumed.info.name and row["status"] == "completed" and row["error"] is None
    info = RunFolder(tmp_path / "r").read_info()
    assert (info.status, info.error) == ("completed", None)


def test_interrupted_run_says_so_in_run_json(tiny_model, tmp_path):
    from tunery.training.loop import Signal, TrainingStopped

    data = write_jsonl(tmp_path / "d.jsonl", rows("x", 8))
    with pytest.raises(TrainingStopped):
        train(dict(model=str(tiny_model), data=str(data), out=str(tmp_path / "r"), max_steps=2, batch_size=8),
              progress=False, on_step=lambda row: Signal.CANCEL)
    info = RunFolder(tmp_path / "r").read_info()
    with connect() as conn:
        row = store.get(conn, info.id)
    assert info.status == row["status"] == "cancelled" and info.error == row["error"] == "TrainingStopped: training cancelled at step 1"


def test_copied_run_folder_resumes_as_a_new_model(tiny_model, tmp_path):
    """A copy of a run folder names the original's registry id in its run.json: resuming or
    training it records a new model; the original's row keeps its status, folder and name."""
    from tunery.training.loop import Signal, TrainingStopped

    data = write_jsonl(tmp_path / "d.jsonl", rows("x", 8))
    original = quick(tiny_model, data, tmp_path / "orig")
    with connect() as conn:
        before = store.get(conn, original.info.id)

    def resume(folder, **kw):
        return train(dict(model=str(tiny_model), data=str(data), out=str(folder), max_steps=4, batch_size=8,
                          val_split=0.25, resume=True), progress=False, **kw)

    shutil.copytree(tmp_path / "orig", tmp_path / "copy")
    copy = resume(tmp_path / "copy")
    assert copy.info.id != original.info.id and copy.info.name != original.info.name
    assert RunFolder(tmp_path / "copy").read_info().id == copy.info.id
    shutil.copytree(tmp_path / "orig", tmp_path / "copy2")
    with pytest.raises(TrainingStopped):  # a copy whose resume fails or stops marks only itself
        resume(tmp_path / "copy2", on_step=lambda row: Signal.CANCEL)
    copy2 = RunFolder(tmp_path / "copy2").read_info()
    assert copy2.status == "cancelled" and copy2.id not in (original.info.id, copy.info.id)
    assert RunFolder(tmp_path / "orig").read_info() == original.info
    with connect() as conn:
        after = store.get(conn, original.info.id)
        assert {k: after[k] for k in ("status", "run_dir", "name", "error", "finished", "metrics")} == \
            {k: before[k] for k in ("status", "run_dir", "name", "error", "finished", "metrics")}
        assert store.get(conn, copy.info.name)["run_dir"] == str((tmp_path / "copy").resolve())
        assert store.get(conn, copy.info.name)["status"] == "completed"
        assert store.get(conn, copy2.id)["status"] == "cancelled"
        assert len(store.list_models(conn)) == 3

    os.replace(tmp_path / "orig", tmp_path / "moved")  # a moved folder is still the same model
    moved = resume(tmp_path / "moved")
    assert (moved.info.id, moved.info.name) == (original.info.id, original.info.name)
    with connect() as conn:
        assert store.get(conn, original.info.id)["run_dir"] == str((tmp_path / "moved").resolve())
        assert len(store.list_models(conn)) == 3


def test_remove_and_missing_files(tiny_model, tmp_path):
    home = os.environ["TUNERY_HOME"]
    data = write_jsonl(tmp_path / "d.jsonl", rows("x", 8))
    keep, gone, doomed = (quick(tiny_model, data, tmp_path / n) for n in ("keep", "gone", "doomed"))
    child = quick(tiny_model, data, tmp_path / "child", derived_from=doomed.info.id)
    with connect() as conn:  # no recorded eval: the plan falls back to the validation split
        from tunery.workflows.lifecycle import plan_eval

        plan = plan_eval(conn, store.get(conn, keep.info.name))
    assert plan.data == keep.dir.resolve() / "eval-set.jsonl" and "validation split" in plan.source
    assert len(plan.data.read_text().splitlines()) == 2  # 25% of 8

    shutil.rmtree(gone.dir / "adapter")  # files vanished behind the registry's back
    listed = {r["name"]: r["files"] for r in json.loads(cli("models", "list", "--json", home=home).stdout)}
    assert listed == {keep.info.name: "ok", gone.info.name: "missing", doomed.info.name: "ok",
                      child.info.name: "ok"}
    assert "missing" in cli("models", "list", home=home).stdout
    shown = cli("models", "show", gone.info.name, home=home)
    assert shown.returncode == 0 and "(missing)" in shown.stdout
    assert "adapter is missing" in one_line_error(cli("generate", gone.info.name, "--prompt", "hi", home=home))

    out = cli("models", "rm", doomed.info.name, home=home)  # no --yes, no terminal: nothing removed
    assert out.returncode == 1 and doomed.dir.is_dir()
    out = cli("models", "rm", doomed.info.name, "--yes", home=home)
    assert out.returncode == 0, out.stderr
    assert not doomed.dir.exists() and not list(tmp_path.glob(".tunery-removed-*"))
    assert "not in the registry" in one_line_error(cli("models", "show", doomed.info.name, home=home))
    lin = json.loads(cli("lineage", child.info.name, "--json", home=home).stdout)
    assert lin["ancestors"] == [{"id": doomed.info.id, "name": None, "status": None, "base_ref": None,
                                 "derived_from": None, "created": None, "removed": True}]
    assert "(removed)" in cli("lineage", child.info.name, home=home).stdout

    (keep.dir / "notes.txt").write_text("mine")  # a folder holding the user's own files is never deleted
    assert "did not write" in one_line_error(cli("models", "rm", keep.info.name, "--yes", home=home))
    assert (keep.dir / "adapter").is_dir()
    assert cli("models", "rm", gone.info.name, "-y", home=home).returncode == 0

    first = quick(tiny_model, data, tmp_path / "reused")
    shutil.rmtree(first.dir)
    second = quick(tiny_model, data, tmp_path / "reused")  # the same folder, another model
    listed = {r["name"]: r["files"] for r in json.loads(cli("models", "list", "--json", home=home).stdout)}
    assert listed[first.info.name] == "replaced" and listed[second.info.name] == "ok"
    with pytest.raises(ModelNotFound, match="another run has since been written"):
        resolve_model(first.info.name)
    assert cli("models", "rm", first.info.name, "--yes", home=home).returncode == 0
    assert (second.dir / "adapter").is_dir(), "removing the old row left the new model's folder alone"
    assert cli("models", "rm", second.info.name, "--yes", home=home).returncode == 0 and not second.dir.exists()
    assert [r["name"] for r in json.loads(cli("models", "list", "--json", home=home).stdout)] == [
        keep.info.name, child.info.name]


# -- the database itself ------------------------------------------------------------------------

def test_corrupt_missing_and_newer_database(tiny_model, tmp_path):
    home = Path(os.environ["TUNERY_HOME"])
    assert "no models yet" in cli("models", "list", home=home).stdout
    assert "no registry" in one_line_error(cli("models", "show", "ft:a:b:12345678", home=home))
    assert not (home / "registry.db").exists(), "reading does not create a database"

    (home / "registry.db").write_bytes(b"this is not a database, just garbage bytes " * 100)
    for args in (["models", "list"], ["lineage", "ft:a:b:12345678"], ["generate", "ft:a:b:12345678", "-p", "hi"]):
        err = one_line_error(cli(*args, home=home))
        assert str(home / "registry.db") in err and "unreadable" in err
    data = write_jsonl(tmp_path / "d.jsonl", rows("x", 8))
    with pytest.raises(RegistryError, match="registry.db"):
        quick(tiny_model, data, tmp_path / "r")

    (home / "registry.db").unlink()
    with connect() as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    assert "newer than this tunery" in one_line_error(cli("models", "list", home=home))


def test_migrations_upgrade_an_older_database(tmp_path):
    from tunery.registry import db

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    db.MIGRATIONS[0](conn)  # a registry written by a tunery that knew only the first migration
    conn.execute("INSERT INTO models (id, name, suffix, status, method, base_ref, base_name, base_path, base_source, "
                 "config, data, versions, run_dir, artifact, created) VALUES ('a' || hex(randomblob(15)), 'ft:b:s:aaaa', "
                 "'s', 'completed', 'lora', 'b', 'b', '/b', 'folder', '{}', '{}', '{}', '/r', 'adapter', 'now')")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert [r[0] for r in conn.execute("SELECT name FROM models")] == ["ft:b:s:aaaa"]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"models", "evals", "file_hashes", "exports"} <= tables


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tunery.models import ResolvedModel
    from tunery.registry import recorder
    from tunery.run_folder import BaseRecord, DataRecord, FinalRecord, RunInfo

    base, runs, go, worker, n = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    while not go.exists():
        time.sleep(0.005)
    resolved_base = ResolvedModel(str(base), "fake", base, "folder")
    for i in range(n):
        run = runs / f"w{worker}-{i}"
        run.mkdir(parents=True)
        info = RunInfo(started=f"2025-01-01T00:00:{i:02d}+00:00", artifact="adapter", method="lora",
                       base=BaseRecord(reference=str(base), name="fake", path=str(base), source="folder"),
                       data=DataRecord(file=f"/data/{worker}.jsonl", sha256="0" * 64, examples=10, used=10),
                       parameters={"trainable": 1, "total": 2})
        resolved = {"model": str(base), "data": f"/data/{worker}.jsonl", "method": "lora", "seed": i}
        info.id, info.name = recorder.started(run, resolved, info, resolved_base)
        info.final = FinalRecord(steps=1, shipped_step=1, trained_tokens=1, val_loss=float(i), best_by="val_loss",
                                 seconds=1.0)
        info.finished = "2025-01-01T00:01:00+00:00"
        recorder.finished(info)
        recorder.record_eval(info.id, "eval", base / "config.json", {"examples": [0, 1], "metrics": {"exact": i / n}},
                             {"metrics": ["exact"]})
""")


@pytest.mark.process
def test_parallel_writers(tmp_path):
    """Several processes create the database and write to it at once: nothing lost, nothing corrupt."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    (base / "model.safetensors").write_bytes(os.urandom(1 << 20))
    (base / "tokenizer.json").write_text("{}")
    go, workers, n = tmp_path / "go", 4, 15
    env = os.environ | {"TUNERY_HOME": os.environ["TUNERY_HOME"]}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, base, tmp_path / "runs", go, str(w), str(n)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(workers)]
    time.sleep(1.0)  # let every interpreter start and wait at the line
    go.write_text("")
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with connect() as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        models = store.list_models(conn)
        assert len(models) == workers * n == len({m["name"] for m in models}) == len({m["id"] for m in models})
        assert all(m["status"] == "completed" and m["metrics"]["val_loss"] == m["config"]["seed"] for m in models)
        assert conn.execute("SELECT COUNT(*) FROM evals").fetchone()[0] == workers * n
        hashes = {m["base_weights_sha256"] for m in models}
        assert len(hashes) == 1 and None not in hashes
        assert conn.execute("SELECT COUNT(*) FROM file_hashes").fetchone()[0] == 3
