"""How a chat template writes tool calls, learnt from the template itself, and reading calls back.

No format is hard-coded per family. The template is probed once (`CallFormat.probe`): an assistant
turn with one call to a sentinel function (sentinel arguments, sentinel id) and one with two
calls, rendered after the generation prompt, show where the name, the arguments' JSON and the id
go, and which text opens and closes a call, a block of calls and the gap between two calls:

  Hermes / Qwen 2.5   <tool_call>\\n{"name": NAME, "arguments": ARGS}\\n</tool_call>   (sep "\\n")
  Llama 3.1           {"name": NAME, "parameters": ARGS}                           (one call)
  Mistral v3          [TOOL_CALLS] [{"name": NAME, "arguments": ARGS, "id": ID}, ...]
  GPT-OSS             to=functions.NAME<|channel|>commentary json<|message|>ARGS  (one call)

`parse` finds calls of that shape in generated text (the text decoded with special tokens kept):
literals match with any whitespace where the template has some and around JSON punctuation, the
arguments are read with `json.JSONDecoder.raw_decode`. `lark` writes the same shape as an
llguidance grammar, for generation that must produce a call (constrain.py); `gbnf` as a llama.cpp
grammar (the llama.cpp engine).
"""

import json
import re
from dataclasses import dataclass, field

NAME, ARGS, ID = "name", "arguments", "id"  # the slots of a call
NAME_PATTERN = r"[A-Za-z0-9_-]{1,64}"  # the OpenAI API's function names

_FN, _ARGS, _ID = "tunery_probe_fn", {"tunery_probe_key": "tunery probe value"}, "Tp0r0b3Ia"
_FN2, _ARGS2, _ID2 = "tunery_probe_other", {"tunery_probe_n": 7}, "Tp0r0b3Ib"  # ids: Mistral wants 9 alphanumerics
_QUESTION, _ANSWER = "tunery probe question", "tunery probe answer"
_TOOLS = [{"type": "function", "function": {"name": n, "description": "tunery probe", "parameters": {
    "type": "object", "properties": {k: {"type": "string" if isinstance(v, str) else "integer"} for k, v in a.items()}}}}
    for n, a in ((_FN, _ARGS), (_FN2, _ARGS2))]


class Unsupported(Exception):
    """The template cannot carry tool calls (the message says why)."""


@dataclass
class Call:
    name: str
    arguments: dict
    id: str | None = None  # where the format has the model write one (Mistral)


@dataclass
class Parsed:
    content: str  # the text outside the calls
    calls: list[Call] = field(default_factory=list)
    error: str | None = None  # a call began but could not be read: why


