"""Constrained decoding: generation that must follow a grammar (llguidance), as a logits mask.

A Constraint is compiled from an llguidance grammar (lark syntax, with `%json {schema}` for JSON
that must match a schema) against a tokenizer, once per request or evaluation (`copy()` gives each
further answer its own state without compiling again). It is fed the answer's tokens as they are
generated and fills one row of a token bitmask with what may come next: the tokens that keep the
text inside the grammar, and the stop tokens once the grammar is complete. Batched generation
(generation.py) holds one Constraint per row, so the rows of a batch may follow different grammars
or none. Users: answer formats (`AnswerFormat`: a JSON schema, any JSON object, a regex, a closed
list of choices; eval, compare, serve's response_format) and forced tool calls (serve/tools.py).

Why llguidance (bench/constrain_libraries.py, bench/README.md): a grammar compiles in about a
millisecond (its lexer is built lazily, token by token), the per-token mask costs tens of
microseconds per row on CPU, far below a forward pass, it needs nothing beyond its own wheel, lark
grammars compose (a tool-call turn or a formatted answer), and it runs under parser limits.

Grammars come from the network: compiling runs under llguidance's parser limits, and a grammar
that does not compile or exceeds them is a ConfigError (an HTTP 400) naming the request field. A
grammar that exceeds a limit while generating (`error`) ends its answer at once.
"""

import json
import threading
import weakref

from .config import AnswerFormat
from .errors import ConfigError

_LIMITS = dict(max_items_in_row=2000, initial_lexer_fuel=1_000_000, step_lexer_fuel=200_000, step_max_items=50_000,
               max_lexer_states=100_000, max_grammar_size=200_000, verbose_errors=False)
# How JSON is written: as json.dumps and templates' `tojson` write it (", " and ": "), no other
# whitespace, so a model cannot pad an answer with newlines until it runs out of tokens.
JSON_STYLE = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}
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


