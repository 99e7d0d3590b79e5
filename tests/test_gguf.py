"""GGUF exports through llama.cpp's own converter, quantizer and runtime (the `tunery[gguf]` extra):
`make test-gguf`, a lane of its own because the extra builds llama.cpp from source.

One lab per module: the default model imported once, llama.cpp's converter fetched once, a tiny
Llama with the default model's tokenizer (a tokenizer llama.cpp knows) fully fine-tuned until it
answers decisively, and one real LoRA run of the default model."""

import json
import os

import pytest

from clirun import tunery_cli
from conftest import write_jsonl
from tunery.errors import TuneryError

pytestmark = pytest.mark.gguf
llama_cpp = pytest.importorskip("llama_cpp", reason="the gguf extra: make test-gguf installs it")


def rows(n=24):
    return [{"messages": [{"role": "user", "content": f"color {i}"},
                          {"role": "assistant", "content": "the color is blue"}]} for i in range(n)]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunery.export.gguf import converter
    from tunery.models import resolve_model
    from tunery.training import train

    root = tmp_path_factory.mktemp("gguf")
    home = root / "home"
    old = os.environ.get("TUNERY_HOME")
    os.environ["TUNERY_HOME"] = str(home)
    try:
        default = resolve_model("default").path
        converter()
        tiny = root / "tiny"
        tok = AutoTokenizer.from_pretrained(default)
        tok.save_pretrained(tiny)
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, tie_word_embeddings=True)).save_pretrained(tiny)
        data = write_jsonl(root / "d.jsonl", rows())
        run = train(dict(model=str(tiny), data=str(data), out=str(root / "run"), method="full", max_steps=60, lr=3e-3,
                         batch_size=8), progress=False)
        smol = train(dict(model="default", data=str(data), out=str(root / "smol"), max_steps=2, batch_size=4,
                          val_split=0), progress=False)
    finally:
        if old is not None:
            os.environ["TUNERY_HOME"] = old
    return {"home": home, "run": run, "smol": smol, "root": root}


@pytest.fixture
def home(lab, monkeypatch):
    monkeypatch.setenv("TUNERY_HOME", str(lab["home"]))
    return lab["home"]


def test_f16_gguf_agrees_exactly_in_llama_cpp_and_is_in_the_lineage(lab, home, tmp_path):
    out = tunery_cli("export", lab["run"].dir, "--format", "gguf", "--out", tmp_path / "g", "--json", home=home)
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    v = record["verification"]
    assert record["quant"] == "f16" and v["agreement"] == 1.0 and v["prompt_render_equal"] and v["prompts"] == 6
    assert v["samples"][0]["llama.cpp"] == "the color is blue"
    saved = json.loads((tmp_path / "g" / "export.json").read_text())
    assert set(saved["files"]) == {"model-f16.gguf"} and saved["source"]["id"] == lab["run"].info.id

    from gguf import GGUFReader

    fields = GGUFReader(str(tmp_path / "g" / "model-f16.gguf")).fields
    assert "<|im_start|>" in fields["tokenizer.chat_template"].contents()
    from tunery.models import load_tokenizer

    im_end = load_tokenizer(str(lab["run"].dir)).convert_tokens_to_ids("<|im_end|>")
    assert im_end in v["end_of_turn_ids"]
    lineage = tunery_cli("lineage", lab["run"].dir, "--json", home=home)
    exports = json.loads(lineage.stdout)["model"]["exports"]
    assert [(e["format"], e["quant"]) for e in exports][-1] == ("gguf", "f16")
    assert exports[-1]["files"]["model-f16.gguf"] == saved["files"]["model-f16.gguf"]


def test_quantized_gguf_reports_agreement_and_size(lab, home, tmp_path):
    from tunery.export import export

    record = export(lab["run"].dir, "gguf", tmp_path / "q", quant="q8_0")
    assert 0.3 < record["size_ratio_to_f16"] < 0.8
    assert record["verification"]["agreement"] >= 0.5 and "largest_activation" in record["verification"]
    from tunery.models.llamacpp import GGUFModel

    model = GGUFModel(tmp_path / "q" / "model-q8_0.gguf")
    answer = model.answer([{"role": "user", "content": "color 3"}], max_tokens=20)
    assert answer.finish_reason == "stop" and answer.text == "the color is blue"


