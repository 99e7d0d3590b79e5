"""`tunery export`: merged and PEFT exports of tiny runs, verified against the run's own weights."""

import json

import pytest

from clirun import tunery_cli
from conftest import write_jsonl
from tunery.errors import TuneryError
from tunery.export import export
from tunery.training import train


def rows(n=16):
    return [{"messages": [{"role": "user", "content": f"color {i}"},
                          {"role": "assistant", "content": "the color is blue"}]} for i in range(n)]


@pytest.fixture
def lora_run(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", rows())
    return train(dict(model=str(tiny_model), data=str(data), out=str(tmp_path / "run"), max_steps=4, lr=1e-2,
                      batch_size=8, val_split=0), progress=False)


def test_merged_export_is_verified_and_stops_at_end_of_turn(lora_run, tmp_path):
    out = tunery_cli("export", lora_run.dir, "--format", "merged", "--out", tmp_path / "merged", "--json")
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["verification"]["max_abs_logit_diff"] <= 1e-3 and record["verification"]["prompts"] == 4
    assert record["source"]["name"] == lora_run.info.name
    saved = json.loads((tmp_path / "merged" / "export.json").read_text())
    assert "model.safetensors" in saved["files"] and "chat_template.jinja" in saved["files"]
    gen = json.loads((tmp_path / "merged" / "generation_config.json").read_text())
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    from tunery.models import load_tokenizer

    assert load_tokenizer(str(lora_run.dir)).convert_tokens_to_ids("<|im_end|>") in eos


def test_peft_export_is_what_vllm_loads(lora_run, tmp_path):
    record = export(lora_run.dir, "peft", tmp_path / "peft")
    a = record["adapter"]
    assert a["r"] == 16 and a["vllm_max_lora_rank"] == 16 and not a["dora"] and a["tensors"] > 0
    assert record["verification"]["max_abs_logit_diff"] <= 1e-3
    assert {"adapter_config.json", "adapter_model.safetensors", "export.json"} <= {p.name for p in (tmp_path / "peft").iterdir()}
    out = tunery_cli("export", lora_run.dir, "--format", "peft", "--out", tmp_path / "p2")
    assert "vllm serve BASE --enable-lora --max-lora-rank 16" in out.stdout


def test_export_refusals(lora_run, tiny_model, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep me")
    with pytest.raises(TuneryError, match="not empty"):
        export(lora_run.dir, "merged", tmp_path / "busy")
    assert (tmp_path / "busy" / "mine.txt").read_text() == "keep me"
    for into in (tmp_path / "busy" / "mine.txt", tmp_path / "busy" / "mine.txt" / "sub"):  # a file where a folder goes
        out = tunery_cli("export", lora_run.dir, "--format", "peft", "--out", into)
        assert out.returncode == 1 and "mine.txt is a file" in out.stderr and "Traceback" not in out.stderr
    assert (tmp_path / "busy" / "mine.txt").read_text() == "keep me"
    out = tunery_cli("export", lora_run.dir, "--format", "onnx", "--out", tmp_path / "x")
    assert out.returncode == 2 and "format" in out.stderr and "Traceback" not in out.stderr
    with pytest.raises(TuneryError, match="not a tunery run"):
        export(str(tiny_model), "merged", tmp_path / "y")
    data = write_jsonl(tmp_path / "d2.jsonl", rows())
    dora = train(dict(model=str(tiny_model), data=str(data), out=str(tmp_path / "dora"), max_steps=2, batch_size=8,
                      val_split=0, method="dora"), progress=False)
    with pytest.raises(TuneryError, match="DoRA"):
        export(dora.dir, "peft", tmp_path / "z")
    assert not (tmp_path / "z").exists()


def test_gguf_without_the_extra_names_it(lora_run, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if `tunery[gguf]` were not installed
    out = tunery_cli("export", lora_run.dir, "--format", "gguf", "--out", tmp_path / "g")
    assert out.returncode == 1 and "pip install 'tunery[gguf]'" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "g").exists()
    out = tunery_cli("export", lora_run.dir, "--format", "merged", "--quant", "q8_0", "--out", tmp_path / "m")
    assert out.returncode == 2 and "only GGUF exports" in out.stderr
