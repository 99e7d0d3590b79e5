"""The OpenAI-compatible HTTP API (FastAPI): models, chat completions, files and fine-tuning jobs.

The outermost layer (Guard) checks the API key, and an upload's declared size, before any body is
read. Models are named through the Catalog (catalog.py): the default, configured bases and
registered fine-tunes, never a path. The engine is tunery's own (engine.py) or llama.cpp's on GGUF
files (llamacpp_engine.py); routes only call its `resolve`, `submit`, `tokenizer_for` and
`close`, so both serve the same API. A chat request is checked against the model's context when
it is submitted; a client that disconnects cancels its generation; shutdown stops generation at
the next token.
"""

import asyncio
import json
import queue
import secrets
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from ..errors import ModelNotFound, TuneryError, validated
from ..evaluate.evaluator import recorded_format
from ..generation import IncrementalText
from . import console, errors, structured, tools
from .catalog import Catalog
from .engine import ChatRequest, Engine
from .schemas import ChatCompletionRequest, TuneryChatOptions
from .supervisor import WorkerSupervisor

DEFAULT_MAX_TOKENS = 256
UPLOAD_SLACK = 1_000_000  # multipart framing around an upload's bytes
MAX_JSON_BYTES = 16 * 2**20  # any other request body


def create_app(engine: Engine | None = None, api_key: str | None = None, *, jobs_worker: bool = True,
               max_upload_bytes: int = 512 * 2**20, catalog: Catalog | None = None,
               allowed_hosts: tuple[str, ...] | None = None) -> FastAPI:
    """The API. With `jobs_worker`, a supervised worker process runs fine-tuning jobs beside it.
    `allowed_hosts`: the names a request's Host header may give (None: any); `tunery serve` without
    a key allows only loopback names, so a web page cannot reach it by DNS rebinding."""
    from contextlib import asynccontextmanager

    catalog = catalog or Catalog()

    @asynccontextmanager
    async def lifespan(app):
        worker = WorkerSupervisor() if jobs_worker else None
        if worker is not None:
            worker.start()
        yield
        app.state.tasks.close()
        app.state.engine.close()
        if worker is not None:
            worker.stop()

    # The generated docs describe every route: behind a key, they stay behind it (off).
    docs = {} if api_key is None else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="tunery", version="0.1.0", lifespan=lifespan, **docs)
    if engine is None and catalog.engine == "llamacpp":
        from .llamacpp_engine import LlamaCppEngine

        engine = LlamaCppEngine(resolver=catalog.gguf)
    app.state.engine = engine or Engine(resolver=catalog.resolve)
    app.state.catalog = catalog
    errors.install(app)
    app.add_middleware(Guard, api_key=api_key, max_upload_bytes=max_upload_bytes, allowed_hosts=allowed_hosts)

    from . import ft_routes, tunery_routes
    from .tasks import Tasks

    app.state.tasks = Tasks(scrub=tunery_routes.strip_paths)
    app.include_router(ft_routes.router(max_upload_bytes, catalog))
    app.include_router(tunery_routes.router(catalog, app.state.tasks))
    app.include_router(console.router(api_key))

    @app.get("/v1/models")
    async def list_models():
        names = await asyncio.to_thread(catalog.names)
        return {"object": "list", "data": [_model_card(m) for m in names]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        await asyncio.to_thread(_resolve, app.state.engine, model_id)
        return _model_card(model_id)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        eng = app.state.engine
        resolved = await asyncio.to_thread(_resolve, eng, body.model)
        messages = tools.messages([_message(m) for m in body.messages])
        functions, forced = tools.check(body)
        fmt, lenient, given = structured.check(body)
        if not given:  # a fine-tune trained for a format answers in it unless asked otherwise
            fmt = await asyncio.to_thread(recorded_format, resolved)
        extra = _tunery_options(body)
        citations = None
        grounding = await asyncio.to_thread(_grounding, resolved, extra.retrieval)
        if grounding is not None:  # the retrieved context goes into the question, as in training
            messages, citations = await asyncio.to_thread(_ground, messages, *grounding)
        # n choices are n requests: the engine batches those that share their settings; a seed
        # gives choice i the seed + i, so the choices differ and each is reproducible.
        reqs = [ChatRequest(
            model=body.model, messages=messages,
            max_tokens=body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS,
            temperature=body.temperature, top_p=body.top_p, seed=None if body.seed is None else body.seed + i,
            stop=[body.stop] if isinstance(body.stop, str) else body.stop, tools=functions,
            tool_choice=_choice_kind(body.tool_choice), forced=forced,
            parallel_tool_calls=body.parallel_tool_calls, format=fmt, format_given=given, lenient=lenient)
            for i in range(body.n)]
        cid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        if body.stream:
            for req in reqs:
                req.stream = queue.Queue()
        futures = []
        try:
            for req in reqs:  # rendering and tokenizing a long prompt must not block the event loop
                futures.append(asyncio.wrap_future(await asyncio.to_thread(eng.submit, req)))
        except BaseException:
            for req in reqs:
                req.cancel()
            raise
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_stream(eng, reqs, cid, created, usage, citations),
                                     media_type="text/event-stream")
        gens = await _until_done_or_gone(request, futures, reqs)
        tokenizer = eng.tokenizer_for(body.model) if functions else None
        return {
            "id": cid, "object": "chat.completion", "created": created, "model": body.model,
            "choices": [_choice(i, *tools.answer(gen, req, tokenizer)) for i, (gen, req) in enumerate(zip(gens, reqs))],
            "usage": _usage(gens[0].prompt_tokens, sum(g.completion_tokens for g in gens)),
            **({"tunery": {"citations": citations}} if citations is not None else {}),
        }

    return app


