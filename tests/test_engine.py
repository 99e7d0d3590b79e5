"""The inference engine in-process on a tiny random model (it never emits its end-of-turn token,
so an answer runs to max_tokens): round-robin turns, cancellation, shutdown."""

import time

import pytest

from tunery.serve.engine import Cancelled, ChatRequest
from tunery.serve.engine import Engine as _Engine

_engines = []


def Engine(**kw):  # noqa: N802 - closed after each test: no generation left running at exit
    _engines.append(_Engine(**kw))
    return _engines[-1]


@pytest.fixture(autouse=True)
def _close_engines():
    yield
    while _engines:
        _engines.pop().close()


def endless(engine, model):
    """Let answers run as long as asked: a huge context and an end-of-turn token the model cannot emit."""
    p = engine._prompting_for(engine.resolve(str(model)))
    p.context, p.stop_ids = 10**6, [len(p.tokenizer) + 10]


def ask(model, **kw) -> ChatRequest:
    return ChatRequest(model=str(model), messages=[{"role": "user", "content": kw.pop("content", "hello")}], **kw)


def test_a_long_answer_does_not_starve_short_ones(tiny_model):
    engine = Engine(quantum=4)
    endless(engine, tiny_model)
    long = engine.submit(ask(tiny_model, max_tokens=300))
    shorts = [engine.submit(ask(tiny_model, max_tokens=3, content=f"hi {i}")) for i in range(3)]
    for f in shorts:
        assert f.result(timeout=60).completion_tokens == 3
    assert not long.done(), "the short requests were answered between the long one's turns"
    assert long.result(timeout=120).completion_tokens == 300


def test_taking_turns_changes_no_answer(tiny_model):
    """Preempted and resumed (greedy or seeded), an answer is the one it would have been alone."""
    alone = Engine(quantum=10_000)
    greedy = alone.submit(ask(tiny_model, max_tokens=60)).result(timeout=60)
    seeded = alone.submit(ask(tiny_model, max_tokens=40, temperature=1.0, seed=7)).result(timeout=60)
    busy = Engine(quantum=3)
    g, s = busy.submit(ask(tiny_model, max_tokens=60)), busy.submit(ask(tiny_model, max_tokens=40, temperature=1.0, seed=7))
    for i in range(6):
        busy.submit(ask(tiny_model, max_tokens=2, content=f"other {i}"))
    assert g.result(timeout=120).text == greedy.text and g.result().token_ids == greedy.token_ids
    assert s.result(timeout=120).text == seeded.text


def test_a_cancelled_request_stops_generating(tiny_model):
    engine = Engine()
    endless(engine, tiny_model)
    req = ask(tiny_model, max_tokens=100_000, content="x")
    future = engine.submit(req)
    time.sleep(0.5)
    t0 = time.perf_counter()
    req.cancel()
    with pytest.raises(Cancelled):
        future.result(timeout=10)
    assert time.perf_counter() - t0 < 5
    assert engine.submit(ask(tiny_model, max_tokens=2)).result(timeout=30).completion_tokens == 2  # still serving


def test_close_stops_the_running_batch_and_fails_the_queue(tiny_model):
    engine = Engine()
    endless(engine, tiny_model)
    # Two long answers that cannot share a batch: they take turns, one running, one queued.
    futures = [engine.submit(ask(tiny_model, max_tokens=50_000)),
               engine.submit(ask(tiny_model, max_tokens=50_000, temperature=1.0, seed=1))]
    time.sleep(0.5)
    t0 = time.perf_counter()
    engine.close()
    outcomes = []
    for f in futures:
        try:
            outcomes.append(f.result(timeout=10).completion_tokens < 50_000)  # stopped with what it had
        except Cancelled:
            outcomes.append("cancelled")
    assert time.perf_counter() - t0 < 5 and "cancelled" in outcomes and True in outcomes
    with pytest.raises(Cancelled):
        engine.submit(ask(tiny_model, max_tokens=2))


def test_context_limit_is_checked_on_submit(tiny_model):
    from tunery.errors import ConfigError

    engine = Engine()
    with pytest.raises(ConfigError) as e:
        engine.submit(ask(tiny_model, max_tokens=10**9))
    assert e.value.field == "max_tokens"
