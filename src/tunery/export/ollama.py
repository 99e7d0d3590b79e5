"""Ollama's side of an export: the model's chat template as an Ollama Go template, proven to render
as the Jinja one does, and the Modelfile that carries it.

Ollama cannot run Jinja; a Modelfile's TEMPLATE is Go `text/template`. The Jinja source is not
translated: `FAMILIES` holds hand-written Go templates in the style of Ollama's own, and
`go_template` picks the one that renders every probe conversation byte for byte as the Jinja
template does, the Go side rendered for real by `gorender/main.go` (built once with `go build`
into TUNERY_HOME/gorender/<sha256 of main.go>/). No family matching is an error, never a near miss.

"As Ollama renders it" means what Ollama's server and template package do:
- The template sees `.Messages` (consecutive messages of one role merged, as Ollama's `collate`
  does), `.System` (the system messages joined) and no tools.
- A request without a system message gets the Modelfile's SYSTEM prepended. A Jinja template that
  writes a default system prompt when there is none (SmolLM2, Qwen 2.5) is matched through that:
  the default is returned as `system`, and the no-system probes are rendered on the Go side with it
  prepended. The default is read off two Jinja renders: with a system message S the prompt is
  A + S + B, without one A + D + B; D is the default.
- BOS: llama.cpp adds it when the GGUF says `add_bos_token`, which its converter takes from the
  tokenizer. So where the tokenizer adds BOS when encoding, the Jinja render must start with it and
  the rest must equal the Go render; the Go templates never write BOS.
- A conversation ending with the user's message ends with the assistant's header
  (add_generation_prompt); one ending with an assistant message is continued, its turn left open
  (transformers' continue_final_message).

Limits, stated rather than papered over: probe texts have no whitespace around them, since Ollama's
Go templates cannot `trim` as Llama 3's and Gemma's Jinja do; a probe the Jinja template rejects
(Gemma 2 refuses system messages) has no reference and is not counted in `checked`; tools are not
translated; a template that writes today's date (strftime_now) is refused.
"""

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import TuneryError
from ..home import tunery_home

GORENDER = Path(__file__).parent / "gorender" / "main.go"
GO_MISSING = "Go is needed to check the Ollama template (Debian: apt-get install golang-go)"
_USE_GGUF = "use --format gguf and give llama.cpp the template inside the GGUF"


@dataclass(frozen=True)
class OllamaTemplate:
    family: str  # the FAMILIES entry that matched
    text: str  # the Go template: the Modelfile's TEMPLATE
    stops: list[str]  # the family's turn markers that are tokens, then EOS
    system: str | None  # the default system prompt the Jinja template writes: the Modelfile's SYSTEM
    checked: int  # probe conversations rendered by both and found byte-identical


# Each loop opens like Ollama's own templates: `$last` marks the final message, after which an
# assistant turn stays open and any other turn is followed by the assistant's header.
_LOOP = "{{- range $i, $_ := .Messages }}\n{{- $last := eq (len (slice $.Messages $i)) 1 }}"
# The first message, when it is a system message, kept aside (the Jinja templates that place the
# system prompt somewhere special read messages[0] only).
_FIRST_SYSTEM = ('{{- $system := "" }}{{- $hasSystem := false }}\n'
                 '{{- if and .Messages (eq (index .Messages 0).Role "system") }}'
                 '{{ $system = (index .Messages 0).Content }}{{ $hasSystem = true }}{{ end }}')
_NOT_FIRST_SYSTEM = '{{- if or (ne $i 0) (ne .Role "system") }}'

