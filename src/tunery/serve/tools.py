"""Tool calls in chat completions, for both engines.

Request: the tools' parameter schemas are checked (a JSON schema of an object, checked by
jsonschema; bounded in size and depth; `$ref` only inside the schema; `pattern` runs with a time
limit, `patternProperties` is refused), `tool_choice` must name a given tool, and a conversation's
earlier calls (arguments as JSON strings, as the API sends them) reach the template as the training
data path hands them over (dicts). The prompt is rendered with the tools (`render`, the one render of both engines); a model
whose template cannot carry tool calls gets a 400. A forced choice (`required`, or a named
function) constrains generation with a grammar of the template's call format (constrain.py).

Answer: the text (decoded with special tokens kept) is read with the template's CallFormat.
Calls to known functions with JSON arguments matching their schema become `message.tool_calls`
and `finish_reason: "tool_calls"`; anything else stays the answer's text, with warnings under the
choice's `tunery.warnings` ({"code", "message"}), never an error.
"""

import json
import secrets

from ..data.tool_calls import Call, CallFormat
from ..errors import ConfigError

MAX_SCHEMA_BYTES = 64_000  # one tool's parameters, as JSON
MAX_SCHEMA_DEPTH = 24
REGEX_SECONDS = 0.1  # a schema's `pattern` against a model's argument


# -- request ---------------------------------------------------------------------------------------
def check(body) -> tuple[list[dict] | None, tuple[str, ...] | None]:
    """The request's tools as the template gets them, and the function names a call is forced
    to (None: not forced). ConfigErrors name the field."""
    if not body.tools:
        if body.tool_choice not in (None, "none", "auto"):
            raise ConfigError("tool_choice: a call is asked for but the request has no tools", "tool_choice")
        return None, None
    names = [t.function.name for t in body.tools]
    for i, tool in enumerate(body.tools):
        if names.index(tool.function.name) != i:
            raise ConfigError(f"tools[{i}].function.name: {tool.function.name!r} is given twice",
                              f"tools[{i}].function.name")
        check_schema(tool.function.parameters, f"tools[{i}].function.parameters")
    choice = body.tool_choice
    if choice is None or choice in ("auto", "none"):
        forced = None
    elif choice == "required":
        forced = tuple(names)
    else:
        if choice.function.name not in names:
            raise ConfigError(f"tool_choice.function.name: {choice.function.name!r} is not one of the request's "
                              "tools", "tool_choice.function.name")
        forced = (choice.function.name,)
    return [t.model_dump(exclude_unset=True) for t in body.tools], forced


def check_schema(schema, field: str, root_object: bool = True) -> None:
    """A JSON schema from a request, bounded before anything compiles or applies it: size, depth,
    `$ref` only inside it, no `patternProperties`, valid as a JSON schema (`root_object`: of an
    object, as tool parameters are). ConfigErrors name `field`."""
    if schema is None:
        return
    if not isinstance(schema, dict):
        raise ConfigError(f"{field}: a JSON schema must be an object", field)
    text = json.dumps(schema)
    if len(text) > MAX_SCHEMA_BYTES:
        raise ConfigError(f"{field}: larger than {MAX_SCHEMA_BYTES} bytes", field)
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        raise ConfigError(f"{field}: nested deeper than {MAX_SCHEMA_DEPTH} levels", field)
    if root_object and schema.get("type", "object") != "object":
        raise ConfigError(f"{field}: must be the JSON schema of an object (type \"object\")", field)
    if any(not ref.startswith("#") for ref in _refs(schema)):
        raise ConfigError(f"{field}: $ref may only point inside the schema (\"#/...\")", field)
    if "patternProperties" in _keys(schema):  # jsonschema matches those with `re`, unbounded
        raise ConfigError(f"{field}: patternProperties is not supported", field)
    from jsonschema.exceptions import SchemaError

    try:
        _validator_class().check_schema(schema)
    except SchemaError as exc:
        raise ConfigError(f"{field}: not a valid JSON schema: {exc.message[:200]}", field) from None


