"""The llama.cpp engine: GGUF files behind the same API as the PyTorch engine (engine.py), through
the same interface: `resolve`, `submit(ChatRequest) -> Future[Generation]`, `tokenizer_for`,
`waiting`, `close`. What a name serves is the Catalog's `gguf` (a configured .gguf base, or a
fine-tune's GGUF export); names are resolved at each request, so a new export is served at once.

One GGUFModel per file, kept in a bounded LRU, each with one worker thread that serves its
requests one at a time, first in, first out (llama.cpp's context holds one sequence here). An
evicted file serves what is already queued for it, then its worker stops; the file's memory goes
when the last stream decoding with it ends.

Guarantees, as engine.py's:
  - a request is checked when it is submitted, in the caller's thread: its prompt, rendered by
    the GGUF's own chat template (as engine.py renders, tools included: serve/tools.py) and
    tokenized by llama.cpp, plus `max_tokens` must fit the
    context llama.cpp runs the file with, else a ConfigError (an HTTP 400);
  - a streamed request gets its token ids on `req.stream` as they come, then None;
  - a cancelled request (its client went away) stops at the next token; `close()` stops the
    running requests at the next token and fails them and everything queued (Cancelled);
  - stop strings cut the text (the tokens stay, as in engine.py); temperature, top_p and seed go
    to llama.cpp's sampler; usage counts the end-of-turn token, as engine.py does;
  - what constrains an answer (a forced tool call, an answer format from response_format or the
    recipe's constraint, or calls-or-the-format) becomes one llama.cpp grammar (GBNF:
    structured.request_gbnf), the grammar tunery's engine would follow, checked against the
    vocabulary when submitted; a regex has no GBNF form here (a 400).
"""

import sys
import threading
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from ..data.template import ChatTemplate
from ..errors import ConfigError, TuneryError
from ..generation import Generation
from . import structured, tools
from .engine import Cancelled, ChatRequest, check_context

CONTEXT = 8192  # the most context a file runs with (less where its model was trained with less)


@dataclass(eq=False)
class _Worker:
    model: object  # a GGUFModel
    queue: deque = field(default_factory=deque)  # ChatRequests, first in first out
    retired: bool = False  # evicted from the LRU: serves its queue, then stops
    stopped: bool = False  # its thread has ended: it takes no more requests


