"""The inference engine behind the server: one loaded base per base model, many LoRA adapters
over it (switched per request, never reloading the base, kept in a bounded LRU), and a single
worker thread that batches queued requests for the same model and sampling settings.

Guarantees, so one request cannot stall the others:
  - a request is checked when it is submitted, in the caller's thread: its prompt plus
    `max_tokens` must fit the model's context, else a ConfigError (an HTTP 400);
  - requests are served round-robin: a batch that has generated QUANTUM tokens while others wait
    is preempted; its unfinished requests keep what they generated and rejoin the back of the
    queue (their prompt then holds the tokens so far; a seeded request keeps its RNG state);
  - a cancelled request (its client went away) stops generating at the next token;
  - `close()` stops the running batch at the next token and fails everything queued.
"""

import hashlib
import json
import queue
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from ..config import AnswerFormat
from ..data.render import stop_token_ids
from ..data.template import load_template
from ..errors import ConfigError, TuneryError
from ..generation import Generation, generate_batch
from . import structured, tools
from ..models import ResolvedModel, resolve_model

QUANTUM = 16  # tokens a batch generates before it yields to waiting requests
CONTEXT_FALLBACK = 2048  # for a model whose config names no context length


class Cancelled(TuneryError):
    """The request was cancelled (its client disconnected, or the server is shutting down)."""


@dataclass
class ChatRequest:
    model: str
    messages: list[dict]
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] | None = None
    seed: int | None = None
    stream: "queue.Queue | None" = None  # receives token-id lists, then None at the end
    tools: list[dict] | None = None  # function definitions, rendered into the prompt (serve/tools.py)
    tool_choice: str = "auto"  # auto | none (answers are not read for calls) | required | function
    forced: tuple[str, ...] | None = None  # the functions a forced call may name; None: not forced
    parallel_tool_calls: bool = True
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    # Set by the engine: the rendered prompt, and what earlier turns of generation produced.
    prompt_ids: list[int] = field(default_factory=list)
    done_ids: list[int] = field(default_factory=list)
    rng_state: object = None
    format: AnswerFormat | None = None  # what the answer must be (response_format, or the recipe's constraint)
    format_given: bool = False  # by the request's response_format (else the recipe's)
    lenient: bool = False  # schema keywords the grammar does not implement are ignored (strict: false)
    call_format: object = None  # how the model's template writes tool calls (data/tool_calls.py)
    constraint: object = None  # the answer's grammar: a format or a forced call (constrain.Constraint; GBNF text in llama.cpp)

    def batch_key(self):
        """Requests that can share one generate call: same model, same greedy/sampling settings
        (each row keeps its own grammar, if any)."""
        if self.stream is not None or self.seed is not None:
            return None  # streamed and seeded requests run alone
        return (self.model, self.temperature, self.top_p, tuple(self.stop or ()))

    def cancel(self) -> None:
        self.cancelled.set()

    def finish(self, result: "Generation | None" = None, error: BaseException | None = None) -> None:
        """Settle the future (once) and end the stream: what every engine does with a done request."""
        if not self.future.done():
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)
        if self.stream is not None:
            self.stream.put(None)


@dataclass
class _Prompting:
    """What checking and rendering a request needs, without the weights."""

    tokenizer: object
    template: object
    stop_ids: list[int]
    context: int


@dataclass
class _Base:
    model: object  # a transformers model, or a PeftModel once an adapter is loaded
    tokenizer: object
    adapters: OrderedDict = field(default_factory=OrderedDict)  # adapter path -> adapter name


