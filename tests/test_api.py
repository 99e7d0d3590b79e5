"""The API's refusals, in-process (FastAPI's TestClient, no worker): what a hostile but fair
client tries (server paths, code, oversized or malformed requests, racing a cancel) gets a 4xx in
the OpenAI error shape, and nothing runs or leaks."""

import io
import json

import pytest
from fastapi.testclient import TestClient

from conftest import write_jsonl
from tunery.serve import jobs
from tunery.serve.app import create_app
from tunery.serve.catalog import Catalog

KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}


def rows(n=8):
    return [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": "the color is blue"}]} for i in range(n)]


@pytest.fixture
def api(tiny_model):
    app = create_app(api_key=KEY, jobs_worker=False, max_upload_bytes=10_000, catalog=Catalog({"tiny": str(tiny_model)}))
    with TestClient(app) as client:
        yield client


@pytest.fixture
def file_id(api, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", rows())
    r = api.post("/v1/files", headers=AUTH, files={"file": ("train.jsonl", data.read_bytes())},
                 data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


def test_the_key_guards_everything_even_the_docs(api):
    for path in ("/v1/models", "/docs", "/openapi.json", "/v1/fine_tuning/jobs", "/nope"):
        assert error(api.get(path), 401)["code"] == "invalid_api_key"
    assert api.get("/docs", headers=AUTH).status_code == 404  # no generated docs behind a key


def test_an_unauthenticated_upload_is_refused_before_its_body(api):
    # Content-Length says 400 MB: a server that read the body first would wait for it.
    r = api.post("/v1/files", headers={"Content-Length": str(400 * 2**20)}, content=b"")
    assert error(r, 401)["code"] == "invalid_api_key"
    r = api.post("/v1/files", headers=AUTH | {"Content-Length": str(400 * 2**20)}, content=b"")
    assert error(r, 413)["param"] == "file"


def test_models_are_names_never_paths(api, tiny_model, tmp_path):
    listed = [m["id"] for m in api.get("/v1/models", headers=AUTH).json()["data"]]
    assert listed == ["default", "tiny"]
    missing = error(api.get("/v1/models/no-such-model", headers=AUTH), 404)
    for probe in (str(tiny_model), "/etc", "/etc/passwd", "HuggingFaceTB/SmolLM2-135M"):
        body = error(api.get(f"/v1/models/{probe}", headers=AUTH), 404)  # exists or not: the same answer
        assert body["code"] == "model_not_found" and body["message"] == missing["message"].replace("no-such-model", probe)
        chat = api.post("/v1/chat/completions", headers=AUTH, json={"model": probe, "messages": [
            {"role": "user", "content": "hi"}]})
        assert error(chat, 404)["param"] == "model"
    assert [m["id"] for m in api.get("/v1/models", headers=AUTH).json()["data"]] == ["default", "tiny"]


def test_a_prompt_beyond_the_context_is_a_400_at_once(api):
    huge = " ".join(["word"] * 40_000)
    r = api.post("/v1/chat/completions", headers=AUTH, json={"model": "tiny", "max_tokens": 1,
                                                             "messages": [{"role": "user", "content": huge}]})
    assert error(r, 400)["param"] == "messages" and "maximum context length" in r.json()["error"]["message"]
    r = api.post("/v1/chat/completions", headers=AUTH, json={"model": "tiny", "max_tokens": 10**9,
                                                             "messages": [{"role": "user", "content": "hi"}]})
    assert error(r, 400)["param"] == "max_tokens"
    r = api.post("/v1/chat/completions", headers=AUTH, json={"model": "tiny", "stop": ["x" * 10] * 5000,
                                                             "messages": [{"role": "user", "content": "hi"}]})
    assert error(r, 400)["param"] == "stop"


@pytest.mark.parametrize("body, param", [
    ({"training_file": 123}, "training_file"),
    ({"hyperparameters": "x"}, "hyperparameters"),
    ({"hyperparameters": {"n_epochs": 10**6}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"n_epochs": True}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"batch_size": 10**9}}, "hyperparameters.batch_size"),
    ({"hyperparameters": {"warmup_steps": 3}}, "hyperparameters.warmup_steps"),
    ({"method": {"type": "reinforcement"}}, "method.type"),
    ({"tunery": {"lora_r": 10**6}}, "tunery.lora_r"),
    ({"tunery": {"eval_metric": "os:symlink"}}, "tunery.eval_metric"),
    ({"method": {"tunery": {"eval_metric": "os:system"}}}, "method.tunery.eval_metric"),
    ({"tunery": {"template": "/etc/passwd"}}, "tunery.template"),
    ({"tunery": {"template": "file-" + "0" * 24}}, "tunery.template"),
    ({"tunery": {"model": "/tmp/other"}}, "tunery.model"),
    ({"tunery": {"data": "/etc/passwd"}}, "tunery.data"),
    ({"tunery": {"out": "/tmp/x"}}, "tunery.out"),
    ({"tunery": {"derived_from": "abc"}}, "tunery.derived_from"),
    ({"model": "/etc"}, "model"),
    ({"validation_file": "file-" + "1" * 24}, "validation_file"),
])
def test_malformed_job_requests_are_400s_naming_the_field(api, file_id, body, param):
    request = {"model": "tiny", "training_file": file_id} | body
    r = api.post("/v1/fine_tuning/jobs", headers=AUTH, json=request)
    assert error(r, 400)["param"] == param
    assert api.get("/v1/fine_tuning/jobs", headers=AUTH).json()["data"] == []  # nothing was queued


def test_a_job_request_must_be_json(api, file_id):
    r = api.post("/v1/fine_tuning/jobs", headers=AUTH | {"Content-Type": "application/x-www-form-urlencoded"},
                 content=f"model=tiny&training_file={file_id}")
    assert error(r, 415)


def test_an_uploaded_template_is_named_by_its_id(api, file_id, tmp_path):
    template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    r = api.post("/v1/files", headers=AUTH, files={"file": ("chat.jinja", template.encode())},
                 data={"purpose": "user_data"})
    tid = r.json()["id"]
    r = api.post("/v1/fine_tuning/jobs", headers=AUTH, json={"model": "tiny", "training_file": file_id,
                                                             "tunery": {"template": tid}})
    assert r.status_code == 200, r.text


def test_a_cancel_during_validation_is_final(api, file_id, tiny_model):
    """The worker finishing validation must not overwrite a cancel that landed meanwhile."""
    from tunery.registry import jobs as rows
    from tunery.registry.db import connect
    from tunery.serve import worker

    job = api.post("/v1/fine_tuning/jobs", headers=AUTH, json={"model": "tiny", "training_file": file_id}).json()
    with connect() as conn:
        claimed = rows.get_job(conn, job["id"])  # as the worker holds it: status validating_files
    assert api.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=AUTH).json()["status"] == "cancelled"
    worker.validate(claimed)  # finishes after the cancel
    assert api.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=AUTH).json()["status"] == "cancelled"
    worker.run(claimed | {"status": "queued"}, parent=-1)  # nor may it start training
    assert api.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=AUTH).json()["status"] == "cancelled"
    with pytest.raises(Exception):
        jobs.control(job["id"], "resume")