def _tunery_options(body: ChatCompletionRequest) -> TuneryChatOptions:
    """The request's `tunery` extension, checked; its errors name the field under `tunery.`."""
    from ..errors import ConfigError

    given = (body.model_extra or {}).get("tunery") or {}
    if not isinstance(given, dict):
        raise ConfigError("tunery: must be an object", "tunery")
    try:
        return validated(TuneryChatOptions, **given)
    except ConfigError as exc:
        raise ConfigError(f"tunery.{exc}", f"tunery.{exc.field}") from None


def _grounding(resolved, asked) -> tuple | None:
    """(index, k) to ground a request with: the one asked for (a registered index, by name), else
    the one a fine-tune was trained with (recorded in its run), else None."""
    if asked is not None:  # by registered name only: a request never names a server path
        from ..errors import NotFound
        from ..registry import indexes
        from ..registry.db import connect
        from ..retrieval import Index

        with connect(create=False) as conn:
            row = indexes.get(conn, asked.index) if conn is not None else None
        if row is None:
            raise NotFound(f"no index named {asked.index!r} (`tunery index list`)", "tunery.retrieval.index")
        return Index.open(row["path"]), asked.k
    if resolved.run is not None:
        from ..run_folder import RunFolder

        recorded = RunFolder(resolved.run).read_info().data.retrieval
        if recorded:
            from ..retrieval import Index

            return Index.open(recorded["index"]), recorded["k"]
    return None


def _ground(messages: list[dict], index, k: int) -> tuple[list[dict], list[dict]]:
    from ..retrieval import query_of, with_context

    hits = index.search(query_of(messages), k=k)
    # a citation names the document's file, never where the server keeps it
    return with_context(messages, hits), [{"id": h.id, "source": Path(h.source).name, "score": h.score} for h in hits]