class Engine:
    def __init__(self, max_adapters: int = 8, max_bases: int = 2, max_batch: int = 16, device: str | None = None,
                 resolver=None, quantum: int = QUANTUM):
        """`resolver` turns a request's model name into a ResolvedModel (the server passes its
        Catalog's, which admits only names the API may use); default: any model reference."""
        self.max_adapters, self.max_bases, self.max_batch, self.device = max_adapters, max_bases, max_batch, device
        self.quantum = quantum
        self._resolver = resolver or resolve_model
        self._bases: OrderedDict[str, _Base] = OrderedDict()
        self._prompting: dict[str, _Prompting] = {}
        self._pending: list[ChatRequest] = []
        self._cv = threading.Condition()
        self._lock = threading.Lock()  # resolving and prompting caches, from request threads
        self._resolved: dict[str, ResolvedModel] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="tunery-engine", daemon=True)
        self._thread.start()

    # -- public -----------------------------------------------------------------------------------
    def resolve(self, name: str) -> ResolvedModel:
        with self._lock:
            if name not in self._resolved:
                self._resolved[name] = self._resolver(name)
            return self._resolved[name]

    def submit(self, req: ChatRequest) -> Future:
        """Check and queue a request (blocking: renders and tokenizes the prompt; call it off the
        event loop). Unknown models and prompts beyond the context fail here, in the caller's thread."""
        resolved = self.resolve(req.model)
        p = self._prompting_for(resolved)
        text = tools.render(p.template, req)
        req.prompt_ids = p.tokenizer(text, add_special_tokens=False)["input_ids"]
        check_context(len(req.prompt_ids), req.max_tokens, p.context)
        req.constraint = structured.constraint(req, p.tokenizer, p.stop_ids)
        with self._cv:
            if self._closed:
                raise Cancelled("the server is shutting down")
            self._pending.append(req)
            self._cv.notify()
        return req.future

    def tokenizer_for(self, name: str):
        return self._prompting_for(self.resolve(name)).tokenizer

    def waiting(self) -> bool:
        return bool(self._pending)

    def close(self) -> None:
        """Stop: the running batch ends at its next token, queued requests fail."""
        with self._cv:
            self._closed = True
            pending, self._pending = self._pending, []
            self._cv.notify()
        for req in pending:
            req.finish(error=Cancelled("the server is shutting down"))

    # -- worker ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                batch = self._take_batch()
            live = [r for r in batch if not r.cancelled.is_set()]
            for req in batch:
                if req.cancelled.is_set():
                    req.finish(error=Cancelled("the request was cancelled"))
            if not live:
                continue
            try:
                for req, result in zip(live, self._run(live)):
                    if req.cancelled.is_set():
                        req.finish(error=Cancelled("the request was cancelled"))
                    elif result is not None:
                        req.finish(result=result)
            except BaseException as exc:  # a failed batch fails its requests, never the engine
                for req in live:
                    req.finish(error=exc)

    def _take_batch(self) -> list[ChatRequest]:
        first = self._pending.pop(0)
        batch = [first]
        key = first.batch_key()
        if key is not None:
            for req in list(self._pending):
                if len(batch) >= self.max_batch:
                    break
                if req.batch_key() == key:
                    batch.append(req)
                    self._pending.remove(req)
        return batch

    def _run(self, batch: list[ChatRequest]) -> list[Generation | None]:
        """One turn of generation for a batch: finished requests get their Generation, preempted
        ones None (they are back in the queue)."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        resolved = self.resolve(batch[0].model)
        base = self._prepare(resolved)
        p = self._prompting_for(resolved)
        r0 = batch[0]
        if r0.seed is not None:
            if r0.rng_state is None:
                torch.manual_seed(r0.seed)
            else:
                torch.set_rng_state(r0.rng_state)
        engine = self
        device = next(base.model.parameters()).device
        budgets = torch.tensor([r.max_tokens - len(r.done_ids) for r in batch], device=device)
        stops = torch.tensor(p.stop_ids, device=device)

        class Turn(StoppingCriteria):
            """Ends each row at its own budget, an end-of-turn token or its cancel; ends the turn
            for all after QUANTUM tokens when others wait or some rows are done (so their answers
            go out, and the rest rejoins the queue)."""

            steps, preempted = 0, False
            finished = torch.zeros(len(batch), dtype=torch.bool, device=device)

            def __call__(self, input_ids, scores, **kwargs):
                self.steps += 1
                cancelled = torch.tensor([r.cancelled.is_set() for r in batch], device=device)
                self.finished = self.finished | torch.isin(input_ids[:, -1], stops) | (self.steps >= budgets) | cancelled
                done = bool(self.finished.all())
                if not done and (engine._closed or (self.steps >= engine.quantum and (
                        engine.waiting() or bool(self.finished.any())))):
                    self.preempted = True
                    return torch.ones_like(self.finished)
                return self.finished

        turn = Turn()
        streamer = _QueueStreamer(r0.stream) if r0.stream is not None else None
        budget = max(r.max_tokens - len(r.done_ids) for r in batch)
        for r in batch:
            if r.constraint is not None:
                r.constraint.feed(r.done_ids)  # an answer resumed after a preemption: its grammar catches up
        kw = dict(max_new_tokens=budget, temperature=r0.temperature, top_p=r0.top_p, stop=r0.stop,
                  streamer=streamer, stopping_criteria=StoppingCriteriaList([turn]),
                  constraints=[r.constraint for r in batch])
        prompts = [r.prompt_ids + r.done_ids for r in batch]
        if resolved.adapter is None and hasattr(base.model, "disable_adapter"):
            with base.model.disable_adapter():
                out = generate_batch(base.model, p.tokenizer, prompts, p.stop_ids, **kw)
        else:
            out = generate_batch(base.model, p.tokenizer, prompts, p.stop_ids, **kw)
        results: list[Generation | None] = []
        requeue = []
        for req, g in zip(batch, out):
            ids = req.done_ids + g.token_ids
            unfinished = g.finish_reason == "length" and len(ids) < req.max_tokens
            if turn.preempted and unfinished and not req.cancelled.is_set() and not self._closed:
                req.done_ids = ids
                if req.seed is not None:
                    req.rng_state = torch.get_rng_state()
                requeue.append(req)
                results.append(None)
            elif req.constraint is not None and req.constraint.error:
                req.finish(error=ConfigError(f"{req.constraint.field}: the grammar reached a limit while generating "
                                             f"({req.constraint.error[:200]})", req.constraint.field))
                results.append(None)
            else:
                results.append(_final(req, ids, g, p.tokenizer))
        if requeue:
            with self._cv:
                self._pending.extend(requeue)
                self._cv.notify()
        return results

    def _prompting_for(self, resolved: ResolvedModel) -> _Prompting:
        """Tokenizer, template and context length: the run's own (they travel with its adapter)."""
        from ..models import load_tokenizer

        key = str(resolved.tokenizer_path)
        with self._lock:
            if key not in self._prompting:
                tokenizer = load_tokenizer(resolved)
                template = load_template(tokenizer)
                if template is None:
                    raise TuneryError(f"model {resolved.reference!r} has no chat template")
                self._prompting[key] = _Prompting(tokenizer, template, sorted(stop_token_ids(tokenizer, template)),
                                                  _context_length(resolved, tokenizer))
            return self._prompting[key]

    def _prepare(self, resolved: ResolvedModel) -> _Base:
        """The loaded base for this model with its adapter active (or none)."""
        base = self._load_base(resolved)
        if resolved.adapter is None:
            return base
        key = str(resolved.adapter)
        if key not in base.adapters:
            base.adapters[key] = self._load_adapter(base, resolved)
            while len(base.adapters) > self.max_adapters:
                _, old_name = base.adapters.popitem(last=False)
                base.model.delete_adapter(old_name)
        base.adapters.move_to_end(key)
        base.model.set_adapter(base.adapters[key])
        return base

    def _load_base(self, resolved: ResolvedModel) -> _Base:
        from ..models import load_model

        key = str(resolved.path)
        if key not in self._bases:
            model, tokenizer = load_model(replace(resolved, adapter=None, tokenizer=None), device=self.device,
                                          merge=False)
            self._bases[key] = _Base(model, tokenizer)
            while len(self._bases) > self.max_bases:
                self._bases.popitem(last=False)
        self._bases.move_to_end(key)
        return self._bases[key]

    def _load_adapter(self, base: _Base, resolved: ResolvedModel) -> str:
        from peft import PeftModel

        name = "a" + hashlib.sha1(str(resolved.adapter).encode()).hexdigest()[:12]
        if isinstance(base.model, PeftModel):
            base.model.load_adapter(str(resolved.adapter), adapter_name=name)
        else:
            base.model = PeftModel.from_pretrained(base.model, str(resolved.adapter), adapter_name=name).eval()
        return name


