"""Dataset formats, detected per file, all normalised into `Conversation`.

  chat        {"messages": [{"role", "content", "weight"?, "tool_calls"?, "reasoning_content"?}], "tools"?}  (OpenAI)
  completion  {"prompt", "completion"}
  alpaca      {"instruction", "input"?, "output", "system"?}
  sharegpt    {"conversations": [{"from", "value"}], "system"?}
  text        {"text"}   (no chat template: every token is trained)
  preference  {"prompt", "chosen", "rejected"} (each a string or a message list; without "prompt", the
              messages chosen and rejected share at the start are the prompt), or the hosted API's
              {"input": {"messages", "tools"?}, "preferred_output": [...], "non_preferred_output": [...]}

A preference row becomes one Conversation: the prompt then the chosen answer in `messages`, the
rejected answer in `rejected`; only the answers carry loss (the prompt's assistant turns have weight 0).
"""

import json

from ..errors import DataError
from .readers import RowError
from .types import Conversation, Issue

FORMATS = ("chat", "completion", "alpaca", "sharegpt", "text", "preference")
ROLES = {"system", "user", "assistant", "tool"}
ROLE_ALIASES = {"developer": "system"}  # the OpenAI API's newer name for system
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant",
    "assistant": "assistant", "model": "assistant", "bing": "assistant", "chatgpt": "assistant",
    "function_call": "assistant", "observation": "tool", "tool": "tool",
}