def test_job_errors_name_files_by_id_not_path(api, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "only a question"}]}) + "\n")
    r = api.post("/v1/files", headers=AUTH, files={"file": ("bad.jsonl", bad.read_bytes())}, data={"purpose": "fine-tune"})
    fid = r.json()["id"]
    job = api.post("/v1/fine_tuning/jobs", headers=AUTH, json={"model": "tiny", "training_file": fid}).json()
    from tunery.home import tunery_home
    from tunery.registry import jobs as rows
    from tunery.registry.db import connect
    from tunery.serve import worker

    with connect() as conn:
        claimed = rows.get_job(conn, job["id"])
    worker.validate(claimed)
    failed = api.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=AUTH).json()
    assert failed["status"] == "failed" and fid in failed["error"]["message"]
    assert str(tunery_home()) not in json.dumps(failed)


def test_upload_limit_counts_the_bytes_too(api):
    r = api.post("/v1/files", headers=AUTH, files={"file": ("big.jsonl", io.BytesIO(b"x" * 20_000))},
                 data={"purpose": "fine-tune"})
    assert r.status_code == 413


def test_checkpoints_are_servable_by_name(api, tiny_model, tmp_path):
    """`<fine-tune>:ckpt-step-N` (as /checkpoints lists them) answers like the final model does."""
    from tunery.training import train

    data = write_jsonl(tmp_path / "d.jsonl", rows(16))
    run = train(dict(model=str(tiny_model), data=str(data), out=str(tmp_path / "run"), max_steps=40, lr=3e-2,
                     batch_size=8, val_split=0, save_every=20, keep_checkpoints=5, select="last"), progress=False)
    ask = {"messages": [{"role": "user", "content": "question 3"}], "max_tokens": 12, "temperature": 0}
    final = api.post("/v1/chat/completions", headers=AUTH, json={"model": run.info.name} | ask).json()
    at_40 = api.post("/v1/chat/completions", headers=AUTH, json={"model": f"{run.info.name}:ckpt-step-40"} | ask)
    assert at_40.status_code == 200, at_40.text
    assert at_40.json()["choices"][0]["message"]["content"] == final["choices"][0]["message"]["content"]
    assert api.get(f"/v1/models/{run.info.name}:ckpt-step-20", headers=AUTH).status_code == 200
    assert error(api.get(f"/v1/models/{run.info.name}:ckpt-step-7", headers=AUTH), 404)["code"] == "model_not_found"


def test_the_llamacpp_engine_without_its_extra_is_a_one_line_error(monkeypatch, tmp_path):
    import sys

    from clirun import one_line_error, tunery_cli

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if the gguf extra were not installed
    line = one_line_error(tunery_cli("serve", "--engine", "llamacpp", "--no-jobs", home=tmp_path))
    assert "pip install 'tunery[gguf]'" in line
    assert "engine" in one_line_error(tunery_cli("serve", "--engine", "vllm", "--no-jobs", home=tmp_path))


def test_the_llamacpp_catalog_names_gguf_files_only(tiny_model, tmp_path, monkeypatch):
    from tunery.errors import ConfigError, ModelNotFound

    monkeypatch.setenv("TUNERY_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="serves GGUF files"):
        Catalog({"tiny": str(tiny_model)}, engine="llamacpp").check()
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf")
    with pytest.raises(ConfigError, match="serves GGUF files"):
        Catalog({"fake": str(fake)}, engine="llamacpp").check()
    catalog = Catalog(engine="llamacpp")
    with pytest.raises(ModelNotFound, match="Q4_1.*f16"):
        catalog.gguf("default")
    with pytest.raises(ModelNotFound, match="does not exist"):
        catalog.gguf(str(fake))
    assert catalog.names() == [] and Catalog().names() == ["default"]
