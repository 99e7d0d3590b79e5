"""The console's server side, in-process: logging in (cookie, not a URL key), what a session may
do without the console's header, the pages and their assets, and the /v1/tunery API the pages
read (data doctor on an upload, the registry, baseline, tasks), which must never show a server
path. The pages themselves run in a real browser in test_console_browser.py."""

import json
import time

import pytest
from fastapi.testclient import TestClient

from conftest import write_jsonl
from tunery.serve.app import create_app
from tunery.serve.catalog import Catalog
from tunery.serve.console import COOKIE, SESSION_SECONDS, session_of, session_token
from tunery.training import train

KEY = "sk-console"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONSOLE = {"X-Tunery-Console": "1"}


def rows(answer: str, n: int, start: int = 0) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": answer}]} for i in range(start, start + n)]


@pytest.fixture(scope="module")
def lab(tiny_model, tmp_path_factory):
    """A registered LoRA fine-tune of the tiny model (served as base `tiny`), in its own home."""
    folder = tmp_path_factory.mktemp("console")
    home = folder / "home"
    train_file = write_jsonl(folder / "blue.jsonl", rows("the color is blue", 48))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNERY_HOME", str(home))
        run = train(dict(model=str(tiny_model), data=str(train_file), out=str(folder / "runs" / "blue"),
                         max_steps=30, lr=3e-2, batch_size=8, val_split=0.1, eval_every=10, suffix="blue"), progress=False)
    return {"home": home, "folder": folder, "name": run.info.name, "id": run.info.id}


@pytest.fixture
def app(lab, tiny_model, monkeypatch):
    monkeypatch.setenv("TUNERY_HOME", str(lab["home"]))
    application = create_app(api_key=KEY, jobs_worker=False, catalog=Catalog({"tiny": str(tiny_model)}))
    with TestClient(application, follow_redirects=False) as client:
        yield client


def logged_in(app) -> TestClient:
    r = app.post("/login", data={"key": KEY, "next": "/models"})
    assert r.status_code == 303 and r.headers["location"] == "/models"
    return app


def no_server_paths(body, lab):
    text = json.dumps(body)
    assert str(lab["folder"]) not in text and str(lab["home"]) not in text, text[:2000]


def wait_task(app, task: dict, timeout=120) -> dict:
    deadline = time.time() + timeout
    while task["status"] in ("queued", "running"):
        assert time.time() < deadline, task
        time.sleep(0.2)
        task = app.get(f"/v1/tunery/tasks/{task['id']}", headers=AUTH).json()
    return task


# -- sessions -------------------------------------------------------------------------------------

def test_pages_ask_for_a_login_and_the_api_for_a_key(app):
    r = app.get("/data?x=1")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Fdata%3Fx%3D1"
    assert app.get("/v1/tunery/models").status_code == 401
    page = app.get("/login")
    assert page.status_code == 200 and 'name="key"' in page.text and "script-src 'self'" in page.headers["content-security-policy"]
    assert app.get("/console/static/console.js").status_code == 200  # what the login page needs
    assert app.get("/console/static/app.py").status_code == 404


def test_login_sets_an_httponly_strict_cookie_never_the_key(app):
    bad = app.post("/login", data={"key": "wrong", "next": "/"})
    assert bad.status_code == 401 and "not this server" in bad.text and COOKIE not in bad.headers.get("set-cookie", "")
    r = app.post("/login", data={"key": KEY, "next": "/data"})
    cookie = r.headers["set-cookie"]
    assert r.status_code == 303 and r.headers["location"] == "/data"
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and KEY not in cookie
    issued, _ = app.cookies[COOKIE].split(".")
    assert app.cookies[COOKIE] == session_token(KEY, int(issued)) and abs(int(issued) - time.time()) < 60
    assert f"Max-Age={SESSION_SECONDS}" in cookie and "Secure" not in cookie  # plain http here
    stale = session_token(KEY, int(time.time()) - SESSION_SECONDS - 1)
    assert not session_of({b"cookie": f"{COOKIE}={stale}".encode()}, KEY)  # an old session has ended
    assert not session_of({b"cookie": f"{COOKIE}={session_token('another key')}".encode()}, KEY)
    for path in ("/", "/data", "/models", "/compare", "/playground", "/jobs/ftjob-" + "0" * 24):
        page = app.get(path)
        assert page.status_code == 200 and 'src="/console/static/console.js"' in page.text, path
        assert page.headers["x-frame-options"] == "DENY"
    assert app.get("/v1/tunery/models").status_code == 200  # the cookie works on the API too