class Invalid(Exception):
    """One example is unusable; carries the doctor's error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def detect_format(row: dict) -> str | None:
    if "preferred_output" in row or "non_preferred_output" in row or ("chosen" in row and "rejected" in row):
        return "preference"
    if "messages" in row:
        return "chat"
    if "conversations" in row:
        return "sharegpt"
    if "prompt" in row and "completion" in row:
        return "completion"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "text" in row:
        return "text"
    return None


def detect_file_format(rows: list[tuple[int, object]], where: str) -> str:
    """The format of a file, from its first objects; a file must hold one format throughout."""
    seen: dict[str, int] = {}
    for _, row in rows:
        if isinstance(row, dict):
            fmt = detect_format(row)
            if fmt:
                seen[fmt] = seen.get(fmt, 0) + 1
    if not seen:
        if not any(isinstance(row, dict) for _, row in rows):
            return "chat"  # no object to go by (only broken rows): report each row's own error
        raise DataError(
            f"{where}: cannot tell the dataset format: expected rows with 'messages' (chat), "
            "'prompt'+'completion', 'instruction'+'output' (alpaca), 'conversations' (sharegpt), "
            "'text', or 'chosen'+'rejected' / 'preferred_output' (preference pairs); pass --format to say which"
        )
    return max(seen, key=seen.get)


def rows_with_format(path, fmt: str = "auto", task=None):
    """(format, rows) for a file: `auto` is detected from its first rows, which stay in the stream.
    `task` (progress.Task): how far into the file the rows are."""
    import itertools

    from .readers import read_rows

    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(f"format must be auto or one of {', '.join(FORMATS)}, got {fmt!r}")
    rows = read_rows(path, task)
    if fmt != "auto":
        return fmt, rows
    head = list(itertools.islice(rows, 64))
    return (detect_file_format(head, str(path)) if head else "chat"), itertools.chain(head, rows)


def normalise(line: int, row: object, fmt: str) -> tuple[Conversation | None, list[Issue]]:
    """Return the conversation, or None with the issues that make it unusable."""
    if isinstance(row, RowError):
        return None, [Issue(line, row.code, row.message)]
    if not isinstance(row, dict):
        return None, [Issue(line, "not_object", f"expected a JSON object, got {_kind(row)}")]
    try:
        conv = _NORMALISERS[fmt](row)
    except Invalid as exc:
        return None, [Issue(line, exc.code, str(exc))]
    conv.line = line
    return conv, []


def _kind(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _text(value, field: str, *, allow_empty: bool = False) -> str:
    if value is None:
        raise Invalid("missing_content", f"'{field}' is missing")
    if isinstance(value, list):  # OpenAI content parts: keep the text parts
        parts = []
        for part in value:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise Invalid("content_type", f"'{field}' holds a non-text part; only text parts are supported")
            parts.append(part["text"])
        value = "".join(parts)
    if not isinstance(value, str):
        raise Invalid("content_type", f"'{field}' must be a string, got {_kind(value)}")
    if not allow_empty and not value.strip():
        raise Invalid("empty_content", f"'{field}' is empty")
    return value


def _chat(row: dict, answer: bool = True, where: str = "messages") -> Conversation:
    """`answer`: the conversation must hold an assistant turn (not so for a preference prompt)."""
    if row.get("messages") is None:
        raise Invalid("missing_messages", f"missing '{where}'")
    messages = row["messages"]
    if not isinstance(messages, list):
        raise Invalid("messages_not_list", f"'{where}' must be a list, got {_kind(messages)}")
    conv = Conversation(tools=_tools(row.get("tools")))
    name = where
    for i, msg in enumerate(messages):
        where = f"{name}[{i}]"
        if not isinstance(msg, dict):
            raise Invalid("not_object", f"{where} must be an object, got {_kind(msg)}")
        role = msg.get("role")
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if not isinstance(role, str) or role not in ROLES:
            raise Invalid("unknown_role", f"{where}.role {msg.get('role')!r} is not one of system, user, assistant, tool")
        out = {"role": role}
        tool_calls = msg.get("tool_calls")
        if tool_calls:
            out["tool_calls"] = tool_calls_of(tool_calls, where)
        content = msg.get("content")
        if tool_calls and content is None:
            content = ""  # an assistant turn that only calls tools may have no text
        out["content"] = _text(content, f"{where}.content", allow_empty=bool(tool_calls))
        reasoning = _reasoning(msg, where) if role == "assistant" else None
        if reasoning:
            out["reasoning_content"] = reasoning
        for key in ("name", "tool_call_id"):
            if key in msg:
                out[key] = msg[key]
        conv.messages.append(out)
        conv.weights.append(_weight(msg, where, role))
    return _finish(conv) if answer else conv


REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")  # vLLM/DeepSeek, OpenRouter, GPT-OSS names


def _reasoning(msg: dict, where: str) -> str | None:
    """An assistant message's reasoning under any of its usual names; templates that render it
    (Qwen 3, GPT-OSS) get it, see ChatTemplate."""
    given = [k for k in REASONING_KEYS if msg.get(k) is not None]
    if len(given) > 1:
        raise Invalid("content_type", f"{where} has both {given[0]!r} and {given[1]!r}; give the reasoning once")
    return _text(msg[given[0]], f"{where}.{given[0]}", allow_empty=True) if given else None


def _weight(msg: dict, where: str, role: str) -> float | None:
    if "weight" not in msg or msg["weight"] is None:
        return None
    w = msg["weight"]
    if w not in (0, 1) or isinstance(w, bool):
        raise Invalid("bad_weight", f"{where}.weight must be 0 or 1, got {w!r}")
    if role != "assistant":
        raise Invalid("bad_weight", f"{where}.weight is only meaningful on assistant messages")
    return float(w)


def tool_calls_of(calls, where: str) -> list[dict]:
    """An assistant message's `tool_calls` (OpenAI shape, arguments a JSON string or an object) as chat
    templates take them (arguments an object); Invalid naming `where` otherwise. Training data and the
    server's chat requests both go through here."""
    if not isinstance(calls, list):
        raise Invalid("content_type", f"{where}.tool_calls must be a list")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise Invalid("bad_tool_call", f"{where}.tool_calls[{j}] needs function.name")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError as exc:
                raise Invalid("bad_tool_arguments",
                              f"{where}.tool_calls[{j}].function.arguments is not valid JSON: {exc.msg}") from None
        if not isinstance(args, dict):
            raise Invalid("bad_tool_arguments", f"{where}.tool_calls[{j}].function.arguments must be a JSON object")
        # Chat templates expect arguments as a mapping (they serialise it themselves).
        out.append({"type": "function", "id": call.get("id"), "function": {"name": fn["name"], "arguments": args}})
    return out


def _tools(tools) -> list[dict] | None:
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise Invalid("content_type", "'tools' must be a list of objects")
    return tools


def _finish(conv: Conversation) -> Conversation:
    if not any(m["role"] == "assistant" for m in conv.messages):
        raise Invalid("no_assistant", "no assistant turn to learn from")
    return conv


def _completion(row: dict) -> Conversation:
    prompt = _text(row.get("prompt"), "prompt")
    completion = _text(row.get("completion"), "completion")
    return Conversation(messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}],
                        weights=[None, None])


