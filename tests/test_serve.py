"""A real uvicorn server on 127.0.0.1 with tiny models, driven by the official openai client."""

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_jsonl
from tunery.training import train

pytestmark = pytest.mark.process  # the second lane: real processes

TUNERY = str(Path(sys.executable).parent / "tunery")
KEY = "sk-test-123"


def http(method: str, url: str, body=None, key=KEY) -> tuple[int, dict]:
    """A raw request (stdlib only), for what the openai client would refuse to send."""
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, *extra) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = os.environ | {"TUNERY_HOME": str(home)}
    log = open(home.parent / f"server-{port}.log", "w+")  # a file: a pipe nobody reads fills and blocks the server
    proc = subprocess.Popen([TUNERY, "serve", "--port", str(port), *extra], env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(log.read())
        try:
            http("GET", url + "/v1/models")
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


@pytest.fixture(scope="module")
def serve_home(tmp_path_factory):
    return tmp_path_factory.mktemp("serve-home")


@pytest.fixture(scope="module")
def runs(tiny_model, serve_home, tmp_path_factory):
    """Two LoRA fine-tunes over the same tiny base, taught different fixed answers, registered in
    the server's registry: {answer: registry name}."""
    folder = tmp_path_factory.mktemp("serve")
    out = {}
    before = os.environ.get("TUNERY_HOME")
    os.environ["TUNERY_HOME"] = str(serve_home)  # module scope: monkeypatch is per test
    try:
        for answer in ("blue", "green"):
            rows = [{"messages": [{"role": "user", "content": f"question {i}"},
                                  {"role": "assistant", "content": f"the color is {answer}"}]} for i in range(32)]
            data = write_jsonl(folder / f"{answer}.jsonl", rows)
            out[answer] = train(dict(model=str(tiny_model), data=str(data), out=str(folder / answer), max_steps=60,
                                     lr=3e-2, batch_size=8, val_split=0), progress=False).info.name
    finally:
        if before is None:
            os.environ.pop("TUNERY_HOME", None)
        else:
            os.environ["TUNERY_HOME"] = before
    return out


@pytest.fixture(scope="module")
def server(runs, serve_home, tiny_model):
    proc, url = start_server(serve_home, "--api-key", KEY, "--max-adapters", "1", "--base", f"tiny={tiny_model}")
    yield url
    proc.kill()
    proc.wait()


def client(url, key=KEY):
    from openai import OpenAI

    return OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def test_chat_switches_adapters_over_one_base(server, runs, tiny_model):
    c = client(server)
    ask = [{"role": "user", "content": "question 99"}]
    for _ in range(2):  # max_adapters=1: every switch evicts and reloads an adapter
        for answer, run in runs.items():
            r = c.chat.completions.create(model=run, messages=ask, max_tokens=24, temperature=0)
            assert r.choices[0].message.content == f"the color is {answer}"
            assert r.choices[0].finish_reason == "stop"
            assert r.usage.prompt_tokens > 5 and r.usage.completion_tokens == r.usage.total_tokens - r.usage.prompt_tokens
    base = c.chat.completions.create(model="tiny", messages=ask, max_tokens=5, temperature=0)
    assert base.choices[0].message.content not in ("the color is blue", "the color is green")
    assert base.choices[0].finish_reason == "length" and base.usage.completion_tokens == 5


def test_streaming_matches_plain(server, runs):
    c = client(server)
    ask = [{"role": "user", "content": "question 7"}]
    stream = c.chat.completions.create(model=runs["blue"], messages=ask, max_tokens=24, stream=True, temperature=0,
                                       stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for ch in stream:
        if ch.usage:
            usage = ch.usage
        for choice in ch.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == "the color is blue" and finish == "stop"
    assert len([p for p in pieces if p]) > 1, "streamed in several pieces"
    assert usage.completion_tokens > 1


def test_concurrent_requests_are_all_answered(server, runs):
    c = client(server)

    def ask(i):
        run = runs["blue" if i % 2 else "green"]
        r = c.chat.completions.create(model=run, messages=[{"role": "user", "content": f"question {i}"}],
                                      max_tokens=24, temperature=0)
        return i, r.choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = dict(pool.map(ask, range(12)))
    assert all(results[i] == f"the color is {'blue' if i % 2 else 'green'}" for i in range(12))


def test_sampling_with_seed_is_reproducible(server, runs, tiny_model):
    c = client(server)
    kw = dict(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
              temperature=1.0, top_p=0.9, seed=5)
    assert c.chat.completions.create(**kw).choices[0].message.content == \
        c.chat.completions.create(**kw).choices[0].message.content
    stop = c.chat.completions.create(model=runs["blue"], messages=[{"role": "user", "content": "question 3"}],
                                     max_tokens=24, stop=["is"], temperature=0)
    assert stop.choices[0].message.content == "the color " and stop.choices[0].finish_reason == "stop"


def test_errors_have_openai_shape_and_codes(server, runs):
    import openai

    c = client(server)
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").models.list()
    status, body = http("POST", server + "/v1/chat/completions", {"model": runs["blue"]})
    assert status == 400 and body["error"]["param"] == "messages"
    status, body = http("POST", server + "/v1/chat/completions",
                        {"model": runs["blue"], "messages": [{"role": "user", "content": "x"}], "temperature": 9})
    assert status == 400 and body["error"]["param"] == "temperature"
    ids = [m.id for m in c.models.list().data]
    assert {"default", "tiny", runs["blue"], runs["green"]} <= set(ids) and not [i for i in ids if "/" in i]
    assert c.models.retrieve(runs["blue"]).id == runs["blue"]


def test_refuses_public_bind_without_key(tmp_path):
    out = subprocess.run([TUNERY, "serve", "--host", "0.0.0.0", "--port", str(_free_port())], capture_output=True,
                         text=True, timeout=30, env=os.environ | {"TUNERY_HOME": str(tmp_path)})
    assert out.returncode == 2 and "without --api-key" in out.stderr and "Traceback" not in out.stderr


def test_port_in_use_is_a_one_line_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run([TUNERY, "serve", "--port", str(port), "--no-jobs"], capture_output=True, text=True,
                             timeout=30, env=os.environ | {"TUNERY_HOME": str(tmp_path)})
    assert out.returncode == 2 and "cannot listen" in out.stderr and "Traceback" not in out.stderr


def test_incremental_text_matches_decoding_everything(tiny_model):
    """Streaming decodes only new tokens; the text must be what decoding all of them gives, at
    every step where no character is cut in half (accents and emoji span several byte tokens)."""
    from tunery.generation import IncrementalText
    from tunery.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    ids = tok.encode("Café au lait 🙂 -> {\"name\": \"Zoë\"}  done.", add_special_tokens=False)
    inc = IncrementalText(tok)
    for i in range(0, len(ids), 2):
        text = inc.add(ids[i: i + 2])
        full = tok.decode(ids[: i + 2], skip_special_tokens=True)
        assert full.startswith(text) and (text == full or full.endswith("\ufffd"))
    assert text == tok.decode(ids, skip_special_tokens=True)


def test_several_choices_plain_and_streamed(server, runs):
    """n > 1: n answers, each reproducible with a seed, also streamed (deltas tagged by index)."""
    c = client(server)
    kw = dict(model=runs["blue"], messages=[{"role": "user", "content": "question 3"}], max_tokens=12,
              temperature=1.0, seed=11, n=3)
    first, again = c.chat.completions.create(**kw), c.chat.completions.create(**kw)
    texts = [ch.message.content for ch in first.choices]
    assert [ch.index for ch in first.choices] == [0, 1, 2] and texts == [ch.message.content for ch in again.choices]
    # choice i is the answer to the same request with seed 11 + i; usage adds up the choices
    alone = [c.chat.completions.create(**(kw | dict(n=1, seed=11 + i))) for i in range(3)]
    assert texts == [a.choices[0].message.content for a in alone]
    assert first.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)
    assert first.usage.prompt_tokens == alone[0].usage.prompt_tokens
    streamed = ["", "", ""]
    finished = set()
    for ev in c.chat.completions.create(**kw, stream=True):
        for ch in ev.choices:
            streamed[ch.index] += ch.delta.content or ""
            if ch.finish_reason:
                finished.add(ch.index)
    assert streamed == texts and finished == {0, 1, 2}
    greedy = c.chat.completions.create(**(kw | dict(temperature=0, seed=None)))
    assert len({ch.message.content for ch in greedy.choices}) == 1


def test_an_unauthenticated_upload_is_answered_before_its_body(server):
    """The 401 comes back while the client has sent only the headers of a 400 MB upload."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  b"Content-Length: 419430400\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):  # the server closes the connection after its answer
            reply += chunk
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 401") and "invalid_api_key" in reply


def test_sigterm_stops_the_server_within_seconds(tiny_model, tmp_path):
    proc, url = start_server(tmp_path / "home", "--no-jobs", "--base", f"tiny={tiny_model}")
    c = client(url, key="unused")

    def ask(i):
        try:
            c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"q {i}"}], max_tokens=480)
        except Exception:  # noqa: BLE001 - the server going away is the point
            pass

    pool = concurrent.futures.ThreadPoolExecutor(16)
    for i in range(16):  # about a minute of generation queued
        pool.submit(ask, i)
    time.sleep(2)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    finally:
        proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)
    assert time.time() - t0 < 10


def test_a_dead_jobs_worker_is_restarted(tmp_path):
    import psutil

    proc, url = start_server(tmp_path / "home")
    try:
        server = psutil.Process(proc.pid)
        deadline = time.time() + 30
        while not server.children() and time.time() < deadline:
            time.sleep(0.1)
        first = server.children()[0]
        first.kill()
        while time.time() < deadline:
            kids = [k for k in server.children() if k.pid != first.pid]
            if kids:
                break
            time.sleep(0.2)
        assert kids and kids[0].status() != psutil.STATUS_ZOMBIE
        assert not psutil.pid_exists(first.pid) or psutil.Process(first.pid).status() != psutil.STATUS_ZOMBIE
    finally:
        proc.kill()
        proc.wait()
    # Killed while its new worker may still be starting: the worker must not outlive it.
    deadline = time.time() + 20
    while time.time() < deadline and any(psutil.pid_exists(k.pid) and psutil.Process(k.pid).status() !=
                                         psutil.STATUS_ZOMBIE for k in kids):
        time.sleep(0.2)
    assert not [k for k in kids if psutil.pid_exists(k.pid) and psutil.Process(k.pid).status() != psutil.STATUS_ZOMBIE]


def test_grounded_answers_carry_citations_through_the_openai_client(server, serve_home, tmp_path, monkeypatch):
    from tunery.retrieval import build_index

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "birch.md").write_text("# Birch\n\nThe trains of Birch are painted blue.\n")
    (docs / "cedar.md").write_text("# Cedar\n\nThe trains of Cedar are painted green.\n")
    monkeypatch.setenv("TUNERY_HOME", str(serve_home))  # registered where the server looks
    build_index([docs], tmp_path / "index", name="towns")
    r = client(server).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "What color are the trains of Cedar?"}], max_tokens=4,
        extra_body={"tunery": {"retrieval": {"index": "towns", "k": 1}}})
    citations = r.model_extra["tunery"]["citations"]
    assert len(citations) == 1 and citations[0]["source"].endswith("cedar.md") and citations[0]["score"] > 0
