"""Constrained decoding: generation that must follow a grammar (llguidance), as a logits mask.

A Constraint is compiled from an llguidance grammar (lark syntax, with `%json {schema}` for JSON
that must match a schema) against a tokenizer, once per request; `processor()` is a transformers
LogitsProcessor that lets through only the tokens that keep the text inside the grammar, and the
stop tokens once the grammar is complete. Tool calls use it (serve/tools.py: a forced tool_choice);
structured outputs (response_format) can use it the same way.

Grammars come from the network: compiling runs under llguidance's parser limits, and a grammar
that does not compile or exceeds them is a ConfigError (an HTTP 400) naming the request field.
"""

import threading
import weakref

from .errors import ConfigError

_LIMITS = dict(max_items_in_row=2000, initial_lexer_fuel=1_000_000, step_lexer_fuel=200_000, step_max_items=50_000,
               max_lexer_states=100_000, max_grammar_size=200_000, verbose_errors=False)
_tokenizers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> {stop ids: LLTokenizer}
_lock = threading.Lock()


def _ll_tokenizer(tokenizer, stop_ids: tuple[int, ...]):
    """llguidance's view of a transformers tokenizer (about a second to build: cached), whose end
    tokens are the ones generation stops at."""
    import llguidance.hf

    with _lock:
        per = _tokenizers.setdefault(tokenizer, {})
        if stop_ids not in per:
            per[stop_ids] = llguidance.hf.from_tokenizer(tokenizer, eos_token=list(stop_ids) or None)
        return per[stop_ids]


class Constraint:
    """The grammar's state over one generation: fed each generated token in order."""

    def __init__(self, matcher, vocab: int):
        self.matcher, self.vocab = matcher, vocab
        self.fed = 0  # generated tokens the matcher has consumed

    @classmethod
    def from_lark(cls, grammar: str, tokenizer, stop_ids, field: str) -> "Constraint":
        from llguidance import LLMatcher, LLParserLimits

        ll = _ll_tokenizer(tokenizer, tuple(sorted(stop_ids)))
        limits = LLParserLimits(**_LIMITS)
        compiled = LLMatcher.grammar_from_lark(grammar)
        error = LLMatcher.validate_grammar(compiled, ll, limits=limits)
        if error:
            raise ConfigError(f"{field}: cannot be compiled into a grammar for constrained generation: "
                              f"{error.splitlines()[0][:300]}", field)
        matcher = LLMatcher(ll, compiled, log_level=0, limits=limits)
        if matcher.is_error():
            raise ConfigError(f"{field}: cannot be compiled into a grammar for constrained generation: "
                              f"{matcher.get_error().splitlines()[0][:300]}", field)
        return cls(matcher, ll.vocab_size)

    def feed(self, generated: list[int]) -> None:
        """Advance over the tokens of `generated` (the answer so far) not yet consumed."""
        for token in generated[self.fed:]:
            self.matcher.consume_token(int(token))
        self.fed = max(self.fed, len(generated))

    def allowed(self):
        """A bool tensor over the vocabulary: the tokens that may come next."""
        import numpy as np
        import torch

        if self.matcher.is_error() or self.matcher.is_stopped():
            return None
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        return torch.from_numpy(np.unpackbits(bits, bitorder="little")[: self.vocab].astype(bool))

    def processor(self, prompt_length: int):
        """A LogitsProcessor for a batch of one row whose prompt is `prompt_length` tokens long
        (tokens after it are the answer; an answer resumed after a preemption counts them too)."""
        from transformers import LogitsProcessor

        constraint = self

        class Masked(LogitsProcessor):
            def __call__(self, input_ids, scores):
                constraint.feed(input_ids[0, prompt_length:].tolist())
                allowed = constraint.allowed()
                if allowed is None:  # stopped or broken: only the end of the answer remains
                    return scores
                n = min(scores.shape[-1], len(allowed))
                mask = allowed[:n].to(scores.device)
                scores[0, :n] = scores[0, :n].masked_fill(~mask, float("-inf"))
                scores[0, n:] = float("-inf")
                return scores

        return Masked()
