"""Structured outputs in chat completions: `response_format` as the hosted API defines it, and the
grammar a request's answer follows, for both engines.

Request: `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}` (the answer is JSON
matching the schema), `{"type": "json_object"}` (any JSON object), `{"type": "text"}` (free). A
schema is data from the network: it is bounded (serve/tools.py's checks: size, depth, `$ref` only
inside it, no `patternProperties`, a valid JSON schema) before llguidance compiles it under its
parser limits; a schema it cannot compile is a 400 naming `response_format.json_schema.schema`.
With `strict: false`, schema keywords llguidance does not implement are ignored instead.
Without `response_format`, a fine-tune whose recipe records a `constraint` answers in that format
(the operator's recipe, trusted); `{"type": "text"}` turns it off.

Grammar (`constraint`): a forced tool call follows the call grammar (tools.py); with tools offered
and left to the model (`tool_choice` auto), the answer is either calls or the format; otherwise the
format. Each request compiles its own grammar once, in the caller's thread (engine.submit).
"""

from ..config import AnswerFormat
from ..errors import ConfigError
from . import tools

FIELD = "response_format"
SCHEMA_FIELD = "response_format.json_schema.schema"
GBNF_MAX_COUNT = 1_000  # a schema's minLength, maxItems, ...: llama.cpp's grammars write a count out as copies of a rule
GBNF_MAX_CHARS = 1_000_000  # a llama.cpp grammar's text
COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties", "minContains", "maxContains")


def check(body) -> tuple[AnswerFormat | None, bool, bool]:
    """(format, lenient, given) of a request: `given` is False when the request has no
    response_format (the model's recorded constraint may apply). ConfigErrors name the field."""
    rf = body.response_format
    if rf is None:
        return None, False, False
    if rf.type == "json_schema":
        if rf.json_schema is None:
            raise ConfigError("response_format.json_schema: required with type json_schema", "response_format.json_schema")
        schema = rf.json_schema.schema_
        if schema is None:  # no schema: any JSON object, as json_object
            return AnswerFormat(json_object=True), False, True
        tools.check_schema(schema, SCHEMA_FIELD, root_object=False)
        return AnswerFormat(json_schema=schema), rf.json_schema.strict is False, True
    if rf.json_schema is not None:
        raise ConfigError(f"response_format.json_schema: only with type json_schema (got {rf.type})",
                          "response_format.json_schema")
    return (AnswerFormat(json_object=True) if rf.type == "json_object" else None), False, True


def constraint(req, tokenizer, stop_ids):
    """The grammar the request's answer follows (constrain.Constraint), or None."""
    from ..constrain import Constraint, answer_rules

    if req.forced:
        return tools.constraint(req, tokenizer, stop_ids)
    if req.format is None:
        return None
    field = _format_field(req)
    if _calls_or_format(req):
        calls = tools.call_grammar(req, tokenizer, [t["function"]["name"] for t in req.tools])
        grammar = "\n".join(["start: calls | answer", calls.replace("start:", "calls:", 1),
                             *answer_rules(req.format, "answer", lenient=req.lenient)])
        return Constraint.from_lark(grammar, tokenizer, stop_ids, field)
    return Constraint.from_format(req.format, tokenizer, stop_ids, field, lenient=req.lenient)


def _format_field(req) -> str:
    """What a format error names: the request's schema, its response_format, or the recipe's constraint."""
    if not req.format_given:
        return "constraint"
    return SCHEMA_FIELD if req.format.json_schema is not None else FIELD


def _calls_or_format(req) -> bool:
    """Tools left to the model beside a format: the answer is either calls or the formatted answer."""
    return bool(req.tools) and req.call_format is not None and req.tool_choice != "none"


def gbnf(fmt: AnswerFormat, field: str = FIELD) -> str:
    """The format as a llama.cpp grammar (GBNF, rule `root`)."""
    g = _Gbnf()
    return g.text(g.answer(fmt, field))


