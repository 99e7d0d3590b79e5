"""Chat templates compiled once and rendered like transformers renders them.

We render templates ourselves (same Jinja sandbox, filters and globals as transformers) because
loss masks need many renders per example and transformers' per-call overhead dominates a
100,000-line data check.

Before the first render a template is probed once with a plain user/assistant conversation, to
learn two facts the masks depend on:
- `content_parts`: whether it renders message content given as a string or only as a list of
  OpenAI text parts (SmolVLM / Idefics3 loop over parts and render a string as nothing). Messages
  are handed over in the shape it renders.
- `end_marker`: the text that closes an assistant turn (`<|im_end|>`, `<|eot_id|>`, or
  `<|END_RESPONSE|><|END_OF_TURN_TOKEN|>` for Command-A), cut after the first end-of-turn token
  even where the template always appends the next reply's header. "" when turns end without a
  known end-of-turn token (then tunery appends EOS, see render.py).
A message's `reasoning_content` is also handed over as `thinking`, the name GPT-OSS reads.
"""

import json
import re
from datetime import datetime
from functools import cached_property
from pathlib import Path

from ..errors import TemplateError

# `{% generation %}` markers only matter to transformers' own mask extraction; ours derives
# masks from prefixes, so they are dropped before compiling.
_GENERATION_TAGS = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")

# Tokens that end a turn in the model families we know; the tokenizer's EOS is one too.
END_OF_TURN_TOKENS = (
    "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|END_OF_TURN_TOKEN|>", "<|end_of_text|>",
    "<｜end▁of▁sentence｜>", "<end_of_utterance>", "<|return|>", "<|call|>", "<|endoftext|>", "</s>",
)

_PROBE_QUESTION, _PROBE_ANSWER = "tunery probe question", "tunery probe answer"


def _raise(message):
    from jinja2.exceptions import TemplateError as JinjaTemplateError

    raise JinjaTemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class ChatTemplate:
    def __init__(self, source: str, special_tokens: dict[str, str] | None = None, origin: str = "template",
                 from_model: bool = False):
        from jinja2.exceptions import TemplateSyntaxError
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.source = source
        self.origin = origin
        self.from_model = from_model  # the model's own template, not one the user passed
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(_GENERATION_TAGS.sub("", source))
        except TemplateSyntaxError as exc:
            raise TemplateError(f"{origin}:{exc.lineno}: chat template syntax error: {exc.message}") from None
        self._special = dict(special_tokens or {})

    def render(self, messages: list[dict], tools: list[dict] | None = None, add_generation_prompt: bool = False) -> str:
        return self._render(self._prepare(messages), tools, add_generation_prompt)

    def _render(self, messages, tools=None, add_generation_prompt=False) -> str:
        return self._template.render(
            messages=messages, tools=tools, add_generation_prompt=add_generation_prompt, **self._special
        )

    def _prepare(self, messages: list[dict]) -> list[dict]:
        parts = self._shape[0]
        if not parts and not any("reasoning_content" in m for m in messages):
            return messages
        out = []
        for m in messages:
            m = dict(m)
            if parts and isinstance(m.get("content"), str):
                m["content"] = [{"type": "text", "text": m["content"]}] if m["content"] else []
            if "reasoning_content" in m:
                m.setdefault("thinking", m["reasoning_content"])
            out.append(m)
        return out

    @property
    def content_parts(self) -> bool:
        return self._shape[0]

    @property
    def end_marker(self) -> str:
        """The text closing an assistant turn ("" if none); TemplateError if no plain conversation renders."""
        marker = self._shape[1]
        if marker is None:
            raise TemplateError(f"{self.origin}: the chat template renders no plain user/assistant conversation, "
                                f"so its turns cannot be found: {self._shape[2]}")
        return marker

    @property
    def stop_strings(self) -> tuple[str, ...]:
        eos = self._special.get("eos_token")
        return END_OF_TURN_TOKENS + ((eos,) if eos and eos not in END_OF_TURN_TOKENS else ())

    @cached_property
    def tool_calls(self):
        """How the template writes tool calls (a `tool_calls.CallFormat`), or the `Unsupported`
        exception saying why it cannot carry them; probed once."""
        from .tool_calls import CallFormat, Unsupported

        try:
            return CallFormat.probe(self)
        except Unsupported as exc:
            return exc

    @cached_property
    def _shape(self) -> tuple[bool, str | None, str]:
        """(content as parts?, end marker or None if the probes failed, why they failed)."""
        why = ""
        for system in ([], [{"role": "system", "content": "tunery probe system"}]):
            for parts in (False, True):
                def msg(role, text):
                    return {"role": role, "content": [{"type": "text", "text": text}] if parts else text}

                try:
                    last = self._render(system + [msg("user", _PROBE_QUESTION), msg("assistant", _PROBE_ANSWER)])
                except Exception as exc:  # templates raise_exception() on shapes they reject
                    why = str(exc)
                    continue
                if _PROBE_ANSWER not in last or f"'text': '{_PROBE_ANSWER}'" in last:  # not a list's repr
                    why = "the assistant's content does not appear in its render"
                    continue
                return parts, self._marker(last), ""
        return False, None, why

    def _marker(self, last: str) -> str:
        """The text after the answer up to and including the first end-of-turn token; "" if none."""
        after = last[last.rindex(_PROBE_ANSWER) + len(_PROBE_ANSWER):]
        hits = [(after.find(s), s) for s in self.stop_strings if s in after]
        if not hits:
            return ""
        pos, stop = min(hits)
        return after[: pos + len(stop)]


def load_template(tokenizer, template: str | Path | None = None) -> ChatTemplate | None:
    """The user's template (a .jinja file) if given, else the tokenizer's own; None if neither."""
    special = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    if template:
        if "{%" in str(template) or "{{" in str(template):  # the template itself, not a file name
            return ChatTemplate(str(template), special)
        path = Path(template)
        if path.is_file():
            return ChatTemplate(path.read_text(encoding="utf-8"), special, origin=str(path))
        raise TemplateError(f"chat template file {template} does not exist")
    source = getattr(tokenizer, "chat_template", None)
    if isinstance(source, dict):  # several named templates: the default one is what chat uses
        source = source.get("default")
    return ChatTemplate(source, special, origin="the model's chat template", from_model=True) if source else None