@dataclass(frozen=True)
class CallFormat:
    """A call is `call`: literals (str) and slots (NAME, ARGS, ID) in order; calls of one turn are
    `open` call (`sep` call)* `close`, after `lead` (what the template renders before calls in a
    turn with no text, like Qwen 3's empty think block)."""

    call: tuple
    lead: str = ""
    open: str = ""
    sep: str = ""
    close: str = ""
    parallel: bool = False  # the template renders several calls in one turn
    id_length: int = len(_ID)

    # -- learning it --------------------------------------------------------------------------
    @classmethod
    def probe(cls, template) -> "CallFormat":
        """The format of a ChatTemplate, or Unsupported with the reason."""
        q = [{"role": "user", "content": _QUESTION}]
        try:
            prompt = template.render(q, _TOOLS, add_generation_prompt=True)
            if prompt == template.render(q, None, add_generation_prompt=True):
                raise Unsupported("it does not render tools")
            plain = template.render(q + [{"role": "assistant", "content": _ANSWER}], _TOOLS)
            one = template.render(q + [_turn([(_FN, _ARGS, _ID)])], _TOOLS)
        except Unsupported:
            raise
        except Exception as exc:  # templates raise_exception() on what they reject
            raise Unsupported(f"rendering a tool call fails: {exc}") from None
        if not one.startswith(prompt):
            raise Unsupported("its tool-call turn does not continue its own generation prompt")
        turn, plain_turn = one[len(prompt):], plain[len(prompt):] if plain.startswith(prompt) else ""
        if _FN not in turn:
            raise Unsupported("it does not render assistant tool calls")
        lead = _common_prefix(turn, plain_turn)
        turn = turn[len(lead):]
        slots = _slots(turn, _FN, _ARGS, _ID)
        if ARGS not in [s for s, _, _ in slots]:
            raise Unsupported("it writes tool-call arguments in a form that cannot be read back as JSON")
        lits = _literals(turn, slots)
        lits[-1] = _cut_at_end(lits[-1], template.stop_strings)
        order = tuple(s for s, _, _ in slots)
        single = cls(call=_interleave(lits, order), lead=lead)
        try:
            two = template.render(q + [_turn([(_FN, _ARGS, _ID), (_FN2, _ARGS2, _ID2)])], _TOOLS)
        except Exception:  # noqa: BLE001 - "only single tool-calls at once" (Llama 3.1)
            return single
        if not two.startswith(prompt + lead) or _FN2 not in two:
            return single  # one call per turn (GPT-OSS renders the first)
        body = two[len(prompt) + len(lead):]
        first, second = _slots(body, _FN, _ARGS, _ID), _slots(body, _FN2, _ARGS2, _ID2)
        if [s for s, _, _ in first] != list(order) or [s for s, _, _ in second] != list(order):
            return single
        mid = body[first[-1][2]: second[0][1]]
        close = _common_prefix(lits[-1], mid)
        open_ = _common_suffix(lits[0], mid[len(close):])
        fmt = cls(call=_interleave([open_, *lits[1:-1], close], order), lead=lead, open=lits[0][: len(lits[0]) - len(open_)],
                  sep=mid[len(close): len(mid) - len(open_)], close=lits[-1][len(close):], parallel=True)
        calls = [Call(_FN, _ARGS, _ID), Call(_FN2, _ARGS2, _ID2)]
        return fmt if fmt.text(calls) == _cut_at_end(body, template.stop_strings) else single

    # -- writing and reading calls -----------------------------------------------------------------
    def text(self, calls: list[Call]) -> str:
        """The calls as the template writes them (after `lead`), arguments as its `tojson` does."""
        def one(c: Call) -> str:
            values = {NAME: c.name, ARGS: json.dumps(c.arguments, ensure_ascii=False), ID: c.id or ""}
            return "".join(p if i % 2 == 0 else values[p] for i, p in enumerate(self.call))
        return self.open + self.sep.join(one(c) for c in calls) + self.close

    @property
    def anchor(self) -> str:
        """The first non-blank run of text a call block starts with: text from where it appears
        (or may be starting) is held back from a stream until the answer is complete."""
        start = (self.open + self.call[0]).strip()
        return start.split()[0] if start else "{"

    def parse(self, text: str) -> Parsed | None:
        """The calls in generated text, or None when no call begins in it."""
        found = _tolerant(self.open + self.call[0]).search(text)
        if found is None:
            return None
        before, pos = text[: found.start()], found.start()
        calls = []
        try:
            pos = _expect(self.open, text, pos, "the opening of the tool calls")
            while True:
                call, pos = self._call(text, pos)
                calls.append(call)
                if not self.parallel:
                    break
                nxt = _tolerant(self.sep + self.call[0]).match(text, pos)
                if nxt is None:
                    break
                pos = _expect(self.sep, text, pos, "")
            pos = _expect(self.close, text, pos, "the end of the tool calls")
        except _Malformed as exc:
            return Parsed(text, [], str(exc))
        content = before.strip()
        lead = self.lead.strip()
        if lead and content.startswith(lead):  # the template's own empty lead (an empty think block)
            content = content[len(lead):].strip()
        rest = text[pos:].strip()
        return Parsed((content + ("\n" + rest if content and rest else rest)), calls)

    def _call(self, text: str, pos: int) -> tuple[Call, int]:
        values: dict = {}
        for i, part in enumerate(self.call):
            if i % 2 == 0:
                pos = _expect(part, text, pos, f"{part.strip()!r} in a tool call")
                continue
            if part == ARGS:
                while pos < len(text) and text[pos].isspace():
                    pos += 1
                try:
                    values[ARGS], pos = json.JSONDecoder().raw_decode(text, pos)
                except json.JSONDecodeError as exc:
                    raise _Malformed(f"the arguments of a tool call are not valid JSON: {exc.msg}") from None
                continue
            m = re.compile(NAME_PATTERN if part == NAME else r"[A-Za-z0-9_-]{1,64}").match(text, pos)
            if m is None:
                raise _Malformed(f"a tool call has no valid function {part} where one belongs")
            values[part], pos = m.group(), m.end()
        return Call(values[NAME], values[ARGS], values.get(ID)), pos

    def lark(self, schemas: dict[str, dict], parallel: bool, special: dict[str, int] | None = None) -> str:
        """An llguidance grammar for a turn that is only calls to these functions (name -> JSON schema
        of its arguments), as the template writes them; `special`: special tokens' text -> id."""
        def args(k: int, schema: dict) -> str:
            rules.append(f"args_{k}: %json {json.dumps(_exact_json(schema))}")
            return f"args_{k}"

        rules: list[str] = []
        start = self._turn(schemas, parallel, lambda s: _literal(s, special or {}, _lark_quote), args,
                           f"/[A-Za-z0-9]{{{self.id_length}}}/", "_", rules, ": ")
        return "\n".join([f"start: {start}", *rules])

    def gbnf(self, schemas: dict[str, dict], parallel: bool, special: dict[str, int], json_rule) -> tuple[str, list[str]]:
        """The same turn as `lark`, in llama.cpp's grammar language: (the turn's expression, its rules
        named tc-...). `json_rule(schema, name) -> rule` writes a JSON schema's rules (llama.cpp's
        converter, serve/structured.py); `special`: special tokens' text -> id in the GGUF's vocabulary."""
        rules: list[str] = []
        turn = self._turn(schemas, parallel, lambda s: _literal(s, special, gbnf_quote),
                          lambda k, schema: json_rule(schema, f"tc-args-{k}"), f"[A-Za-z0-9]{{{self.id_length}}}",
                          "-", rules, " ::= ", prefix="tc-")
        return turn, rules

    def _turn(self, schemas, parallel, lit, args, ident, joiner, rules, defines, prefix="") -> str:
        """A turn of calls as a grammar: `rules` gets a rule per function's call and one choosing
        among them (named with `prefix` and `joiner`, written `name{defines}body`); returns the turn."""
        call = f"{prefix}call"
        for k, (name, schema) in enumerate(schemas.items()):
            parts = [lit(p) if i % 2 == 0 else {NAME: lambda: lit(name), ARGS: lambda: args(k, schema),
                                                 ID: lambda: ident}[p]()
                     for i, p in enumerate(self.call)]
            rules.append(f"{call}{joiner}{k}{defines}{' '.join(p for p in parts if p)}")
        rules.append(f"{call}{defines}{' | '.join(f'{call}{joiner}{k}' for k in range(len(schemas)))}")
        several = parallel and self.parallel
        calls = f"{call} ({lit(self.sep)} {call})*" if several else call
        return " ".join(p for p in (lit(self.lead), lit(self.open), calls, lit(self.close)) if p)


