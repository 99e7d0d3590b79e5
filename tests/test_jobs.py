"""The fine-tuning jobs API through the official openai client against a real server: upload ->
job -> events -> checkpoints -> chat with the ft: model; cancel, pause/resume, bad files, bad
requests, and a server killed mid-job that finishes the job after a restart."""

import json
import signal
import time

import openai
import pytest
from conftest import write_jsonl
from test_serve import KEY, client, http, start_server

pytestmark = pytest.mark.process  # the second lane: real processes


def rows(answer="blue", n=40):
    return [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": f"the color is {answer}"}]} for i in range(n)]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("jobs-home")


@pytest.fixture(scope="module")
def server(home, tiny_model):
    proc, url = start_server(home, "--api-key", KEY, "--base", f"tiny={tiny_model}")
    yield url
    proc.kill()
    proc.wait()


def wait_for(c, job_id, statuses, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = c.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job.status}")


def upload(c, tmp_path, data, name="train.jsonl"):
    path = write_jsonl(tmp_path / name, data)
    with open(path, "rb") as f:
        return c.files.create(file=f, purpose="fine-tune")


def test_upload_train_and_chat_with_the_result(server, tiny_model, tmp_path):
    c = client(server)
    f = upload(c, tmp_path, rows())
    assert f.id.startswith("file-") and f.bytes > 0 and f.filename == "train.jsonl"
    assert c.files.retrieve(f.id).purpose == "fine-tune"
    assert c.files.content(f.id).read() == (tmp_path / "train.jsonl").read_bytes()
    job = c.fine_tuning.jobs.create(
        model="tiny", training_file=f.id, suffix="colors", seed=3,
        hyperparameters={"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 150},
        extra_body={"tunery": {"max_steps": 40, "val_split": 0.1, "save_every": 10, "eval_every": 10}})
    assert job.status == "validating_files" and job.id.startswith("ftjob-")
    done = wait_for(c, job.id, ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model.startswith("ft:") and ":colors:" in done.fine_tuned_model
    assert done.trained_tokens > 0 and done.finished_at >= done.created_at
    assert done.hyperparameters.batch_size == 8 and done.hyperparameters.learning_rate_multiplier == 150

    events = c.fine_tuning.jobs.list_events(job.id, limit=100).data
    messages = [e.message for e in events]
    assert messages[0] == "The job has successfully completed"  # newest first
    assert any(m.startswith("Step 40/40") for m in messages)
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and "train_loss" in metrics[0].data
    ckpts = c.fine_tuning.jobs.checkpoints.list(job.id).data
    assert ckpts and ckpts[0].step_number == 40 and ckpts[0].metrics.train_loss is not None

    ask = [{"role": "user", "content": "question 77"}]
    r = c.chat.completions.create(model=done.fine_tuned_model, messages=ask, max_tokens=24, temperature=0)
    assert r.choices[0].message.content == "the color is blue"
    streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model=done.fine_tuned_model, messages=ask, max_tokens=24, temperature=0, stream=True) if ch.choices)
    assert streamed == "the color is blue"
    assert done.fine_tuned_model in [m.id for m in c.models.list().data]

    page = c.fine_tuning.jobs.list(limit=1)
    assert page.data[0].id == job.id
    assert c.files.delete(f.id).deleted and f.id not in [x.id for x in c.files.list().data]


def test_cancel_pause_resume(server, tiny_model, tmp_path):
    c = client(server)
    f = upload(c, tmp_path, rows("green"))
    slow = {"tunery": {"max_steps": 100000, "val_split": 0, "save_every": 1000}}
    job = c.fine_tuning.jobs.create(model="tiny", training_file=f.id, extra_body=slow)
    wait_for(c, job.id, ("running",))
    while not c.fine_tuning.jobs.retrieve(job.id).trained_tokens:
        time.sleep(0.1)
    paused = c.fine_tuning.jobs.pause(job.id)
    assert paused.status == "running"  # asked; the worker pauses at the next step
    paused = wait_for(c, job.id, ("paused",), timeout=30)
    hp = paused.hyperparameters  # auto values, as the run resolved them
    assert isinstance(hp.n_epochs, int) and hp.learning_rate_multiplier == 1 and hp.batch_size == 8
    ckpts = c.fine_tuning.jobs.checkpoints.list(job.id).data
    assert ckpts, "pausing checkpoints the current step"
    assert c.fine_tuning.jobs.resume(job.id).status == "queued"
    wait_for(c, job.id, ("running",))
    t0 = time.time()
    c.fine_tuning.jobs.cancel(job.id)
    cancelled = wait_for(c, job.id, ("cancelled",), timeout=30)
    assert time.time() - t0 < 15 and cancelled.finished_at
    with pytest.raises(openai.BadRequestError):
        c.fine_tuning.jobs.cancel(job.id)  # already cancelled


def test_a_job_trains_with_two_processes(server, tiny_model, tmp_path, home):
    """extra_body={"tunery": {"nproc": 2}}: the worker starts two processes; its events and
    checkpoints come as from one."""
    from tunery.run_folder import RunFolder

    c = client(server)
    f = upload(c, tmp_path, rows("gold"))
    job = c.fine_tuning.jobs.create(model="tiny", training_file=f.id, extra_body={
        "tunery": {"nproc": 2, "max_steps": 12, "val_split": 0, "save_every": 6, "lr": 0.01}})
    done = wait_for(c, job.id, ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    steps = [e.data["step"] for e in c.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"]
    assert sorted(steps) == list(range(1, 13))
    assert [ck.step_number for ck in c.fine_tuning.jobs.checkpoints.list(job.id).data] == [12, 6]
    assert RunFolder(home / "jobs" / job.id / "run").read_config()["nproc"] == 2


def test_a_dpo_job_from_a_fine_tune(server, tiny_model, tmp_path):
    """The hosted API's dpo method on its preference format, starting from a supervised job's model:
    events carry the rewards, the job reports its method and beta, the result answers."""
    c = client(server)
    sft = c.fine_tuning.jobs.create(model="tiny", training_file=upload(c, tmp_path, rows("red")).id, extra_body={
        "tunery": {"max_steps": 20, "val_split": 0, "lr": 0.01}})
    sft = wait_for(c, sft.id, ("succeeded", "failed"))
    assert sft.status == "succeeded", sft.error
    pairs = [{"input": {"messages": [{"role": "user", "content": f"question {i}"}]},
              "preferred_output": [{"role": "assistant", "content": "the color is red"}],
              "non_preferred_output": [{"role": "assistant", "content": "the color is blue"}]} for i in range(16)]
    f = upload(c, tmp_path, pairs, "pairs.jsonl")
    job = c.fine_tuning.jobs.create(model=sft.fine_tuned_model, training_file=f.id, method={
        "type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "batch_size": 4}}},
        extra_body={"tunery": {"max_steps": 4, "val_split": 0.25}})
    done = wait_for(c, job.id, ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    assert done.method.type == "dpo" and done.method.dpo.hyperparameters.beta == 0.2
    metrics = [e for e in c.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"]
    first = min(metrics, key=lambda e: e.data["step"])
    assert abs(first.data["train_loss"] - 0.693147) < 1e-4  # the reference is the supervised model
    assert {"rewards_margin", "accuracy", "val_rewards_margin", "val_accuracy"} <= set(metrics[0].data)
    r = c.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "question 3"}],
                                  max_tokens=24, temperature=0)
    assert r.choices[0].message.content == "the color is red"


def test_bad_file_fails_validation_with_line_numbers(server, tiny_model, tmp_path):
    c = client(server)
    bad = rows()[:3] + [{"messages": [{"role": "user", "content": "only a question"}]}, "{not json"]
    f = upload(c, tmp_path, bad, "bad.jsonl")
    job = c.fine_tuning.jobs.create(model="tiny", training_file=f.id)
    failed = wait_for(c, job.id, ("failed", "succeeded"))
    assert failed.status == "failed" and failed.error.param == "training_file"
    assert "line 4" in failed.error.message and "no_assistant" in failed.error.message
    assert "line 5" in failed.error.message and "invalid_json" in failed.error.message


def test_bad_requests(server, tiny_model, tmp_path):
    c = client(server)
    f = upload(c, tmp_path, rows())
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.create(model="tiny", training_file="file-" + "0" * 24)
    assert e.value.body["param"] == "training_file"
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.create(model="no-such-model", training_file=f.id)
    assert e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.create(model="tiny", training_file=f.id, hyperparameters={"n_epochs": 0})
    status, body = http("POST", server + "/v1/fine_tuning/jobs", {"model": "tiny"})
    assert status == 400 and body["error"]["param"] == "training_file"
    # The tunery extension tunes the recipe but names no server path and no code.
    for field, value in (("data", "/etc/passwd"), ("template", "/etc/passwd"), ("out", "/tmp/x"),
                         ("eval_metric", "os:system")):
        status, body = http("POST", server + "/v1/fine_tuning/jobs",
                            {"model": "tiny", "training_file": f.id, "tunery": {field: value}})
        assert status == 400 and body["error"]["param"] == f"tunery.{field}", body
    with pytest.raises(openai.NotFoundError):
        c.fine_tuning.jobs.retrieve("ftjob-" + "1" * 24)
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve("../../etc/passwd")
    with pytest.raises(openai.AuthenticationError):
        client(server, key="nope").fine_tuning.jobs.list()


def test_upload_limit(home, tmp_path):
    proc, url = start_server(tmp_path / "home", "--max-upload-mb", "1", "--no-jobs")
    try:
        big = tmp_path / "big.jsonl"
        big.write_text(json.dumps({"text": "x" * 1000}) + "\n" * 1 + (json.dumps({"text": "y" * 1000}) + "\n") * 1500)
        with open(big, "rb") as f, pytest.raises(openai.APIStatusError) as e:
            client(url).files.create(file=f, purpose="fine-tune")
        assert e.value.status_code == 413
    finally:
        proc.kill()
        proc.wait()


def test_server_killed_mid_job_resumes_after_restart(tiny_model, tmp_path):
    home = tmp_path / "home"
    proc, url = start_server(home, "--base", f"tiny={tiny_model}")
    c = client(url)
    f = upload(c, tmp_path, rows())
    job = c.fine_tuning.jobs.create(model="tiny", training_file=f.id, extra_body={
        "tunery": {"max_steps": 600, "val_split": 0, "save_every": 50, "lr": 0.01}})
    wait_for(c, job.id, ("running",))
    while (c.fine_tuning.jobs.checkpoints.list(job.id).data or [None])[0] is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1)  # the worker dies with the server (PR_SET_PDEATHSIG)
    run_dir = home / "jobs" / job.id / "run"
    steps_before = len((run_dir / "metrics.jsonl").read_text().splitlines())
    assert steps_before < 600, "the job finished before the server was killed"

    proc, url = start_server(home)
    try:
        c = client(url)
        done = wait_for(c, job.id, ("succeeded", "failed"), timeout=240)
        assert done.status == "succeeded", done.error
        steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert steps == list(range(1, 601)), "resumed from the checkpoint: no step lost or repeated"
        events = c.fine_tuning.jobs.list_events(job.id, limit=1000).data
        assert any("resumed" in e.message for e in events)
        logged = [e.data["step"] for e in events if e.type == "metrics"]
        assert sorted(logged) == sorted(set(logged)), "a re-run step is logged once"
    finally:
        proc.kill()
        proc.wait()