# name -> (Go template, the turn markers it writes that should stop generation)
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "chatml": (_LOOP + """<|im_start|>{{ .Role }}
{{ .Content }}{{ if or (ne .Role "assistant") (not $last) }}<|im_end|>
{{ end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}""", ("<|im_end|>", "<|im_start|>")),
    "llama3": (_LOOP + """<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}{{ if or (ne .Role "assistant") (not $last) }}<|eot_id|>{{ end }}
{{- if and $last (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}""", ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>")),
    # Llama 3.1 always opens with a system turn carrying a fixed date (26 Jul 2024 is in the
    # template itself, not today's date).
    "llama3_1": (_FIRST_SYSTEM + """<|start_header_id|>system<|end_header_id|>

Cutting Knowledge Date: December 2023
Today Date: 26 Jul 2024

{{ $system }}<|eot_id|>
""" + _LOOP + "\n" + _NOT_FIRST_SYSTEM + """<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}{{ if or (ne .Role "assistant") (not $last) }}<|eot_id|>{{ end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}""", ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>")),
    # Gemma 3 puts the system prompt at the head of the first user turn; Gemma 2 has no system role.
    "gemma": (_FIRST_SYSTEM + "\n" + _LOOP + "\n" + _NOT_FIRST_SYSTEM + """<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}
{{ if $hasSystem }}{{ $system }}

{{ $hasSystem = false }}{{ end }}{{ .Content }}{{ if or (ne .Role "assistant") (not $last) }}<end_of_turn>
{{ end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<start_of_turn>model
{{ end }}
{{- end }}""", ("<end_of_turn>", "<start_of_turn>")),
    "phi3": (_LOOP + """
{{- if or (eq .Role "system") (eq .Role "user") (eq .Role "assistant") }}<|{{ .Role }}|>
{{ .Content }}{{ if or (ne .Role "assistant") (not $last) }}<|end|>
{{ end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<|assistant|>
{{ end }}
{{- end }}""", ("<|end|>", "<|user|>", "<|assistant|>", "<|system|>")),
    # Phi-3.5 drops an empty system message.
    "phi3_5": (_LOOP + """
{{- if or (and (eq .Role "system") .Content) (eq .Role "user") (eq .Role "assistant") }}<|{{ .Role }}|>
{{ .Content }}{{ if or (ne .Role "assistant") (not $last) }}<|end|>
{{ end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<|assistant|>
{{ end }}
{{- end }}""", ("<|end|>", "<|user|>", "<|assistant|>", "<|system|>")),
    # Mistral v2/v3: the system prompt goes with the last message, when that is the user's.
    "mistral": (_FIRST_SYSTEM + "\n" + _LOOP + """
{{- if and (eq $i 0) $hasSystem }}
{{- else if eq .Role "user" }}[INST] {{ if and $last $hasSystem }}{{ $system }}

{{ end }}{{ .Content }}[/INST]
{{- else if eq .Role "assistant" }} {{ .Content }}{{ if not $last }}</s>{{ end }}
{{- end }}
{{- end }}""", ("[INST]", "[/INST]")),
    # Mistral v1: the system prompt goes with the first user message.
    "mistral_v1": (_FIRST_SYSTEM + "\n" + _LOOP + """
{{- if and (eq $i 0) $hasSystem }}
{{- else if eq .Role "user" }} [INST] {{ if and (eq $i 1) $hasSystem }}{{ $system }}

{{ end }}{{ .Content }} [/INST]
{{- else if eq .Role "assistant" }} {{ .Content }}{{ if not $last }}</s>{{ end }}
{{- end }}
{{- end }}""", ("[INST]", "[/INST]")),
}

_SYSTEM_PROBE = "You answer in one short sentence."
_S = {"role": "system", "content": _SYSTEM_PROBE}
_Q1 = {"role": "user", "content": 'What is the capital of "France" & <Spain>? Ελλάδα?'}
_A1 = {"role": "assistant", "content": "Paris; Madrid for Spain."}
_Q2 = {"role": "user", "content": "And of Italy?"}
PROBES = (
    [_S, _Q1],
    [_Q1],
    [_Q1, _A1, _Q2],
    [_S, _Q1, _A1, _Q2],
    [{"role": "system", "content": ""}, _Q1],
    [_Q1, _A1],  # continued: the assistant's turn stays open
)


def go_template(template, tokenizer) -> OllamaTemplate:
    """The FAMILIES template that renders every probe as `template` (a ChatTemplate) does, checked
    with Go; TuneryError if none does."""
    if template is None:
        raise TuneryError(f"the model has no chat template to give Ollama; {_USE_GGUF}")
    if "strftime_now" in template.source:
        raise TuneryError(f"chat template writes today's date (strftime_now), which an Ollama template cannot "
                          f"write the same way; {_USE_GGUF}")
    references = [_jinja(template, messages) for messages in PROBES]
    for messages, reference in zip(PROBES, references):
        if reference is None and messages[0]["role"] != "system":
            raise TuneryError(f"chat template rejects a plain user/assistant conversation; {_USE_GGUF}")
    bos = _runtime_bos(tokenizer)
    if bos is not None:
        if not all(r.startswith(bos) for r in references if r is not None):
            raise TuneryError(f"the tokenizer adds {bos} when encoding, so Ollama's runtime will, but the chat "
                              f"template does not start with it; {_USE_GGUF}")
        references = [r[len(bos):] if r is not None else None for r in references]
    system = _default_system(references[0], references[1])  # PROBES[0] is [system, user], [1] is [user]
    probes = [(messages, r) for messages, r in zip(PROBES, references) if r is not None]
    cases = [ollama_values(messages, system) for messages, _ in probes]
    for family, (text, markers) in FAMILIES.items():
        if go_render(text, cases, family) == [r for _, r in probes]:
            return OllamaTemplate(family, text, _stops(markers, tokenizer), system, len(probes))
    raise TuneryError(f"chat template is not one Ollama can be given exactly (tried: {', '.join(FAMILIES)}); "
                      f"{_USE_GGUF}")


def ollama_render(tmpl: OllamaTemplate, conversations: list[list[dict]]) -> list[str]:
    """What Ollama renders for each conversation (a chat request's messages) given this template and
    its SYSTEM, without the BOS the runtime adds."""
    return go_render(tmpl.text, [ollama_values(m, tmpl.system) for m in conversations], tmpl.family)


def ollama_values(messages: list[dict], system: str | None = None) -> dict:
    """The values Ollama's chat handler gives a template: the Modelfile's SYSTEM prepended when the
    request has no system message, then Ollama's `collate`."""
    if system is not None and messages and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}] + messages
    collated = []
    for m in messages:
        if collated and collated[-1]["Role"] == m["role"] and m["role"] != "tool":
            collated[-1]["Content"] += "\n\n" + m["content"]
        else:
            collated.append({"Role": m["role"], "Content": m["content"]})
    return {"Messages": collated, "System": "\n\n".join(m["content"] for m in messages if m["role"] == "system")}


