"""The inference engine behind the server: one loaded base per base model, many LoRA adapters
over it (switched per request, never reloading the base, kept in a bounded LRU), and a single
worker thread that batches queued requests for the same model and sampling settings."""

import hashlib
import queue
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from ..data.render import stop_token_ids
from ..data.template import load_template
from ..errors import TuneryError
from ..generation import Generation, generate_batch
from ..models import ResolvedModel, resolve_model


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
    future: Future = field(default_factory=Future)

    def batch_key(self):
        """Requests that can share one generate call: same model, same greedy/sampling settings."""
        if self.stream is not None or self.seed is not None:
            return None  # streamed and seeded requests run alone
        return (self.model, self.temperature, self.top_p, tuple(self.stop or ()))


@dataclass
class _Base:
    model: object  # a transformers model, or a PeftModel once an adapter is loaded
    tokenizer: object
    template: object
    stop_ids: list[int]
    adapters: OrderedDict = field(default_factory=OrderedDict)  # adapter path -> (name, template)


class Engine:
    def __init__(self, max_adapters: int = 8, max_bases: int = 2, max_batch: int = 16, device: str | None = None):
        self.max_adapters, self.max_bases, self.max_batch, self.device = max_adapters, max_bases, max_batch, device
        self._bases: OrderedDict[str, _Base] = OrderedDict()
        self._pending: list[ChatRequest] = []
        self._cv = threading.Condition()
        self._resolved: dict[str, ResolvedModel] = {}
        self._thread = threading.Thread(target=self._loop, name="tunery-engine", daemon=True)
        self._thread.start()

    # -- public -----------------------------------------------------------------------------------
    def resolve(self, name: str) -> ResolvedModel:
        if name not in self._resolved:
            self._resolved[name] = resolve_model(name)
        return self._resolved[name]

    def served_names(self) -> list[str]:
        return list(self._resolved)

    def submit(self, req: ChatRequest) -> Future:
        self.resolve(req.model)  # unknown models fail here, in the caller's thread
        with self._cv:
            self._pending.append(req)
            self._cv.notify()
        return req.future

    def tokenizer_for(self, name: str):
        """The tokenizer of a model's loaded base (loaded by the time its request is generating)."""
        return self._bases[str(self.resolve(name).path)].tokenizer

    # -- worker ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending:
                    self._cv.wait()
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
            try:
                results = self._run(batch)
                for req, res in zip(batch, results):
                    req.future.set_result(res)
            except BaseException as exc:  # a failed batch fails its requests, never the engine
                for req in batch:
                    if not req.future.done():
                        req.future.set_exception(exc)
            finally:
                for req in batch:
                    if req.stream is not None:
                        req.stream.put(None)

    def _run(self, batch: list[ChatRequest]) -> list[Generation]:
        import torch

        resolved = self.resolve(batch[0].model)
        base, template = self._prepare(resolved)
        prompts = [self._prompt_ids(base, template, r.messages) for r in batch]
        r0 = batch[0]
        if r0.seed is not None:
            torch.manual_seed(r0.seed)
        streamer = _QueueStreamer(r0.stream) if r0.stream is not None else None
        kw = dict(max_new_tokens=max(r.max_tokens for r in batch), temperature=r0.temperature, top_p=r0.top_p,
                  stop=r0.stop, streamer=streamer)
        if resolved.adapter is None and hasattr(base.model, "disable_adapter"):
            with base.model.disable_adapter():
                out = generate_batch(base.model, base.tokenizer, prompts, base.stop_ids, **kw)
        else:
            out = generate_batch(base.model, base.tokenizer, prompts, base.stop_ids, **kw)
        return [_clip(g, r.max_tokens, base.tokenizer) for g, r in zip(out, batch)]

    def _prompt_ids(self, base: _Base, template, messages: list[dict]) -> list[int]:
        text = template.render(messages, None, add_generation_prompt=True)
        return base.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _prepare(self, resolved: ResolvedModel):
        """The loaded base for this model with its adapter active; returns (base, chat template)."""
        base = self._load_base(resolved)
        if resolved.adapter is None:
            return base, base.template
        key = str(resolved.adapter)
        if key not in base.adapters:
            base.adapters[key] = self._load_adapter(base, resolved)
            while len(base.adapters) > self.max_adapters:
                _, (old_name, _) = base.adapters.popitem(last=False)
                base.model.delete_adapter(old_name)
        base.adapters.move_to_end(key)
        name, template = base.adapters[key]
        base.model.set_adapter(name)
        return base, template

    def _load_base(self, resolved: ResolvedModel) -> _Base:
        from ..models import load_model

        key = str(resolved.path)
        if key not in self._bases:
            model, tokenizer = load_model(replace(resolved, adapter=None), device=self.device, merge=False)
            template = load_template(tokenizer)
            if template is None:
                raise TuneryError(f"model {resolved.reference!r} has no chat template")
            self._bases[key] = _Base(model, tokenizer, template, sorted(stop_token_ids(tokenizer, template)))
            while len(self._bases) > self.max_bases:
                self._bases.popitem(last=False)
        self._bases.move_to_end(key)
        return self._bases[key]

    def _load_adapter(self, base: _Base, resolved: ResolvedModel):
        from peft import PeftModel
        from transformers import AutoTokenizer

        name = "a" + hashlib.sha1(str(resolved.adapter).encode()).hexdigest()[:12]
        if isinstance(base.model, PeftModel):
            base.model.load_adapter(str(resolved.adapter), adapter_name=name)
        else:
            base.model = PeftModel.from_pretrained(base.model, str(resolved.adapter), adapter_name=name).eval()
        # The chat template the run trained with travels with its adapter.
        tok = AutoTokenizer.from_pretrained(resolved.adapter)
        return name, load_template(tok) or base.template


def _clip(g: Generation, max_tokens: int, tokenizer) -> Generation:
    """A batch generates up to its longest request's limit; each answer keeps only its own."""
    if g.completion_tokens <= max_tokens:
        return g
    ids = tokenizer(g.text, add_special_tokens=False)["input_ids"][:max_tokens]
    return Generation(tokenizer.decode(ids), g.prompt_tokens, max_tokens, "length")


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
