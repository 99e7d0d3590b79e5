"""Render conversations with the chat template and derive token-level loss masks.

How masks are found without `{% generation %}` markers: for each trained assistant turn i we
render the conversation up to turn i with the generation prompt (the prompt the model will see
at inference) and up to turn i inclusive. The turn starts where the first render ends and ends
after the template's end-of-turn marker that follows the message's content (`ChatTemplate.
end_marker`), never after a header the template appends for the next reply. This is only sound
if every prefix renders as a prefix of the whole conversation, which we check for every example;
a template that breaks it gets a clear error, never a guessed mask.

Invariants, checked for every example (a violation is an error with the evidence, never "ok"):
- the token ids are exactly the tokenization of the template's full render; the one exception
  is a template whose turns end without any marker, where an EOS is appended (trained) after
  each trained turn so the model learns to stop, and the doctor warns about it;
- each trained span is a whole number of tokens: its tokens decode to the assistant turn as the
  template renders it (content, plus reasoning and tool calls where the template renders them)
  followed by the end-of-turn marker, and nothing else.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import TemplateError
from .formats import Invalid
from .template import END_OF_TURN_TOKENS, ChatTemplate
from .types import Conversation

MASK_MODES = ("assistant", "last", "all")
OVERLONG_POLICIES = ("drop", "truncate", "error")


@dataclass
class Encoded:
    input_ids: list[int]
    loss_mask: list[int]  # 1 where the token is a training target
    length_before_truncation: int
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (code, message)

    @property
    def n_trained(self) -> int:
        return sum(self.loss_mask)

    @property
    def truncated(self) -> bool:
        return self.length_before_truncation > len(self.input_ids)


@dataclass
class PairEncoded:
    """A preference pair: the prompt with its chosen answer, and with its rejected one."""

    chosen: Encoded
    rejected: Encoded
    warnings: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Span:
    """Characters [start, end) of the render that are trained; `turn` is the message index (-1: whole text)."""

    start: int
    end: int
    turn: int = -1


class Renderer:
    def __init__(self, tokenizer, template: ChatTemplate | None, mask: str = "assistant"):
        if mask not in MASK_MODES:
            raise ValueError(f"mask must be one of {MASK_MODES}")
        self.tokenizer = tokenizer
        self.template = template
        self.mask = mask
        self.eos_id = tokenizer.eos_token_id

    # -- what the template's turns end with ---------------------------------------------------------
    def _marker(self) -> str:
        try:
            return self.template.end_marker
        except TemplateError as exc:
            raise Invalid("template_error", str(exc)) from None

    def _has_no_marker(self) -> bool:
        try:
            return not self.template.end_marker
        except TemplateError:  # unknown (the template rejects the probe): assume it has one
            return False

    def template_warnings(self) -> list[tuple[str, str]]:
        """File-level problems of the template against this tokenizer: (code, message)."""
        if self.template is None:
            return []
        try:
            marker = self.template.end_marker
        except TemplateError:
            return []  # every example reports it as an error
        where = self.template.origin
        if not marker:
            return [("no_end_marker", f"{where} ends assistant turns without an end-of-turn token; tunery appends "
                                      f"EOS ({self.tokenizer.eos_token!r}) after each trained turn so the model learns "
                                      "to stop, which the template's own render at inference does not have")]
        if end_token_id(self.tokenizer, marker) is None:
            fix = "" if self.template.from_model else " or use the model's own template"
            return [("end_marker_not_special", f"{where} ends assistant turns with {marker!r}, which is not a special "
                                               "token of this tokenizer: it is trained as plain text pieces, generation "
                                               f"will not stop at it, and it can merge with the next header; add it to "
                                               f"the tokenizer as a special token{fix}")]
        return []

    # -- text and character spans -------------------------------------------------------------
    def text_and_spans(self, conv: Conversation) -> tuple[str, list[Span], list[tuple[str, str]]]:
        if conv.text is not None:
            return conv.text, [Span(0, len(conv.text))], []
        if self.template is None:
            raise Invalid("no_template", "the model has no chat template; pass --template FILE")
        msgs, tools = conv.messages, conv.tools
        warnings: list[tuple[str, str]] = []
        try:
            full = self.template.render(msgs, tools)
            if self.mask == "all":
                return full, [Span(0, len(full))], []
            marker = self._marker()
            spans = []
            for i in self._trained_turns(conv):
                before = self.template.render(msgs[:i], tools, add_generation_prompt=True)
                upto = full if i == len(msgs) - 1 else self.template.render(msgs[: i + 1], tools)
                if not upto.startswith(before):
                    raise self._underivable(conv, i, "does not continue its own generation prompt")
                end = self._turn_end(upto, len(before), msgs[i], marker, conv, i)
                if not full.startswith(upto[:end]):
                    raise self._underivable(conv, i, "renders differently once later messages follow "
                                                     "(it rewrites earlier turns)")
                body = full[len(before):end]
                if not _strip_end(body, marker).strip():
                    raise Invalid("mask_invariant", f"messages[{i}]: the chat template renders this assistant turn as "
                                                    f"{body!r}, without its content or tool calls; nothing of it "
                                                    "would be learnt but the end of the turn")
                spans.append(Span(len(before), end, i))
                warnings += _dropped(msgs[i], body, i)
        except Invalid:
            raise
        except Exception as exc:  # templates raise_exception() on conversations they reject
            raise Invalid("template_error", f"chat template failed: {exc}") from None
        if not spans:
            raise Invalid("nothing_trainable", "no tokens left to train on after masking")
        return full, spans, warnings

    def _turn_end(self, upto: str, start: int, msg: dict, marker: str, conv: Conversation, i: int) -> int:
        """Where assistant turn i, the last message of `upto`, ends: after its last end-of-turn marker.
        Anything after it is a tail the template appends (Command-A's next reply header, Phi-3's EOS)."""
        turn = upto[start:]
        if marker:
            k = turn.rfind(marker)
            if k >= 0:
                return start + k + len(marker)
            # A turn closed another way (GPT-OSS's <|call|> after a tool call): its last end token.
            hits = [(turn.rfind(stop) + len(stop), stop) for stop in self.template.stop_strings if stop in turn]
            if not hits:
                raise self._underivable(conv, i, f"does not end with its end-of-turn marker {marker!r}")
            return start + max(hits)[0]
        content = _visible(msg["content"])
        found = turn.find(content) if content else -1
        # No marker: the turn ends with its content; newlines after it are not trained.
        return start + found + len(content) if found >= 0 else len(upto.rstrip())

    def _underivable(self, conv: Conversation, i: int, why: str) -> Invalid:
        ways = []
        assistants = [k for k, m in enumerate(conv.messages) if m["role"] == "assistant"]
        if self.mask == "assistant" and i != assistants[-1]:
            ways.append("--mask last to train only the final assistant turn")
        if self.template.from_model:
            ways.append("a training template with --template FILE")
        else:
            ways.append(f"a template that renders every turn the same way in place of {self.template.origin}")
        ways.append("--mask all to train every token")
        return Invalid("mask_underivable", f"the chat template, given messages[{i}] (assistant), {why}, so its loss "
                                           f"mask cannot be derived; use {', or '.join(ways)}")

    def _trained_turns(self, conv: Conversation) -> list[int]:
        turns = [i for i, m in enumerate(conv.messages) if m["role"] == "assistant" and conv.weights[i] != 0]
        if self.mask == "last":
            last = max(i for i, m in enumerate(conv.messages) if m["role"] == "assistant")
            turns = [i for i in turns if i == last]
        return turns

    # -- tokens ---------------------------------------------------------------------------------
    def encode_many(self, convs: Sequence[Conversation]) -> list["Encoded | PairEncoded | Invalid"]:
        """Encode a chunk of conversations with one batched tokenizer call; a preference pair's two
        sides are encoded alike and checked to share their prompt and differ in their answers."""
        if all(c.rejected is None for c in convs):
            return self._encode_many(convs)
        flat = [side for c in convs for side in (c.sides() if c.rejected is not None else (c,))]
        encoded = iter(self._encode_many(flat))
        return [self._pair(next(encoded), next(encoded)) if c.rejected is not None else next(encoded) for c in convs]

    def _pair(self, chosen: "Encoded | Invalid", rejected: "Encoded | Invalid") -> "PairEncoded | Invalid":
        if self.mask == "all":
            return Invalid("bad_mask", "mask all trains the prompt too: preference pairs compare their answers "
                                       "(use mask assistant or last)")
        for side, enc in (("chosen", chosen), ("rejected", rejected)):
            if isinstance(enc, Invalid):
                return Invalid(enc.code, f"{side}: {enc}")
        starts = [e.loss_mask.index(1) for e in (chosen, rejected)]
        if starts[0] != starts[1] or chosen.input_ids[:starts[0]] != rejected.input_ids[:starts[1]]:
            return Invalid("prompt_mismatch", "the prompt tokenizes differently before the chosen and the rejected "
                                              "answer, so the two are not scored on one prompt")
        if chosen.input_ids == rejected.input_ids:
            return Invalid("same_answers", "the chosen and the rejected answer are the same")
        return PairEncoded(chosen, rejected, chosen.warnings + [w for w in rejected.warnings if w not in chosen.warnings])

    def _encode_many(self, convs: Sequence[Conversation]) -> list["Encoded | Invalid"]:
        results: list[Encoded | Invalid | None] = [None] * len(convs)
        texts, spans, notes, where = [], [], [], []
        for k, conv in enumerate(convs):
            try:
                text, sp, warn = self.text_and_spans(conv)
            except Invalid as exc:
                results[k] = exc
                continue
            texts.append(text)
            spans.append(sp)
            notes.append(warn)
            where.append(k)
        if texts:
            # The Rust tokenizer directly: transformers' wrapper costs as much again in Python.
            encodings = self.tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
            for j, k in enumerate(where):
                plain = convs[k].text is not None
                try:
                    enc = self._mask(encodings[j].ids, encodings[j].offsets, spans[j], plain, texts[j])
                except Invalid as exc:
                    results[k] = exc
                    continue
                enc.warnings = notes[j]
                results[k] = enc
        return results

    def _mask(self, ids: list[int], offsets, spans: list[Span], plain: bool, text: str) -> Encoded:
        out_ids, out_mask = [], []
        if plain and self.tokenizer.bos_token_id is not None:
            out_ids.append(self.tokenizer.bos_token_id)
            out_mask.append(0)
        # Plain text, and templates whose turns end without a marker, get EOS after each span.
        append_eos = self.eos_id is not None and (plain or self._has_no_marker())
        n, t = len(ids), 0
        for span in spans:
            while t < n and offsets[t][0] < span.start:
                if offsets[t][1] > span.start:
                    raise self._misaligned(ids, offsets, t, span, text)
                out_ids.append(ids[t]); out_mask.append(0); t += 1
            while t < n and offsets[t][0] < span.end:
                if offsets[t][1] > span.end:
                    raise self._misaligned(ids, offsets, t, span, text)
                out_ids.append(ids[t]); out_mask.append(1); t += 1
            if append_eos:
                out_ids.append(self.eos_id); out_mask.append(1)
        out_ids.extend(ids[t:]); out_mask.extend([0] * (n - t))
        return Encoded(out_ids, out_mask, len(out_ids))

    def _misaligned(self, ids, offsets, t: int, span: Span, text: str) -> Invalid:
        """A token crosses a trained span's edge: training it, or not, would break the invariant."""
        a, b = offsets[t]
        turn = _clip(text[span.start:span.end])
        if a < span.start and text[span.start:span.end][:1].isspace():
            return Invalid("mask_invariant", f"messages[{span.turn}]: the content starts with whitespace, which "
                                             f"tokenizes together with the end of the generation prompt ({text[a:b]!r}); "
                                             "strip the leading whitespace from the assistant's content")
        if a < span.start:
            return Invalid("mask_invariant", f"messages[{span.turn}]: the generation prompt ends inside a token: "
                                             f"{text[a:b]!r} spans the prompt's end and the start of the turn {turn!r}, "
                                             "so the prompt is tokenized differently at inference than in training; "
                                             "end the template's generation prompt at a token boundary (for example "
                                             "without a trailing space)")
        trained = [k for k in range(len(ids)) if offsets[k][1] > span.start and offsets[k][0] < span.end]
        got = self.tokenizer.decode([ids[k] for k in trained], skip_special_tokens=False)
        return Invalid("mask_invariant", f"messages[{span.turn}]: the assistant turn {turn!r} does not end on a token "
                                         f"boundary: token {text[a:b]!r} crosses its end, so its tokens decode to "
                                         f"{_clip(got)!r}; the template's end-of-turn marker is probably not a special "
                                         "token of this tokenizer")