class Guard:
    """Pure ASGI middleware, outermost: the API key on every path (as a Bearer header, or as the
    console's session cookie: console.py), and a body's declared Content-Length against its limit
    (uploads: --max-upload-mb; JSON: MAX_JSON_BYTES), both before a byte of the body is read. A
    body without a Content-Length, or sent in chunks (Transfer-Encoding, which would frame it past its
    declared length), is refused (411). Without a key, a browser page asks for the login page; the
    login page and its script and style need none. Before all that: a Host outside `allowed_hosts`
    is refused (DNS rebinding), and, without a key, so is a request that changes state from a page
    of another origin (its Origin header names another host, or is "null"): a web page posting to a
    local server. (With a key, a page cannot send the Bearer header without a CORS preflight this
    server never grants, nor use the console's cookie without its header.)"""

    def __init__(self, app, api_key: str | None, max_upload_bytes: int, allowed_hosts: tuple[str, ...] | None = None):
        self.app, self.api_key, self.max_upload_bytes = app, api_key, max_upload_bytes
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1").lower()
        if self.allowed_hosts is not None and _hostname(host) not in self.allowed_hosts:
            return await _reply(send, 421, "this server answers only to the host names it was started for",
                                code="host_not_allowed")
        origin = headers.get(b"origin", b"").decode("latin-1").lower()
        if self.api_key is None and scope["method"] not in console.SAFE_METHODS and origin \
                and origin.split("://", 1)[-1] != host:  # "null" too: a sandboxed page's
            return await _reply(send, 403, "a request that changes state may not come from a page of another "
                                "origin", code="cross_origin")
        if self.api_key is not None and not console.is_public(scope["path"]):
            header = headers.get(b"authorization", b"").decode("latin-1")
            given = header[7:] if header.lower().startswith("bearer ") else ""
            if secrets.compare_digest(given.encode(), self.api_key.encode()):
                pass
            elif console.session_of(headers, self.api_key):
                if console.cross_site_write(scope["method"], headers):
                    return await _reply(send, 403, "a console request that changes state must carry the header "
                                        "X-Tunery-Console: 1", code="csrf")
            elif scope["method"] in ("GET", "HEAD") and console.is_page(scope["path"]):
                location = console.login_redirect(scope["path"], scope.get("query_string", b"").decode("latin-1"))
                await send({"type": "http.response.start", "status": 303,
                            "headers": [(b"location", location.encode()), (b"content-length", b"0")]})
                return await send({"type": "http.response.body", "body": b""})
            else:
                return await _reply(send, 401, "Incorrect API key provided.", code="invalid_api_key")
        length = headers.get(b"content-length", b"").decode("latin-1")
        if b"transfer-encoding" in headers:  # its chunks, not Content-Length, would frame the body
            return await _reply(send, 411, "a request body must declare its Content-Length (not Transfer-Encoding)")
        if scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/files":
            if not length.isdigit():
                return await _reply(send, 411, "an upload must declare its Content-Length", param="file")
            if int(length) > self.max_upload_bytes + UPLOAD_SLACK:
                return await _reply(send, 413, f"upload larger than the server's limit of {self.max_upload_bytes} "
                                    "bytes", code="file_too_large", param="file")
        elif length.isdigit() and int(length) > MAX_JSON_BYTES:
            return await _reply(send, 413, f"request body larger than {MAX_JSON_BYTES} bytes")
        return await self.app(scope, receive, send)