def test_the_default_models_activation_outliers_are_caught(lab, home, tmp_path):
    """SmolLM2-135M's MLP inputs reach thousands; llama.cpp quantizes activations to 8 bits per
    block of 32 for q8_0 (and q4_1) matmuls, and answers nonsense. Verification must refuse it
    and say why, while its f16 export agrees exactly."""
    out = tunery_cli("export", lab["smol"].dir, "--format", "gguf", "--quant", "q8_0", "--out", tmp_path / "q", home=home)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "activations reach" in out.stderr and "export at f16 or bf16" in out.stderr
    assert not (tmp_path / "q").exists() and not list(tmp_path.glob(".*"))
    from tunery.export import export

    record = export(lab["smol"].dir, "gguf", tmp_path / "f")
    assert record["verification"]["agreement"] == 1.0


def test_unconvertible_model_and_bad_quant_are_one_line_errors(lab, home, tmp_path, tiny_model):
    from tunery.export import export
    from tunery.training import train

    out = tunery_cli("export", lab["run"].dir, "--format", "gguf", "--quant", "q3_xyz", "--out", tmp_path / "x", home=home)
    assert out.returncode != 0 and "q4_k_m" in out.stderr and "Traceback" not in out.stderr
    # the test suite's own tiny tokenizer is a BPE llama.cpp has never seen: refused, nothing left behind
    data = write_jsonl(tmp_path / "d.jsonl", rows(8))
    run = train(dict(model=str(tiny_model), data=str(data), out=str(tmp_path / "run"), max_steps=1, batch_size=4,
                     val_split=0), progress=False)
    with pytest.raises(TuneryError, match="pre-tokenizer is not one llama.cpp knows"):
        export(run.dir, "gguf", tmp_path / "y")
    assert not (tmp_path / "y").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_gguf_model_stops_at_end_of_turn_and_refuses_long_prompts(lab, home, tmp_path):
    from tunery.export import export
    from tunery.models.llamacpp import GGUFModel

    export(lab["run"].dir, "gguf", tmp_path / "g", verify=False)
    assert "verification" not in json.loads((tmp_path / "g" / "export.json").read_text())
    model = GGUFModel(tmp_path / "g" / "model-f16.gguf", n_ctx=256)
    assert model.n_ctx == 256
    pieces = []
    got = model.answer([{"role": "user", "content": "color 9"}], max_tokens=30)
    assert got.finish_reason == "stop" and got.completion_tokens == 4
    cut = model.complete(model.tokenize(model.render([{"role": "user", "content": "color 9"}])), max_tokens=30,
                         on_text=lambda p: pieces.append(p) or len(pieces) >= 2)
    assert cut.finish_reason == "length" and "".join(pieces) == cut.text and cut.completion_tokens == 2
    with pytest.raises(TuneryError, match="context of 256"):
        model.answer([{"role": "user", "content": "color " * 300}])


def test_ollama_export_has_a_checked_template_and_the_default_system_prompt(lab, home, tmp_path):
    out = tunery_cli("export", lab["run"].dir, "--format", "ollama", "--out", tmp_path / "o", home=home)
    assert out.returncode == 0, out.stderr
    modelfile = (tmp_path / "o" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model-f16.gguf") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "You are a helpful AI assistant named SmolLM" in modelfile  # SmolLM2's template adds it when none is given
    record = json.loads((tmp_path / "o" / "export.json").read_text())
    assert record["ollama"]["family"] == "chatml" and record["ollama"]["conversations_checked"] >= 3
    assert record["verification"]["agreement"] == 1.0
    assert f"ollama create tiny-d-{lab['run'].info.id[:8]} -f {tmp_path / 'o' / 'Modelfile'}" in out.stdout