def _dropped(msg: dict, turn: str, i: int) -> list[tuple[str, str]]:
    """Warnings for parts of an assistant message that the template leaves out of its turn."""
    out = []
    content = _visible(msg["content"])
    if content and content not in turn:
        out.append(("content_dropped", f"messages[{i}].content is not rendered as given by the chat template; "
                                       f"the turn trained is {_clip(turn)!r}"))
    reasoning = (msg.get("reasoning_content") or "").strip()
    if reasoning and reasoning not in turn:
        out.append(("reasoning_dropped", f"messages[{i}].reasoning_content is not rendered by the chat template "
                                         "and is not trained"))
    names = [c["function"]["name"] for c in msg.get("tool_calls") or []]
    if any(name not in turn for name in names):
        out.append(("tool_calls_dropped", f"messages[{i}].tool_calls are not rendered by the chat template "
                                          "and are not trained"))
    return out


def _visible(content: str) -> str:
    """The answer in a message's content: reasoning templates rewrite what precedes `</think>`."""
    return content.rsplit("</think>", 1)[-1].strip()


def _strip_end(body: str, marker: str) -> str:
    return body[: -len(marker)] if marker and body.endswith(marker) else body


def _clip(text: str, n: int = 120) -> str:
    return text if len(text) <= n else text[: n // 2] + " … " + text[-n // 2:]


def apply_max_length(enc: "Encoded | PairEncoded", max_length: int, policy: str) -> "Encoded | PairEncoded | Invalid | None":
    """None keeps the example as is; otherwise the truncated example or why it is rejected (a pair
    is cut, or rejected, as its longer side)."""
    if isinstance(enc, PairEncoded):
        fitted = [apply_max_length(e, max_length, policy) for e in (enc.chosen, enc.rejected)]
        bad = next((f for f in fitted if isinstance(f, Invalid)), None)
        if bad is not None or fitted == [None, None]:
            return bad
        return PairEncoded(fitted[0] or enc.chosen, fitted[1] or enc.rejected, enc.warnings)
    if len(enc.input_ids) <= max_length:
        return None
    if policy == "truncate":
        cut = Encoded(enc.input_ids[:max_length], enc.loss_mask[:max_length], enc.length_before_truncation,
                      enc.warnings)
        if cut.n_trained == 0:
            return Invalid("nothing_trainable", f"{len(enc.input_ids)} tokens; nothing trainable within the first {max_length}")
        return cut
    return Invalid("too_long", f"{len(enc.input_ids)} tokens is longer than max_length {max_length}")


def end_token_id(tokenizer, marker: str) -> int | None:
    """The id of the special token a marker ends with, or None if it ends in plain text."""
    vocab = tokenizer.get_added_vocab()
    for token in sorted(vocab, key=len, reverse=True):
        if marker.endswith(token):
            return vocab[token]
    return None


def stop_token_ids(tokenizer, template: ChatTemplate | None = None) -> set[int]:
    """Ids generation stops at: EOS, the known end-of-turn tokens the tokenizer has, the template's marker."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in END_OF_TURN_TOKENS if token in vocab)
    if template is not None:
        try:
            marker = template.end_marker
        except TemplateError:
            marker = ""
        if marker and (tid := end_token_id(tokenizer, marker)) is not None:
            ids.add(tid)
    return ids