def answer_rules(fmt: AnswerFormat, rule: str = "start", lenient: bool = False) -> list[str]:
    """Lark rules that make `rule` an answer of this format (`lenient`: a schema's keywords
    llguidance does not implement are ignored rather than refused)."""
    if fmt.json_schema is not None or fmt.json_object:
        schema = fmt.json_schema if fmt.json_schema is not None else {"type": "object"}
        return [f"{rule}: %json {json.dumps(dict(schema) | {'x-guidance': JSON_STYLE | {'lenient': lenient}})}"]
    if fmt.regex is not None:
        return [f"{rule}: /{_lark_regex(fmt.regex)}/"]
    # A terminal (upper case) is one lexeme: the choices become one automaton, not parser items.
    terminal = rule.upper() + "_CHOICE"
    return [f"{rule}: {terminal}", f"{terminal}: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in fmt.choices)]


def _lark_regex(pattern: str) -> str:
    """A regex inside lark's /.../: its slashes escaped (escaped characters kept as they are)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            out.append(pattern[i: i + 2])
            i += 2
            continue
        out.append("\\/" if pattern[i] == "/" else pattern[i])
        i += 1
    return "".join(out)


def check(grammar: str, field: str) -> None:
    """A ConfigError naming `field` if the lark grammar does not compile (no tokenizer needed:
    the command line checks a format before it loads a model)."""
    from llguidance import LLMatcher, LLParserLimits

    error = LLMatcher.validate_grammar(LLMatcher.grammar_from_lark(grammar), limits=LLParserLimits(**_LIMITS))
    if error:
        raise ConfigError(_compile_error(field, error), field)


def check_format(fmt: AnswerFormat, field: str, lenient: bool = False) -> None:
    check("\n".join(answer_rules(fmt, lenient=lenient)), field)


def _compile_error(field: str, error: str) -> str:
    """One line: llguidance's first line and its `error:` line (its others draw the place with carets)."""
    import re

    lines = [line.strip() for line in error.splitlines() if line.strip()]
    why = next((line for line in lines[1:] if line.startswith("error:")), "")
    first = re.sub(r"^at \d+\(\d+\): ", "", lines[0]) if lines else error  # the place in tunery's own grammar text
    return f"{field}: cannot be compiled for constrained generation: {first} {why}".rstrip()[:400]


class Constraint:
    """The grammar's state over one answer: fed each generated token in order."""

    def __init__(self, matcher, vocab: int, stop_ids, field: str = "grammar"):
        self.matcher, self.vocab, self.stop_ids, self.field = matcher, vocab, sorted(stop_ids), field
        self.fed = 0  # generated tokens the matcher has been shown (a stop token included)
        self.done = False  # a stop token ended the answer, or the generation loop did (padding follows)
        self._mask = None  # the last bitmask filled: what the next token was allowed to be

    @classmethod
    def from_lark(cls, grammar: str, tokenizer, stop_ids, field: str) -> "Constraint":
        from llguidance import LLMatcher, LLParserLimits

        ll = _ll_tokenizer(tokenizer, tuple(sorted(stop_ids)))
        limits = LLParserLimits(**_LIMITS)
        compiled = LLMatcher.grammar_from_lark(grammar)
        error = LLMatcher.validate_grammar(compiled, ll, limits=limits)
        if error:
            raise ConfigError(_compile_error(field, error), field)
        matcher = LLMatcher(ll, compiled, log_level=0, limits=limits)
        if matcher.is_error():
            raise ConfigError(_compile_error(field, matcher.get_error()), field)
        first = matcher.deep_copy()  # its first mask: a grammar that admits no answer fails here, not mid-answer
        first.compute_bitmask()
        if first.is_error():
            raise ConfigError(f"{field}: admits no answer ({first.get_error().strip().splitlines()[0][:200]})", field)
        return cls(matcher, ll.vocab_size, stop_ids, field)

    @classmethod
    def from_format(cls, fmt: AnswerFormat, tokenizer, stop_ids, field: str, lenient: bool = False) -> "Constraint":
        return cls.from_lark("\n".join(answer_rules(fmt, lenient=lenient)), tokenizer, stop_ids, field)

    def copy(self) -> "Constraint":
        """The same grammar at the start of a new answer (no second compile)."""
        fresh = self.matcher.deep_copy()
        fresh.reset()
        return Constraint(fresh, self.vocab, self.stop_ids, self.field)

    @property
    def error(self) -> str | None:
        """Why the grammar gave up (a parser limit reached while generating), or None."""
        return self.matcher.get_error() or None if self.matcher.is_error() else None

    def feed(self, generated: list[int]) -> None:
        """Advance over the tokens of `generated` (the answer so far) not yet consumed."""
        self.extend(generated[self.fed:])

    def extend(self, tokens: list[int]) -> None:
        """Consume the answer's next tokens; what follows a stop token, or a token the last mask
        forbade (padding after the loop ended the row), is ignored."""
        self.fed += len(tokens)
        for token in tokens:
            if self.done:
                return
            mask, self._mask = self._mask, None
            if token in self.stop_ids:
                self.done = True
            elif mask is not None and not (int(mask[token // 32]) >> (token % 32)) & 1:
                self.done = True  # a token the mask forbade: the loop ended this row (its budget, a stop
                # string) while others go on, and pads it with a token that need not be a stop token
            elif not self.matcher.is_error():
                self.matcher.consume_token(int(token))

    @property
    def words(self) -> int:
        """int32 words of this grammar's bitmask: one bit per token of the tokenizer."""
        return (self.vocab + 31) // 32

    def fill(self, row) -> bool:
        """Write the bitmask of the tokens that may come next into `row` (an int32 tensor of at
        least `words` words, bit t of word t // 32 for token t). False: the answer has ended,
        nothing to mask. A grammar in error allows only the stop tokens: the answer ends there."""
        if self.done:
            return False
        row = row[: self.words]
        if not self.matcher.is_error():
            self.matcher.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())
        if self.matcher.is_error():  # before or while computing this mask
            row.zero_()
            for t in self.stop_ids:
                row[t // 32] |= _bit(t % 32)
        self._mask = row
        return True


def _bit(k: int) -> int:
    """Bit k of an int32 word, as the signed value torch stores (bit 31 is negative)."""
    return (1 << k) - (1 << 32 if k == 31 else 0)