def test_login_redirects_only_to_this_sites_pages(app):
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example", "/v1/files"):
        r = app.post("/login", data={"key": KEY, "next": target})
        assert r.headers["location"] == "/", target


def test_a_session_write_needs_the_console_header(app, tmp_path):
    logged_in(app)
    body = {"model": "tiny", "training_file": "file-" + "0" * 24}
    r = app.post("/v1/fine_tuning/jobs", json=body)
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf"
    r = app.post("/v1/fine_tuning/jobs", json=body, headers=CONSOLE)
    assert r.status_code == 400 and "no such file" in r.json()["error"]["message"]  # past the guard
    app.cookies.clear()
    app.cookies.set(COOKIE, "forged")
    assert app.get("/v1/tunery/models").status_code == 401
    assert app.post("/logout").status_code == 303


def test_a_wrong_job_page_is_a_404_page(app):
    logged_in(app)
    r = app.get("/jobs/../../etc/passwd")
    assert r.status_code in (404, 303)
    assert app.get("/jobs/not-a-job").status_code == 404


# -- the data doctor over the API -----------------------------------------------------------------

def upload(app, path):
    r = app.post("/v1/files", headers=AUTH, files={"file": (path.name, path.read_bytes())}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def test_check_reports_errors_by_line_and_renders_trained_tokens(app, lab, tmp_path):
    bad = tmp_path / "mixed.jsonl"
    bad.write_text("\n".join([json.dumps(r) for r in rows("blue", 3)]
                             + ['{"messages": [{"role": "user", "content": "no answer"}]}', "{not json"]) + "\n")
    file_id = upload(app, bad)
    r = app.get(f"/v1/tunery/files/{file_id}/check?model=tiny", headers=AUTH)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["examples"] == 5 and report["good"] == 3 and not report["ok"]
    assert {e["line"] for e in report["errors"]} == {4, 5}
    assert report["stats"]["file"] == "mixed.jsonl" and report["stats"]["model"] == "tiny"
    assert report["stats"]["histogram"] and report["stats"]["suggested_epochs"] >= 1
    no_server_paths(report, lab)
    assert str(app.app.state.catalog.reference("tiny")) not in json.dumps(report)

    ex = app.get(f"/v1/tunery/files/{file_id}/examples/2?model=tiny", headers=AUTH).json()
    assert ex["line"] == 2
    trained = "".join(p["text"] for p in ex["pieces"] if p["trained"])
    assert "blue" in trained and "question 1" not in trained
    assert "question 1" in "".join(p["text"] for p in ex["pieces"] if not p["trained"])
    missing = app.get(f"/v1/tunery/files/{file_id}/examples/4?model=tiny", headers=AUTH)
    assert missing.status_code == 400 and "mixed.jsonl:4" in missing.json()["error"]["message"]
    no_server_paths(missing.json(), lab)
    assert app.get(f"/v1/tunery/files/{file_id}/check?model=/etc", headers=AUTH).status_code == 404
    assert app.get("/v1/tunery/files/file-" + "1" * 24 + "/check", headers=AUTH).status_code == 404


# -- the registry over the API --------------------------------------------------------------------

def test_models_list_and_one_model_without_server_paths(app, lab):
    listed = app.get("/v1/tunery/models", headers=AUTH).json()["data"]
    assert [m["name"] for m in listed] == [lab["name"]]
    m = listed[0]
    assert m["status"] == "completed" and m["servable"] and m["stale"] is False and m["base_model"] == "tiny"
    one = app.get(f"/v1/tunery/models/{lab['name']}", headers=AUTH).json()
    assert one["id"] == lab["id"] and one["lineage"]["model"]["name"] == lab["name"]
    assert [p["step"] for p in one["curve"] if "val_loss" in p] == [10, 20, 30]
    assert one["config"]["data"] == "blue.jsonl" and one["data"]["train"]["file"] == "blue.jsonl"
    assert one["card"] and lab["name"] in one["card"]
    no_server_paths(one, lab)
    for probe in (str(lab["folder"] / "runs" / "blue"), "../../etc", "ft:nope:x:12345678"):
        assert app.get(f"/v1/tunery/models/{probe}", headers=AUTH).status_code == 404, probe


def test_baseline_gives_the_served_base_and_few_shot_turns(app, lab):
    b = app.get(f"/v1/tunery/models/{lab['name']}/baseline", headers=AUTH).json()
    assert b["base_model"] == "tiny" and b["few_shot"] == 3
    assert [m["role"] for m in b["messages"]] == ["user", "assistant"] * 3


def test_reeval_and_compare_run_as_tasks(app, lab, tmp_path):
    task = app.post(f"/v1/tunery/models/{lab['name']}/reeval", headers=AUTH).json()
    assert task["object"] == "tunery.task" and task["kind"] == "reeval"
    done = wait_task(app, task)
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["rows"] and done["result"]["eval"]["examples"] >= 1
    no_server_paths(done, lab)
    held_out = upload(app, write_jsonl(tmp_path / "held-out.jsonl", rows("the color is blue", 4, start=100)))
    task = app.post("/v1/tunery/compare", headers=AUTH, json={"model": lab["name"], "file": held_out, "limit": 4,
                                                             "max_new_tokens": 8})
    assert task.status_code == 200, task.text
    done = wait_task(app, task.json())
    assert done["status"] == "succeeded", done["error"]
    result = done["result"]
    assert set(result["contestants"]) == {"base", "prompt_only", "tuned"} and result["data"] == "held-out.jsonl"
    assert "<svg" in result["report_html"] and "held-out.jsonl" in result["report_html"]
    no_server_paths(result, lab)
    assert [t["kind"] for t in app.get("/v1/tunery/tasks", headers=AUTH).json()["data"]] == ["compare", "reeval"]


def test_task_requests_are_checked(app, lab):
    r = app.post("/v1/tunery/compare", headers=AUTH, json={"model": lab["name"], "metrics": ["mymod:fn"]})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("metrics")
    r = app.post(f"/v1/tunery/models/{lab['name']}/retrain", headers=AUTH, json={"base": "/etc"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "base"
    assert app.get("/v1/tunery/tasks/task-nope", headers=AUTH).status_code == 404


def test_retrain_on_a_served_base_records_lineage(app, lab):
    task = app.post(f"/v1/tunery/models/{lab['name']}/retrain", headers=AUTH, json={"base": "tiny"}).json()
    done = wait_task(app, task, timeout=300)
    assert done["status"] == "succeeded", done["error"]
    new = done["result"]["new"]
    assert new != lab["name"] and done["result"]["rows"]
    no_server_paths(done, lab)
    one = app.get(f"/v1/tunery/models/{new}", headers=AUTH).json()
    assert one["derived_from"] == lab["id"] and one["lineage"]["ancestors"][0]["name"] == lab["name"]
    parent = app.get(f"/v1/tunery/models/{lab['name']}", headers=AUTH).json()
    assert [d["name"] for d in parent["lineage"]["descendants"]] == [new]


# -- hardening: what a hostile page or client may send ---------------------------------------------

def test_a_keyless_server_answers_only_loopback_hosts_and_same_origin_writes(lab, tiny_model, monkeypatch):
    """DNS rebinding (another Host) and a page on another site posting to a keyless local server are
    refused; local clients (no Origin, or this origin) are not."""
    monkeypatch.setenv("TUNERY_HOME", str(lab["home"]))
    application = create_app(jobs_worker=False, catalog=Catalog({"tiny": str(tiny_model)}),
                             allowed_hosts=("localhost", "127.0.0.1", "::1"))
    with TestClient(application, base_url="http://127.0.0.1:8000") as local:
        assert local.get("/v1/models").status_code == 200
        assert local.get("/v1/models", headers={"Host": "[::1]:8000"}).status_code == 200
        rebound = local.get("/v1/models", headers={"Host": "attacker.example:8000"})
        assert rebound.status_code == 421 and rebound.json()["error"]["code"] == "host_not_allowed"
        upload = dict(files={"file": ("x.jsonl", b"{}\n")}, data={"purpose": "fine-tune"})
        cross = local.post("/v1/files", headers={"Origin": "https://attacker.example"}, **upload)
        assert cross.status_code == 403 and cross.json()["error"]["code"] == "cross_origin"
        assert local.post("/v1/files", headers={"Origin": "null"}, **upload).status_code == 403  # a sandboxed page
        assert local.get("/v1/models", headers={"Host": "LOCALHOST:8000"}).status_code == 200
        assert local.post("/v1/files", headers={"Origin": "http://127.0.0.1:8000"}, **upload).status_code == 200
        assert local.post("/v1/files", **upload).status_code == 200  # a client without Origin: the openai SDK


def test_hostile_requests_get_4xx_never_500(app, lab):
    ask = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    chunked = app.post("/v1/chat/completions", content=json.dumps(ask).encode(),
                       headers=AUTH | {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert chunked.status_code == 411  # chunks would frame the body past any Content-Length
    assert app.post("/v1/chat/completions", json=ask | {"seed": 2**70}, headers=AUTH).status_code == 400
    parts = ask | {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}
    wrong = app.post("/v1/chat/completions", json=parts, headers=AUTH)  # named where it is wrong, not `content.str`
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "messages[0].content[0].text"
    deep = "[" * 100_000 + "]" * 100_000
    assert app.post("/v1/fine_tuning/jobs", content=deep, headers=AUTH | {"Content-Type": "application/json"}).status_code == 400
    for name in ("a." + "x" * 300, "bad\x00name.txt", "../../../etc/passwd"):
        r = app.post("/v1/files", files={"file": (name, b"data")}, data={"purpose": "assistants"}, headers=AUTH)
        assert r.status_code == 200 and "/" not in r.json()["filename"] and "\x00" not in r.json()["filename"], r.text
    uploaded = app.post("/v1/files", files={"file": ("t.jsonl", b'{"messages": []}\n')}, data={"purpose": "fine-tune"},
                        headers=AUTH).json()["id"]
    assert app.get(f"/v1/tunery/files/{uploaded}/examples/{10**30}", headers=AUTH).status_code in (400, 422)


def test_tasks_past_the_limit_are_refused_not_queued_unseen():
    import threading

    from tunery.errors import Busy
    from tunery.serve.tasks import MAX_WAITING, Tasks

    tasks, release = Tasks(), threading.Event()
    try:
        taken = [tasks.submit("reeval", "m", release.wait) for _ in range(MAX_WAITING)]
        with pytest.raises(Busy):
            tasks.submit("reeval", "m", release.wait)
        release.set()
        deadline = time.time() + 30
        while any(tasks.get(t["id"])["status"] != "succeeded" for t in taken):
            assert time.time() < deadline
            time.sleep(0.05)
        tasks.submit("reeval", "m", lambda: None)  # room again
    finally:
        release.set()
        tasks.close()


def test_a_recorded_user_metric_is_not_imported_for_a_request(app, lab):
    """A `module:function` metric the operator recorded from the CLI is code: a re-evaluation asked
    for over the API refuses it instead of importing it in the server."""
    from tunery.registry import store
    from tunery.registry.db import connect

    data = write_jsonl(lab["folder"] / "held.jsonl", rows("the color is blue", 2))
    with connect() as conn:
        store.record_eval(conn, lab["id"], "eval", data, 2, {"metrics": ["os:system"], "max_new_tokens": 4}, {"os:system": 1.0})
    try:
        task = wait_task(app, app.post(f"/v1/tunery/models/{lab['name']}/reeval", headers=AUTH).json())
        assert task["status"] == "failed" and "os:system" in task["error"]["message"]
        assert "does not import" in task["error"]["message"] and task["error"]["param"] == "metrics"
    finally:
        from tunery.registry.db import transaction

        with connect() as conn, transaction(conn):
            conn.execute("DELETE FROM evals WHERE data_file = ?", (str(data.resolve()),))