def request_gbnf(req, special: dict[str, int]) -> str | None:
    """The llama.cpp grammar (GBNF) a request's answer follows, chosen as `constraint` chooses for
    tunery's engine: a forced call, calls or the format, the format; None when the answer is free.
    `special`: the GGUF's special tokens' text -> id (the call format's markers)."""
    g = _Gbnf()
    if req.forced:
        return g.text(g.calls(req, req.forced, special, "tools" if len(req.forced) > 1 else "tool_choice"))
    if req.format is None:
        return None
    field = _format_field(req)
    answer = g.answer(req.format, field)
    if _calls_or_format(req):
        names = [t["function"]["name"] for t in req.tools]
        return g.text(f"({g.calls(req, names, special, 'tools')}) | {answer}")
    return g.text(answer)


class _Gbnf:
    """One GBNF grammar being written: JSON schemas through llama.cpp's own converter (one for the
    whole grammar, so the rules its schemas share are written once), tunery's rules beside them."""

    def __init__(self):
        from llama_cpp.llama_grammar import SchemaConverter

        self.converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        self.rules: list[str] = []

    def json(self, schema: dict, name: str, field: str) -> str:
        """The rule of JSON matching `schema` (a JSON schema from a request: bounded by tools.check_schema)."""
        import copy

        if (count := _largest_count(schema)) is not None:
            raise ConfigError(f"{field}: {count[0]} {count[1]} is over {GBNF_MAX_COUNT} here: llama.cpp's grammars "
                              "write a count out as that many copies of a rule; serve without --engine llamacpp", field)
        try:
            return self.converter.visit(self.converter.resolve_refs(copy.deepcopy(schema), name), name)
        except Exception as exc:  # noqa: BLE001 - llama.cpp's converter refuses what it cannot express
            raise ConfigError(f"{field}: llama.cpp cannot express this schema as a grammar "
                              f"({type(exc).__name__}: {str(exc)[:200]}); serve without --engine llamacpp", field) from None

    def answer(self, fmt: AnswerFormat, field: str) -> str:
        """An expression of an answer in the format; a regex has no GBNF form here (a 400)."""
        from ..data.tool_calls import gbnf_quote

        if fmt.regex is not None:
            raise ConfigError(f"{field}: a regex format needs tunery's own engine (serve without --engine llamacpp); "
                              "llama.cpp's grammars take JSON schemas, JSON objects and choices", field)
        if fmt.choices is not None:
            return "(" + " | ".join(gbnf_quote(c) for c in fmt.choices) + ")"
        return self.json({"type": "object"} if fmt.json_object else fmt.json_schema, "answer", field)

    def calls(self, req, names, special: dict[str, int], field: str) -> str:
        """An expression of a turn of calls to the functions `names`, as the template writes them."""
        turn, rules = tools.call_gbnf(req, names, special, lambda schema, name: self.json(schema, name, field))
        self.rules += rules
        return turn

    def text(self, root: str) -> str:
        grammar = "\n".join([f"root ::= {root}", *self.rules, self.converter.format_grammar()])
        if len(grammar) > GBNF_MAX_CHARS:
            raise ConfigError(f"{FIELD}: the request's llama.cpp grammar would be {len(grammar):,} characters (at most "
                              f"{GBNF_MAX_CHARS:,}); serve without --engine llamacpp", FIELD)
        return grammar


def _largest_count(x) -> tuple[str, float] | None:
    """(keyword, value) of a count in a schema over GBNF_MAX_COUNT, or None."""
    if isinstance(x, dict):
        for k, v in x.items():
            if k in COUNTS and isinstance(v, (int, float)) and not isinstance(v, bool) and v > GBNF_MAX_COUNT:
                return k, v
            if (found := _largest_count(v)) is not None:
                return found
    elif isinstance(x, list):
        for v in x:
            if (found := _largest_count(v)) is not None:
                return found
    return None