class _Malformed(Exception):
    pass


def _turn(calls) -> dict:
    return {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "id": i, "function": {"name": n, "arguments": a}} for n, a, i in calls]}


def _slots(text: str, name: str, args: dict, id_: str) -> list[tuple[str, int, int]]:
    """(slot, start, end) of the name, the arguments' JSON and the id in text, in order."""
    out = []
    k = text.find(name)
    if k >= 0:
        out.append((NAME, k, k + len(name)))
    for m in re.finditer(r"[{]", text):
        try:
            value, end = json.JSONDecoder().raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if value == args:
            out.append((ARGS, m.start(), end))
            break
    k = text.find(id_)
    if k >= 0:
        out.append((ID, k, k + len(id_)))
    return sorted(out, key=lambda s: s[1])


def _literals(text: str, slots) -> list[str]:
    cuts = [0] + [x for _, a, b in slots for x in (a, b)] + [len(text)]
    return [text[cuts[i]: cuts[i + 1]] for i in range(0, len(cuts), 2)]


def _interleave(lits: list[str], slots: tuple) -> tuple:
    return tuple(x for pair in zip(lits, slots + ("",)) for x in pair)[:-1]


def _cut_at_end(text: str, stops) -> str:
    """Text up to the first end-of-turn token (generation stops there; it is not in the answer)."""
    hits = [text.find(s) for s in stops if s in text]
    return text[: min(hits)] if hits else text


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _common_suffix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return a[len(a) - n:]


def _tolerant(literal: str) -> re.Pattern:
    """The literal with any whitespace where it has whitespace or JSON punctuation."""
    out: list[str] = []

    def gap():
        if not out or out[-1] != r"\s*":
            out.append(r"\s*")

    for ch in literal:
        if ch.isspace():
            gap()
        elif ch in "{}[]:,":
            gap(); out.append(re.escape(ch)); gap()  # noqa: E702
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out))


def _expect(literal: str, text: str, pos: int, what: str) -> int:
    if not literal:
        return pos
    m = _tolerant(literal).match(text, pos)
    if m is None:
        raise _Malformed(f"expected {what or repr(literal)} at {text[pos: pos + 20]!r}")
    return m.end()


def _literal(s: str, special: dict[str, int], quote) -> str:
    """Text as a grammar's literal: quoted strings (`quote`), special tokens as token references
    `<[id]>` (llguidance and llama.cpp both write them so; text cannot spell them)."""
    if not s:
        return ""
    names = sorted((t for t in special if t and t in s), key=len, reverse=True)
    if not names:
        return quote(s)
    pattern = re.compile("|".join(re.escape(t) for t in names))
    out, pos = [], 0
    for m in pattern.finditer(s):
        if m.start() > pos:
            out.append(quote(s[pos: m.start()]))
        out.append(f"<[{special[m.group()]}]>")
        pos = m.end()
    if pos < len(s):
        out.append(quote(s[pos:]))
    return " ".join(out)


def _lark_quote(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def gbnf_quote(text: str) -> str:
    """A GBNF string literal (llama.cpp's grammar language)."""
    out = []
    for ch in text:
        if ch in '"\\[]':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _exact_json(schema: dict) -> dict:
    """The schema with llguidance told to write JSON as templates' `tojson` does (", " and ": ")."""
    return dict(schema) | {"x-guidance": {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False,
                                          "lenient": True}}