def _hostname(host: str) -> str:
    """The name in a Host header, without its port: `127.0.0.1:8000` -> 127.0.0.1, `[::1]:80` -> ::1."""
    if host.startswith("["):
        return host[1: host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _reply(send, status: int, message: str, code=None, param=None) -> None:
    body = json.dumps(errors.error_body(message, code=code, param=param)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


async def _until_done_or_gone(request: Request, futures: list, reqs: list[ChatRequest]):
    """The generations, or (when the client disconnects first, or the server shuts down) the
    requests cancelled."""
    from .engine import Cancelled

    pending = set(futures)
    try:
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.5)
            if pending and await request.is_disconnected():
                break
    except asyncio.CancelledError:  # shutdown's grace period is over: a 503, not a traceback
        pending = True
    if pending:
        for req in reqs:
            req.cancel()
        raise Cancelled("the request was cancelled (the client went away, or the server is shutting down)")
    return [f.result() for f in futures]


def _choice_kind(tool_choice) -> str:
    return "auto" if tool_choice is None else tool_choice if isinstance(tool_choice, str) else "function"


def _choice(index: int, message: dict, finish: str, warnings: list[dict]) -> dict:
    """A choice of a chat completion; `tunery.warnings` says why an answer that began a tool call
    is returned as text."""
    return {"index": index, "message": message, "finish_reason": finish, "logprobs": None,
            **({"tunery": {"warnings": warnings}} if warnings else {})}


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _message(m) -> dict:
    d = m.model_dump(exclude_none=True)
    d["role"] = "system" if d["role"] == "developer" else d["role"]
    content = d.get("content")
    if isinstance(content, list):  # text content parts
        d["content"] = "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    d.setdefault("content", "")
    return d


def _resolve(engine: Engine, model: str):
    try:
        return engine.resolve(model)
    except ModelNotFound:
        raise
    except TuneryError:  # no detail: it could tell a client what exists on the server
        raise ModelNotFound(f"The model '{model}' does not exist", field="model") from None


def _model_card(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "tunery"}


async def _stream(engine: Engine, reqs: list[ChatRequest], cid: str, created: int, include_usage: bool,
                  citations: list | None = None):
    """Server-sent events in the chat.completion.chunk shape: each choice's text deltas, decoded
    incrementally, tagged with its index as they come (the first chunk carries the citations of
    a grounded request). A client that goes away cancels them."""
    try:
        async for event in _events(engine, reqs, cid, created, include_usage, citations):
            yield event
    finally:  # normal end: a no-op; a disconnect (the generator closed): generation stops
        for req in reqs:
            req.cancel()


async def _events(engine: Engine, reqs: list[ChatRequest], cid: str, created: int, include_usage: bool,
                  citations: list | None):
    model = reqs[0].model

    def chunk(index: int, delta: dict, finish=None, usage=None, extra=None, warnings=None) -> str:
        choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
        if warnings:
            choice["tunery"] = {"warnings": warnings}
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]}
        if usage is not None:
            body["choices"], body["usage"] = [], usage
        return f"data: {json.dumps(body | (extra or {}))}\n\n"

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
    # Answers that may call tools are read with special tokens kept; text is held back from where a
    # call begins (or may be beginning), and the calls go out whole when the answer is complete.
    calls = reqs[0].call_format is not None and reqs[0].tool_choice != "none"
    for i in range(len(reqs)):
        yield chunk(i, {"role": "assistant", "content": ""},
                    extra={"tunery": {"citations": citations}} if citations is not None and i == 0 else None)
    prompt_tokens = completion_tokens = 0
    open_choices = len(reqs)
    while open_choices:
        i, item = await events.get()
        if item is not None:
            if decoded[i] is None:
                decoded[i] = IncrementalText(engine.tokenizer_for(model), skip_special_tokens=not calls)
            text = decoded[i].add(item)
            visible = text[: len(text) - hold] if hold else text
            if calls:
                visible = tools.visible(visible[: tools.held_from(visible, reqs[i].call_format)], decoded[i].tokenizer)
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
        message, finish, warnings = tools.answer(gen, reqs[i], engine.tokenizer_for(model) if calls else None)
        text = message["content"] or ""
        if len(text) > len(sent[i]) and text.startswith(sent[i]):
            yield chunk(i, {"content": text[len(sent[i]):]})
        if message.get("tool_calls"):
            yield chunk(i, {"tool_calls": tools.call_deltas(message)})
        yield chunk(i, {}, finish=finish, warnings=warnings)
        prompt_tokens, completion_tokens = gen.prompt_tokens, completion_tokens + gen.completion_tokens
    if include_usage:
        yield chunk(0, {}, usage=_usage(prompt_tokens, completion_tokens))
    yield "data: [DONE]\n\n"
