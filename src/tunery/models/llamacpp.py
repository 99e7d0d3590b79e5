"""llama.cpp's runtime, through the optional extra `tunery[gguf]` (llama-cpp-python): a GGUF file
loaded, its prompts rendered from the chat template inside the file, greedy answers that stop
where llama.cpp stops.

Invariants:
- A prompt is rendered from the GGUF's own `tokenizer.chat_template` (llama-cpp-python's Jinja
  formatter, the one its OpenAI-style server uses), never from tunery's copy: what export
  verification checks is what a user of the file gets.
- An answer ends at a token llama.cpp itself calls end-of-generation (`llama_vocab_is_eog`), or
  at `max_tokens` ("length"); no stop strings are added here, so a GGUF whose end-of-turn token
  is not end-of-generation runs on, and is caught.
- Greedy means greedy: temperature 0 and no repetition penalty. Sampling takes the request's
  seed, or a fresh random one (never the seed an earlier request set).
- An Answer's `token_ids` are the answer's tokens, the end-of-generation token excluded, and its
  text is their text (special tokens give none); `on_token` sees each of them as it comes.
"""

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TuneryError

EXTRA = "pip install 'tunery[gguf]'"


def llama_cpp_module():
    """llama_cpp, or a one-line error naming the extra that brings it."""
    try:
        import llama_cpp
    except ImportError:
        raise TuneryError("GGUF needs llama.cpp's runtime, the optional gguf extra",
                          hint=f"run {EXTRA} (it builds llama.cpp from source: minutes)") from None
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's own log: errors only
    return llama_cpp


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop (an end-of-generation token) | length
    token_ids: list[int] = field(default_factory=list)  # the answer's tokens, the end-of-generation token excluded


class GGUFModel:
    """One GGUF file in llama.cpp. Generation is serialised by a lock; rendering, tokenizing and
    decoding only read the vocabulary and may run beside it."""

    def __init__(self, path: str | Path, *, n_ctx: int = 2048, threads: int | None = None):
        ll = llama_cpp_module()
        path = Path(path)
        if not path.is_file():
            raise TuneryError(f"{path}: no such GGUF file")
        threads = threads or max(1, (os.cpu_count() or 2))
        n_ctx = min(n_ctx, _trained_context(path) or n_ctx)
        try:
            self.llm = ll.Llama(str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, seed=0,
                                verbose=False)
        except (ValueError, RuntimeError) as e:
            raise TuneryError(f"{path}: llama.cpp cannot load it ({e})") from None
        self.path, self.lock = path, threading.Lock()
        self.n_ctx = self.llm.n_ctx()
        meta = self.llm.metadata
        self.chat_template = meta.get("tokenizer.chat_template")
        vocab = self.llm._model.vocab
        self.eog_ids = {t for t in range(self.llm.n_vocab()) if ll.llama_vocab_is_eog(vocab, t)}
        self.add_bos = meta.get("tokenizer.ggml.add_bos_token", "false") == "true"
        self._random_seed = ll.LLAMA_DEFAULT_SEED  # llama.cpp draws a fresh seed for each sampler
        self._formatter = None
        self._special: dict[str, int] | None = None

    def close(self) -> None:
        self.llm.close()

    def render(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        """The prompt text the GGUF's own template makes, ready for the assistant's answer."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        if not self.chat_template:
            raise TuneryError(f"{self.path}: the GGUF carries no chat template (tokenizer.chat_template)")
        if self._formatter is None:  # compiled once; rendering a compiled Jinja template is thread-safe
            token = lambda i: self.llm.detokenize([i], special=True).decode("utf-8", "replace") if i >= 0 else ""  # noqa: E731
            self._formatter = Jinja2ChatFormatter(self.chat_template, eos_token=token(self.llm.token_eos()),
                                                  bos_token=token(self.llm.token_bos()), add_generation_prompt=True)
        return self._formatter(messages=messages, tools=tools).prompt

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=self.add_bos, special=True)

    def answer(self, messages: list[dict], *, max_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
               seed: int | None = None) -> Answer:
        return self.complete(self.tokenize(self.render(messages)), max_tokens=max_tokens, temperature=temperature,
                             top_p=top_p, seed=seed)

    @property
    def special(self) -> dict[str, int]:
        """The vocabulary's control tokens: text -> id (a grammar names them as tokens, `<[id]>`)."""
        if self._special is None:
            ll = llama_cpp_module()
            vocab = self.llm._model.vocab
            self._special = {self.decode([t], skip_special_tokens=False): t for t in range(self.llm.n_vocab())
                             if ll.llama_vocab_get_attr(vocab, t) & ll.LLAMA_TOKEN_ATTR_CONTROL}
        return self._special

    def grammar_error(self, gbnf: str) -> bool:
        """True if llama.cpp cannot parse this grammar (GBNF) against this vocabulary: checked before
        generating, since a sampler chain given no grammar would fail inside llama.cpp."""
        ll = llama_cpp_module()
        sampler = ll.llama_sampler_init_grammar(self.llm._model.vocab, gbnf.encode("utf-8"), b"root")
        if not sampler:
            return True
        ll.llama_sampler_free(sampler)
        return False

    def complete(self, prompt: list[int], *, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None, on_token=None, grammar: str | None = None) -> Answer:
        """Generate after `prompt` (token ids). `on_token(token_id, piece)` is called for each token
        of the answer as it comes, with the text it adds ("" inside a multi-byte character);
        returning True from it stops generation (finish_reason "length"). `grammar`: a GBNF grammar
        the answer follows (llama.cpp's grammar sampler; see `grammar_error`)."""
        room = self.n_ctx - len(prompt)
        if room <= 0:
            raise TuneryError(f"the prompt has {len(prompt)} tokens; {self.path.name} runs with a context of {self.n_ctx}")
        sampling = temperature > 0
        tokens: list[int] = []
        raw, text, finish = b"", "", "length"
        with self.lock:
            self.llm.set_seed(seed if seed is not None else self._random_seed)
            rules = ll_grammar(grammar) if grammar else None
            for token in self.llm.generate(prompt, temp=temperature if sampling else 0.0, top_p=top_p if sampling else 1.0,
                                           top_k=0 if sampling else 1, min_p=0.0, repeat_penalty=1.0, reset=True,
                                           grammar=rules):
                if token in self.eog_ids:
                    finish = "stop"
                    break
                tokens.append(token)
                raw += self.llm.detokenize([token])
                try:
                    now = raw.decode("utf-8")
                except UnicodeDecodeError:  # inside a multi-byte character
                    now = text
                piece, text = now[len(text):], now
                if on_token is not None and on_token(token, piece):
                    break
                if len(tokens) >= min(max_tokens, room):
                    break
        return Answer(text, len(prompt), len(tokens), finish, tokens)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """The text of token ids, as a transformers tokenizer's `decode` gives it (for IncrementalText)."""
        return self.llm.detokenize(list(ids), special=not skip_special_tokens).decode("utf-8", "replace")


def ll_grammar(gbnf: str):
    from llama_cpp.llama_grammar import LlamaGrammar

    return LlamaGrammar.from_string(gbnf, verbose=False)


def _trained_context(path: Path) -> int | None:
    """The context length the GGUF says its model was trained with (its `<arch>.context_length`)."""
    from gguf import GGUFReader

    try:
        fields = GGUFReader(str(path)).fields
        arch = fields["general.architecture"].contents()
        return int(fields[f"{arch}.context_length"].contents())
    except Exception:  # an unusual file: llama.cpp decides
        return None