def go_render(text: str, cases: list[dict], family: str) -> list[str]:
    """Each case ({"Messages", "System"}) rendered through the Go template `text`, as Ollama does."""
    try:
        proc = subprocess.run([str(_gorender())], input=json.dumps({"template": text, "cases": cases}),
                              capture_output=True, text=True, encoding="utf-8", timeout=60)
    except subprocess.TimeoutExpired:
        raise TuneryError(f"the Ollama template for {family} did not render within 60 s") from None
    if proc.returncode != 0:
        what = {3: "does not parse", 4: "fails to render"}.get(proc.returncode, "fails")
        raise TuneryError(f"the Ollama template for {family} {what}: {_first_line(proc.stderr)}")
    return json.loads(proc.stdout)


def modelfile(gguf_name: str, tmpl: OllamaTemplate, *, parameters: dict | None = None) -> str:
    """The Modelfile importing `gguf_name` (beside it) with the template, its stops and its SYSTEM.

    Ollama's Modelfile has no escapes: a triple-quoted value ends at the first triple quote, a quoted
    one just loses its outer quotes, and characters that are not printable are dropped. So text that
    cannot survive that is refused rather than written differently."""
    if Path(gguf_name).name != gguf_name or not _printable(gguf_name) or gguf_name != gguf_name.strip():
        raise TuneryError(f"GGUF file name {gguf_name!r} must be a plain file name for the Modelfile's FROM")
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{_multiline(tmpl.text, "TEMPLATE")}"""']
    lines += [f"PARAMETER stop {_quoted(stop, 'stop')}" for stop in tmpl.stops]
    for key, value in (parameters or {}).items():
        if not re.fullmatch(r"[A-Za-z0-9_]+", key):
            raise TuneryError(f"Ollama parameter name {key!r}: letters, digits and _ only")
        for v in value if isinstance(value, (list, tuple)) else [value]:
            lines.append(f"PARAMETER {key} {_parameter(v, key)}")
    if tmpl.system is not None:
        lines.append(f'SYSTEM """{_multiline(tmpl.system, "SYSTEM")}"""')
    return "\n".join(lines) + "\n"


def import_command(name: str, folder) -> str:
    """The command that imports the export into Ollama (FROM is resolved beside the Modelfile, so it
    runs from any directory)."""
    if not re.fullmatch(r"([A-Za-z0-9][\w.-]{0,79}/)?[A-Za-z0-9][\w.-]{0,79}(:\w[\w.-]{0,79})?", name, re.ASCII):
        raise TuneryError(f"Ollama model name {name!r}: letters, digits, '_', '-', '.', with an optional "
                          f"namespace/ and :tag")
    return f"ollama create {name} -f {shlex.quote(str(Path(folder) / 'Modelfile'))}"


def _jinja(template, messages: list[dict]) -> str | None:
    """The Jinja render Ollama's must equal; None if the template rejects the conversation."""
    cont = messages[-1]["role"] == "assistant"
    try:
        text = template.render(messages, add_generation_prompt=not cont)
    except Exception:  # templates raise_exception() on conversations they do not take
        return None
    if cont:  # as transformers' continue_final_message: cut after the final message's content
        content = messages[-1]["content"]
        if content not in text:
            return None
        text = text[: text.rindex(content) + len(content)]
    return text