def _depth(x, level: int = 0) -> int:
    if level > MAX_SCHEMA_DEPTH:
        return level
    if isinstance(x, dict):
        return max((_depth(v, level + 1) for v in x.values()), default=level)
    if isinstance(x, list):
        return max((_depth(v, level + 1) for v in x), default=level)
    return level


def _keys(x) -> set:
    if isinstance(x, dict):
        return set(x).union(*(_keys(v) for v in x.values()))
    if isinstance(x, list):
        return set().union(*(_keys(v) for v in x))
    return set()


def _refs(x):
    if isinstance(x, dict):
        for k, v in x.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from _refs(v)
    elif isinstance(x, list):
        for v in x:
            yield from _refs(v)


def messages(given: list[dict]) -> list[dict]:
    """Messages as the template gets them: an assistant's calls with their arguments as objects
    (the training data path's own conversion), a tool message with the call it answers."""
    from ..data.formats import Invalid, tool_calls_of

    out = []
    for i, m in enumerate(given):
        if m.get("tool_calls"):
            m = dict(m)
            try:
                m["tool_calls"] = tool_calls_of(m["tool_calls"], f"messages[{i}]")
            except Invalid as exc:
                raise ConfigError(str(exc), f"messages[{i}].tool_calls") from None
        out.append(m)
    return out


def render(template, req) -> str:
    """The prompt text of a request, with its tools: the one render both engines use. Sets
    `req.call_format` where the request has tools."""
    if req.tools:
        fmt = template.tool_calls
        if not isinstance(fmt, CallFormat):
            raise ConfigError(f"tools: model {req.model!r}'s chat template cannot carry tool calls ({fmt}); fine-tune "
                              "it with a template that does, e.g. --template examples/tools/chatml_tools.jinja", "tools")
        req.call_format = fmt
    return template.render(req.messages, req.tools or None, add_generation_prompt=True)


def constraint(req, tokenizer, stop_ids):
    """The grammar a forced call must follow (constrain.Constraint), or None when not forced."""
    if not req.forced:
        return None
    from ..constrain import Constraint

    grammar = call_grammar(req, tokenizer, req.forced)
    return Constraint.from_lark(grammar, tokenizer, stop_ids, "tools" if len(req.forced) > 1 else "tool_choice")