def check_context(prompt_tokens: int, max_tokens: int, context: int) -> None:
    """The prompt plus `max_tokens` within the model's context, else a ConfigError (an HTTP 400)
    naming the field to change."""
    if prompt_tokens + max_tokens > context:
        raise ConfigError(f"This model's maximum context length is {context} tokens; the messages take "
                          f"{prompt_tokens} and max_tokens asks for {max_tokens} more. Shorten the "
                          "messages or lower max_tokens.", "messages" if prompt_tokens >= context else "max_tokens")


def _context_length(resolved: ResolvedModel, tokenizer) -> int:
    try:
        config = json.loads((resolved.path / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(config.get(key), int) and config[key] > 0:
            return config[key]
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 10**7 else CONTEXT_FALLBACK


def _final(req: ChatRequest, ids: list[int], g: Generation, tokenizer) -> Generation:
    """The whole answer over every turn it took, cut to its own max_tokens and stop strings (a
    batch generates up to its longest request's limit)."""
    ended = g.finish_reason == "stop" and len(g.token_ids) < g.completion_tokens  # an end-of-turn token
    finish = g.finish_reason
    if len(ids) >= req.max_tokens:  # its budget: what follows is padding, or another row's budget
        ids, ended, finish = ids[: req.max_tokens], False, "length"
    text = tokenizer.decode(ids, skip_special_tokens=True)
    for s in req.stop or []:
        if s in text:
            text, finish = text[: text.index(s)], "stop"
    return Generation(text, len(req.prompt_ids), len(ids) + ended, finish, ids)


class _QueueStreamer:
    """transformers streamer protocol: put() gets the prompt first, then each new token."""

    def __init__(self, q: queue.Queue):
        self.q, self.prompt_seen = q, False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.q.put(value.reshape(-1).tolist())

    def end(self) -> None:
        pass