class LlamaCppEngine:
    def __init__(self, resolver, max_models: int = 2, n_ctx: int = CONTEXT, threads: int | None = None):
        """`resolver` turns a request's model name into a ServedGGUF (the server passes its
        Catalog's `gguf`, which admits only names the API may use)."""
        from ..models.llamacpp import llama_cpp_module

        llama_cpp_module()  # without the extra: its one-line error, before anything starts
        self._resolver, self.max_models, self.n_ctx, self.threads = resolver, max_models, n_ctx, threads
        self._workers: OrderedDict[str, _Worker] = OrderedDict()  # file -> worker, least recently used first
        self._live: set[_Worker] = set()  # workers whose thread runs (evicted ones too, until they stop)
        self._cv = threading.Condition()
        self._load_lock = threading.Lock()  # one file loads at a time
        self._closed = False

    # -- public -----------------------------------------------------------------------------------
    def resolve(self, name: str):
        return self._resolver(name)

    def submit(self, req: ChatRequest) -> Future:
        """Check and queue a request (blocking: may load the file, renders and tokenizes the prompt;
        call it off the event loop). Unknown models and prompts beyond the context fail here."""
        served = self.resolve(req.model)
        worker = self._worker(served)
        model = worker.model
        req.prompt_ids = model.tokenize(tools.render(_template(model), req))
        check_context(len(req.prompt_ids), req.max_tokens, model.n_ctx)
        req.constraint = structured.request_gbnf(req, model.special)  # for llama.cpp's own grammar sampler
        if req.constraint is not None and model.grammar_error(req.constraint):
            field = "tool_choice" if req.forced else structured.FIELD
            raise ConfigError(f"{field}: llama.cpp cannot parse the grammar of this request; serve without --engine "
                              "llamacpp", field)
        while not self._enqueue(worker, req):
            worker = self._worker(served)  # evicted and stopped meanwhile: load it again
        return req.future

    def tokenizer_for(self, name: str):
        """The GGUFModel itself: its `decode` reads llama.cpp's vocabulary, as IncrementalText needs."""
        return self._worker(self.resolve(name)).model

    def waiting(self) -> bool:
        with self._cv:
            return any(w.queue for w in self._live)

    def close(self) -> None:
        """Stop: running requests end at their next token, queued requests fail."""
        with self._cv:
            self._closed = True
            pending = [req for w in self._live for req in w.queue]
            for w in self._live:
                w.queue.clear()
            self._workers.clear()
            self._cv.notify_all()
        for req in pending:
            req.finish(error=Cancelled("the server is shutting down"))

    # -- files and workers -----------------------------------------------------------------------
    def _worker(self, served) -> _Worker:
        """The worker of the file `served` names, loading the file (and evicting the least
        recently used beyond `max_models`) if it is not loaded."""
        from ..models.llamacpp import GGUFModel

        key = str(served.path)
        if (loaded := self._loaded(key)) is not None:  # no wait for another file's load
            return loaded
        with self._load_lock:
            if (loaded := self._loaded(key)) is not None:  # loaded while this thread waited
                return loaded
            try:
                model = GGUFModel(served.path, n_ctx=self.n_ctx, threads=self.threads)
            except TuneryError as exc:  # the reason names a server path: the operator's log, not the client
                print(f"tunery serve: {exc}", file=sys.stderr)
                raise TuneryError(f"The model '{served.reference}' cannot be loaded by llama.cpp (the server's log "
                                  "says why)") from None
            worker = _Worker(model)
            with self._cv:
                self._workers[key] = worker
                self._live.add(worker)
                while len(self._workers) > self.max_models:
                    _, old = self._workers.popitem(last=False)
                    old.retired = True
                self._cv.notify_all()
        threading.Thread(target=self._serve, args=(worker,), name=f"tunery-llamacpp-{served.path.name}",
                         daemon=True).start()
        return worker

    def _loaded(self, key: str) -> _Worker | None:
        with self._cv:
            if self._closed:
                raise Cancelled("the server is shutting down")
            if key in self._workers:
                self._workers.move_to_end(key)
                return self._workers[key]
            return None

    def _enqueue(self, worker: _Worker, req: ChatRequest) -> bool:
        with self._cv:
            if self._closed:
                raise Cancelled("the server is shutting down")
            if worker.stopped:
                return False
            worker.queue.append(req)
            self._cv.notify_all()
            return True

    def _serve(self, worker: _Worker) -> None:
        """A file's worker: its requests one at a time, until the engine closes or the file is
        evicted and its queue is empty."""
        while True:
            with self._cv:
                while not worker.queue and not worker.retired and not self._closed:
                    self._cv.wait()
                if not worker.queue:  # closed (close() failed the queue) or evicted with nothing left
                    worker.stopped = True
                    self._live.discard(worker)
                    return
                req = worker.queue.popleft()
            try:
                req.finish(result=self._generate(worker.model, req))
            except BaseException as exc:  # a failed request fails alone, never the worker
                req.finish(error=exc)

    def _generate(self, model, req: ChatRequest) -> Generation:
        if req.cancelled.is_set():
            raise Cancelled("the request was cancelled")
        longest = max((len(s) for s in req.stop or []), default=0)
        text, hit = "", False

        def on_token(token: int, piece: str) -> bool:  # True: stop here
            nonlocal text, hit
            if req.stream is not None:
                req.stream.put([token])
            text += piece
            if longest and piece:
                tail = text[-(len(piece) + longest - 1):]  # where a stop string could have just ended
                hit = any(s in tail for s in req.stop)
            return hit or req.cancelled.is_set() or self._closed

        answer = model.complete(req.prompt_ids, max_tokens=req.max_tokens, temperature=req.temperature,
                                top_p=req.top_p, seed=req.seed, on_token=on_token, grammar=req.constraint)
        if self._closed:
            raise Cancelled("the server is shutting down")
        if req.cancelled.is_set():
            raise Cancelled("the request was cancelled")
        text, finish = answer.text, answer.finish_reason
        for s in req.stop or []:
            if s in text:
                text, finish = text[: text.index(s)], "stop"
        ended = answer.finish_reason == "stop"  # at an end-of-turn token, which usage counts
        return Generation(text, answer.prompt_tokens, answer.completion_tokens + ended, finish, answer.token_ids)


def _template(model) -> ChatTemplate:
    """The GGUF's own chat template, rendered as tunery's engine renders (tools included); compiled once."""
    template = getattr(model, "tunery_template", None)
    if template is None:
        if not model.chat_template:
            raise TuneryError(f"{model.path.name}: the GGUF carries no chat template (tokenizer.chat_template)")

        def piece(i: int) -> str:
            return model.decode([i], skip_special_tokens=False) if i >= 0 else ""

        template = ChatTemplate(model.chat_template, {"bos_token": piece(model.llm.token_bos()),
                                                      "eos_token": piece(model.llm.token_eos())})
        model.tunery_template = template
    return template