def call_grammar(req, tokenizer, names) -> str:
    """The lark grammar (rule `start`) of a turn of calls to the functions `names`, as the template
    writes them, each call's arguments held to its tool's schema."""
    special = {t.content: i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
    return req.call_format.lark(_schemas(req, names), req.parallel_tool_calls, special)


def call_gbnf(req, names, special: dict[str, int], json_rule) -> tuple[str, list[str]]:
    """The same turn in llama.cpp's grammar language: (expression, rules); `json_rule(schema, name)`
    writes a schema's rules (serve/structured.py)."""
    return req.call_format.gbnf(_schemas(req, names), req.parallel_tool_calls, special, json_rule)


def _schemas(req, names) -> dict[str, dict]:
    return {t["function"]["name"]: t["function"].get("parameters") or {"type": "object"}
            for t in req.tools if t["function"]["name"] in names}


# -- answer ----------------------------------------------------------------------------------------
def answer(gen, req, tokenizer) -> tuple[dict, str, list[dict]]:
    """(message, finish_reason, warnings) of a generation."""
    message = {"role": "assistant", "content": gen.text}
    if not req.tools or req.call_format is None or req.tool_choice == "none":
        return message, gen.finish_reason, []
    raw = tokenizer.decode(gen.token_ids, skip_special_tokens=False)
    for s in req.stop or []:
        if s in raw:
            raw = raw[: raw.index(s)]
    parsed = req.call_format.parse(raw)
    if parsed is None:
        return message, gen.finish_reason, ([_warning("no_tool_call", "the answer holds no tool call")]
                                            if req.forced else [])
    if parsed.error:
        return message, gen.finish_reason, [_warning("unreadable_tool_call", parsed.error)]
    warnings = []
    calls = parsed.calls
    if not req.parallel_tool_calls and len(calls) > 1:
        warnings.append(_warning("tool_calls_dropped", f"parallel_tool_calls is false: {len(calls) - 1} call(s) after "
                                                       "the first were dropped"))
        calls = calls[:1]
    problems = [p for p in (_problem(c, req) for c in calls) if p]
    if problems:
        return message, gen.finish_reason, warnings + problems
    content = _without_specials(parsed.content, tokenizer).strip() or None
    message = {"role": "assistant", "content": content, "tool_calls": [{
        "id": c.id or f"call_{secrets.token_hex(12)}", "type": "function",
        "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}} for c in calls]}
    return message, "tool_calls", warnings


def _problem(call: Call, req) -> dict | None:
    tools = {t["function"]["name"]: t["function"] for t in req.tools}
    if call.name not in tools or (req.forced and call.name not in req.forced):
        return _warning("unknown_tool", f"the answer calls {call.name!r}, which is not one of the request's tools")
    if not isinstance(call.arguments, dict):
        return _warning("invalid_tool_arguments", f"the arguments of the call to {call.name!r} are not a JSON object")
    schema = tools[call.name].get("parameters")
    if schema:
        error = _first_error(schema, call.arguments)
        if error:
            return _warning("invalid_tool_arguments", f"the arguments of the call to {call.name!r} do not match its "
                                                      f"schema: {error}")
    return None


def _first_error(schema: dict, instance) -> str | None:
    try:
        error = next(iter(_validator_class()(schema).iter_errors(instance)), None)
    except _RegexTimeout:
        return "a pattern of the schema took too long to match"
    except Exception as exc:  # noqa: BLE001 - a schema jsonschema cannot apply: the call is not trusted
        return f"the schema cannot be applied ({type(exc).__name__})"
    if error is None:
        return None
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"{where.lstrip('.') or 'arguments'}: {error.message[:200]}"


def _warning(code: str, message: str) -> dict:
    return {"code": code, "message": message}


def _without_specials(text: str, tokenizer) -> str:
    for token in getattr(tokenizer, "all_special_tokens", []):
        text = text.replace(token, "")
    return text


# -- streaming ---------------------------------------------------------------------------------------
def held_from(text: str, fmt: CallFormat) -> int:
    """Where a stream must stop sending text: where a call begins, or may be beginning, at the end."""
    anchor = fmt.anchor
    k = text.find(anchor)
    if k >= 0:
        return k
    for n in range(min(len(anchor) - 1, len(text)), 0, -1):
        if text.endswith(anchor[:n]):
            return len(text) - n
    return len(text)


def visible(text: str, tokenizer) -> str:
    return _without_specials(text, tokenizer)


def call_deltas(message: dict) -> list[dict]:
    """The `delta.tool_calls` of a stream: every call whole, with its index."""
    return [{"index": i} | c for i, c in enumerate(message["tool_calls"])]


# -- JSON schema validation with bounded regular expressions ------------------------------------------
class _RegexTimeout(Exception):
    pass


_VALIDATOR = None


def _validator_class():
    """Draft 2020-12 whose `pattern` runs with a time limit (a schema from the network must not hang
    the server on a catastrophic expression; `patternProperties` is refused in `check`)."""
    global _VALIDATOR
    if _VALIDATOR is None:
        from jsonschema import Draft202012Validator, validators
        from jsonschema.exceptions import ValidationError

        def search(pattern: str, text: str) -> bool:
            import regex

            try:
                return regex.search(pattern, text, timeout=REGEX_SECONDS) is not None
            except TimeoutError:
                raise _RegexTimeout from None
            except regex.error:
                return False

        def pattern(validator, patrn, instance, schema):
            if validator.is_type(instance, "string") and not search(patrn, instance):
                yield ValidationError(f"{instance!r} does not match {patrn!r}")

        _VALIDATOR = validators.extend(Draft202012Validator, {"pattern": pattern})
    return _VALIDATOR
