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
    field = SCHEMA_FIELD if req.format.json_schema is not None and req.format_given else \
        FIELD if req.format_given else "constraint"
    if req.tools and req.call_format is not None and req.tool_choice != "none":  # calls, or the formatted answer
        calls = tools.call_grammar(req, tokenizer, [t["function"]["name"] for t in req.tools])
        grammar = "\n".join(["start: calls | answer", calls.replace("start:", "calls:", 1),
                             *answer_rules(req.format, "answer", lenient=req.lenient)])
        return Constraint.from_lark(grammar, tokenizer, stop_ids, field)
    return Constraint.from_format(req.format, tokenizer, stop_ids, field, lenient=req.lenient)


def gbnf(fmt: AnswerFormat) -> str:
    """The format as a llama.cpp grammar (GBNF): JSON schemas through llama.cpp's own converter;
    a regex has no GBNF form here (a 400)."""
    import json

    if fmt.regex is not None:
        raise ConfigError("response_format: a regex format needs tunery's own engine (serve without --engine "
                          "llamacpp); llama.cpp's grammars take JSON schemas, JSON objects and choices", FIELD)
    if fmt.choices is not None:
        return "root ::= " + " | ".join(_gbnf_literal(c) for c in fmt.choices)
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if fmt.json_object:
        return JSON_GBNF  # its root is an object
    try:
        return json_schema_to_gbnf(json.dumps(fmt.json_schema))
    except Exception as exc:  # noqa: BLE001 - llama.cpp's converter refuses what it cannot express
        raise ConfigError(f"{SCHEMA_FIELD}: llama.cpp cannot express this schema as a grammar "
                          f"({type(exc).__name__}: {str(exc)[:200]}); serve without --engine llamacpp", SCHEMA_FIELD) from None


def _gbnf_literal(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\[]':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