def _alpaca(row: dict) -> Conversation:
    instruction = _text(row.get("instruction"), "instruction")
    extra = row.get("input")
    if extra not in (None, ""):
        instruction = f"{instruction}\n\n{_text(extra, 'input')}"
    messages = [{"role": "user", "content": instruction},
                {"role": "assistant", "content": _text(row.get("output"), "output")}]
    if row.get("system"):
        messages.insert(0, {"role": "system", "content": _text(row["system"], "system")})
    return Conversation(messages=messages, weights=[None] * len(messages))


def _sharegpt(row: dict) -> Conversation:
    turns = row.get("conversations")
    if turns is None:
        raise Invalid("missing_messages", "missing 'conversations'")
    if not isinstance(turns, list):
        raise Invalid("messages_not_list", f"'conversations' must be a list, got {_kind(turns)}")
    conv = Conversation()
    if row.get("system"):
        conv.messages.append({"role": "system", "content": _text(row["system"], "system")})
        conv.weights.append(None)
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise Invalid("not_object", f"{where} must be an object, got {_kind(turn)}")
        role = SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise Invalid("unknown_role", f"{where}.from {turn.get('from')!r} is not a known speaker")
        conv.messages.append({"role": role, "content": _text(turn.get("value"), f"{where}.value")})
        conv.weights.append(_weight(turn, where, role))
    return _finish(conv)


def _plain_text(row: dict) -> Conversation:
    return Conversation(text=_text(row.get("text"), "text"))


def _preference(row: dict) -> Conversation:
    if "input" in row or "preferred_output" in row or "non_preferred_output" in row:  # the hosted API's shape
        given = row.get("input")
        if not isinstance(given, dict):
            raise Invalid("missing_prompt", "'input' must be an object with 'messages'")
        prompt = _chat({"messages": given.get("messages"), "tools": given.get("tools")}, answer=False)
        chosen = _answer(row.get("preferred_output"), "preferred_output")
        rejected = _answer(row.get("non_preferred_output"), "non_preferred_output")
    elif "prompt" in row:
        p = row["prompt"]
        prompt = (_chat({"messages": p, "tools": row.get("tools")}, answer=False) if isinstance(p, list)
                  else Conversation(messages=[{"role": "user", "content": _text(p, "prompt")}], weights=[None],
                                    tools=_tools(row.get("tools"))))
        chosen, rejected = _answer(row.get("chosen"), "chosen"), _answer(row.get("rejected"), "rejected")
    else:  # chosen and rejected are whole conversations: what they share at the start is the prompt
        both = [_chat({"messages": row.get(k), "tools": row.get("tools")}, answer=False, where=k)
                for k in ("chosen", "rejected")]
        shared = 0
        for a, b in zip(both[0].messages, both[1].messages):
            if a != b:
                break
            shared += 1
        while shared and both[0].messages[shared - 1]["role"] == "assistant":  # an answer starts after the prompt
            shared -= 1
        if not shared:
            raise Invalid("missing_prompt", "'chosen' and 'rejected' share no prompt: give 'prompt', or let both "
                                            "conversations start with the same messages")
        prompt = Conversation(messages=both[0].messages[:shared], weights=[None] * shared, tools=both[0].tools)
        chosen = _answer(both[0].messages[shared:], "chosen", normalised=True)
        rejected = _answer(both[1].messages[shared:], "rejected", normalised=True)
    if prompt.messages and prompt.messages[-1]["role"] == "assistant":
        raise Invalid("bad_prompt", "the prompt ends with an assistant message: the answers must follow a user "
                                    "(or tool) message")
    return Conversation(messages=prompt.messages + chosen,
                        weights=[0.0 if m["role"] == "assistant" else None for m in prompt.messages] + [1.0] * len(chosen),
                        tools=prompt.tools, rejected=rejected)


def _answer(value, field: str, *, normalised: bool = False) -> list[dict]:
    """A preference answer: a string, or a list of assistant messages (tool calls allowed)."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": _text(value, field)}]
    if value is None:
        raise Invalid("missing_answer", f"'{field}' is missing")
    if not isinstance(value, list) or not value:
        raise Invalid("missing_answer", f"'{field}' must be a string or a non-empty list of assistant messages")
    msgs = value if normalised else _chat({"messages": value}, answer=False, where=field).messages
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            raise Invalid("bad_answer", f"{field}[{i}].role must be assistant, got {m['role']!r}")
    return msgs


_NORMALISERS = {"chat": _chat, "completion": _completion, "alpaca": _alpaca, "sharegpt": _sharegpt, "text": _plain_text,
                "preference": _preference}