def _runtime_bos(tokenizer) -> str | None:
    """The BOS text llama.cpp will add before the prompt: the tokenizer's BOS if encoding adds it."""
    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    if not bos or bos_id is None:
        return None
    ids = tokenizer("a")["input_ids"]
    return bos if ids and ids[0] == bos_id else None


def _default_system(with_system: str | None, without: str | None) -> str | None:
    """D where the probe with a system message renders as A + S + B and the one without as A + D + B."""
    if with_system is None or without is None or with_system.count(_SYSTEM_PROBE) != 1:
        return None
    a, b = with_system.split(_SYSTEM_PROBE)
    if len(without) > len(a) + len(b) and without.startswith(a) and without.endswith(b):
        return without[len(a): len(without) - len(b)]
    return None


def _stops(markers, tokenizer) -> list[str]:
    vocab = tokenizer.get_vocab()
    stops = [m for m in markers if m in vocab]
    eos = tokenizer.eos_token
    return stops + ([eos] if eos and eos not in stops else [])


def _gorender() -> Path:
    """The built gorender program, built once per version of main.go."""
    try:
        source = GORENDER.read_bytes()
    except OSError:
        raise TuneryError(f"the Go template checker {GORENDER} is missing; reinstall tunery") from None
    binary = tunery_home() / "gorender" / hashlib.sha256(source).hexdigest()[:16] / "gorender"
    if binary.is_file():
        return binary
    go = shutil.which("go")
    if go is None:
        raise TuneryError(GO_MISSING)
    binary.parent.mkdir(parents=True, exist_ok=True)
    # Standard library only, so no module, network or C compiler: GOPATH mode, no cgo, local toolchain.
    env = {**os.environ, "GO111MODULE": "off", "GOFLAGS": "", "CGO_ENABLED": "0", "GOTOOLCHAIN": "local"}
    if not any(k in env for k in ("GOCACHE", "HOME", "XDG_CACHE_HOME")):
        env["GOCACHE"] = str(tunery_home() / "gorender" / "go-build")
    with tempfile.TemporaryDirectory(prefix=".build-", dir=binary.parent) as tmp:
        (Path(tmp) / "main.go").write_bytes(source)
        try:
            proc = subprocess.run([go, "build", "-o", "gorender", "main.go"], cwd=tmp, env=env,
                                  capture_output=True, text=True, timeout=600)
        except OSError as exc:
            raise TuneryError(f"{GO_MISSING}: {exc}") from None
        except subprocess.TimeoutExpired:
            raise TuneryError(f"building the Go template checker {GORENDER} took over 10 minutes") from None
        if proc.returncode != 0:
            raise TuneryError(f"building the Go template checker {GORENDER} failed: {_first_line(proc.stderr)}")
        os.replace(Path(tmp) / "gorender", binary)  # atomic: a reader sees no binary or a whole one
    return binary


def _first_line(text: str) -> str:
    """The first line of a Go error that says something (not `# command-line-arguments`)."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return lines[0] if lines else "(no message)"


def _printable(text: str) -> bool:
    """What Ollama's Modelfile parser keeps on one line (it drops characters Go finds unprintable)."""
    return all(c.isprintable() or c == "\t" for c in text)


def _parameter(value, key: str) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if isinstance(value, (int, float)) else _quoted(str(value), key)


def _multiline(text: str, what: str) -> str:
    if '"""' in text or not all(c.isprintable() or c in "\n\t" for c in text):
        raise TuneryError(f'the {what} contains """ or a character that is not printable, which an Ollama '
                          f"Modelfile cannot hold")
    return text


def _quoted(text: str, what: str) -> str:
    if '"' in text or not text or not _printable(text):
        raise TuneryError(f"Ollama parameter {what}: {text!r} cannot be written in a Modelfile "
                          f"(empty, a quote, or a character that is not printable)")
    return f'"{text}"'
