"""The OpenAI-compatible HTTP API (FastAPI): models and chat completions."""

import asyncio
import json
import queue
import secrets
import time

from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse

from ..errors import ModelNotFound, TuneryError
from ..generation import IncrementalText
from . import errors
from .engine import ChatRequest, Engine
from .errors import APIError
from .schemas import ChatCompletionRequest

DEFAULT_MAX_TOKENS = 256


def create_app(engine: Engine | None = None, api_key: str | None = None, *, jobs_worker: bool = True,
               max_upload_bytes: int = 512 * 2**20) -> FastAPI:
    """The API. With `jobs_worker`, a worker process runs fine-tuning jobs beside the web process."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        worker = _start_worker() if jobs_worker else None
        yield
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=10)

    app = FastAPI(title="tunery", version="0.1.0", lifespan=lifespan)
    app.state.engine = engine or Engine()
    errors.install(app)

    async def auth(request: Request):
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not secrets.compare_digest(given.encode(), api_key.encode()):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    guarded = [Depends(auth)]
    from .ft_routes import router

    app.include_router(router(max_upload_bytes, guarded))

    @app.get("/v1/models", dependencies=guarded)
    async def list_models():
        return {"object": "list", "data": [_model_card(m) for m in _served_models(app.state.engine)]}

    @app.get("/v1/models/{model_id:path}", dependencies=guarded)
    async def get_model(model_id: str):
        _resolve(app.state.engine, model_id)
        return _model_card(model_id)

    @app.post("/v1/chat/completions", dependencies=guarded)
    async def chat_completions(body: ChatCompletionRequest):
        eng = app.state.engine
        _resolve(eng, body.model)
        # n choices are n requests: the engine batches those that share their settings; a seed
        # gives choice i the seed + i, so the choices differ and each is reproducible.
        reqs = [ChatRequest(
            model=body.model, messages=[_message(m) for m in body.messages],
            max_tokens=body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS,
            temperature=body.temperature, top_p=body.top_p, seed=None if body.seed is None else body.seed + i,
            stop=[body.stop] if isinstance(body.stop, str) else body.stop) for i in range(body.n)]
        cid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        if body.stream:
            for req in reqs:
                req.stream = queue.Queue()
                eng.submit(req)
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_stream(eng, reqs, cid, created, usage), media_type="text/event-stream")
        gens = await asyncio.gather(*(asyncio.wrap_future(eng.submit(req)) for req in reqs))
        return {
            "id": cid, "object": "chat.completion", "created": created, "model": body.model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": gen.text},
                         "finish_reason": gen.finish_reason, "logprobs": None} for i, gen in enumerate(gens)],
            "usage": _usage(gens[0].prompt_tokens, sum(g.completion_tokens for g in gens)),
        }

    return app


def _start_worker():
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "tunery.serve.worker"])


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _message(m) -> dict:
    d = m.model_dump(exclude_none=True)
    d["role"] = "system" if d["role"] == "developer" else d["role"]
    content = d.get("content")
    if isinstance(content, list):  # text content parts
        d["content"] = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    d.setdefault("content", "")
    return d


def _resolve(engine: Engine, model: str):
    try:
        return engine.resolve(model)
    except TuneryError as exc:
        raise ModelNotFound(f"The model '{model}' does not exist: {exc}", field="model") from None


def _served_models(engine: Engine) -> list[str]:
    names = ["default", *engine.served_names()]  # the bundled base and every model asked for so far
    from ..registry import store
    from ..registry.db import connect

    with connect(create=False) as conn:
        if conn is not None:
            names += [m["name"] for m in store.list_models(conn) if m.get("status") == "completed"]
    return list(dict.fromkeys(names))


def _model_card(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "tunery"}


async def _stream(engine: Engine, reqs: list[ChatRequest], cid: str, created: int, include_usage: bool):
    """Server-sent events in the chat.completion.chunk shape: each choice's text deltas, decoded
    incrementally, tagged with its index as they come."""
    model = reqs[0].model

    def chunk(index: int, delta: dict, finish=None, usage=None) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        if usage is not None:
            body["choices"], body["usage"] = [], usage
        return f"data: {json.dumps(body)}\n\n"

    events: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, req: ChatRequest):  # one choice's token ids onto the shared queue
        while True:
            item = await asyncio.to_thread(req.stream.get)
            await events.put((index, item))
            if item is None:
                return

    pumps = [asyncio.create_task(pump(i, r)) for i, r in enumerate(reqs)]
    decoded: list[IncrementalText | None] = [None] * len(reqs)
    sent = [""] * len(reqs)
    hold = max((len(s) for s in reqs[0].stop or []), default=0)  # text that could still become a stop string
    for i in range(len(reqs)):
        yield chunk(i, {"role": "assistant", "content": ""})
    prompt_tokens = completion_tokens = 0
    open_choices = len(reqs)
    while open_choices:
        i, item = await events.get()
        if item is not None:
            if decoded[i] is None:
                decoded[i] = IncrementalText(engine.tokenizer_for(model))
            text = decoded[i].add(item)
            visible = text[: len(text) - hold] if hold else text
            if len(visible) > len(sent[i]) and not visible.endswith("\ufffd"):
                yield chunk(i, {"content": visible[len(sent[i]):]})
                sent[i] = visible
            continue
        open_choices -= 1
        try:
            gen = reqs[i].future.result()
        except Exception as exc:
            for task in pumps:
                task.cancel()
            yield f"data: {json.dumps(errors.error_body(str(exc), 'server_error'))}\n\n"
            yield "data: [DONE]\n\n"
            return
        if len(gen.text) > len(sent[i]) and gen.text.startswith(sent[i]):
            yield chunk(i, {"content": gen.text[len(sent[i]):]})
        yield chunk(i, {}, finish=gen.finish_reason)
        prompt_tokens, completion_tokens = gen.prompt_tokens, completion_tokens + gen.completion_tokens
    if include_usage:
        yield chunk(0, {}, usage=_usage(prompt_tokens, completion_tokens))
    yield "data: [DONE]\n\n"
