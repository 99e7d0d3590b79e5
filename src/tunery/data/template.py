"""Chat templates compiled once and rendered like transformers renders them.

We render templates ourselves (same Jinja sandbox, filters and globals as transformers) because
loss masks need many renders per example and transformers' per-call overhead dominates a
100,000-line data check.
"""

import json
import re
from datetime import datetime
from pathlib import Path

from ..errors import TemplateError

# `{% generation %}` markers only matter to transformers' own mask extraction; ours derives
# masks from prefixes, so they are dropped before compiling.
_GENERATION_TAGS = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")


def _raise(message):
    from jinja2.exceptions import TemplateError as JinjaTemplateError

    raise JinjaTemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class ChatTemplate:
    def __init__(self, source: str, special_tokens: dict[str, str] | None = None, origin: str = "template"):
        from jinja2.exceptions import TemplateSyntaxError
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.source = source
        self.origin = origin
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
        return self._template.render(
            messages=messages, tools=tools, add_generation_prompt=add_generation_prompt, **self._special
        )


def load_template(tokenizer, template: str | Path | None = None) -> ChatTemplate | None:
    """The user's template (a .jinja file) if given, else the tokenizer's own; None if neither."""
    special = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    if template:
        path = Path(template)
        if path.is_file():
            return ChatTemplate(path.read_text(encoding="utf-8"), special, origin=str(path))
        if "{%" in str(template) or "{{" in str(template):
            return ChatTemplate(str(template), special)
        raise TemplateError(f"chat template file {template} does not exist")
    source = getattr(tokenizer, "chat_template", None)
    if isinstance(source, dict):  # several named templates: the default one is what chat uses
        source = source.get("default")
    return ChatTemplate(source, special, origin="the model's chat template") if source else None
