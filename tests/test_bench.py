"""Smoke runs of the benchmark harnesses (their speed is never asserted, only their math)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.process  # the second lane: real processes

ROOT = Path(__file__).resolve().parent.parent


def _run(script, *args):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick", "--json", *args],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_compare_trl_quick_same_math():
    r = _run("compare_trl.py", "--sides", "tunery,trl_tuned", "--precision", "fp32")
    assert {"tunery_tokens_per_s", "trl_tokens_per_s", "speedup", "peak_mem_ratio", "val_loss_rel_diff",
            "matmul_gflops", "machine"} <= r.keys()
    # Same tokens, masks, order, initialisation and optimizer: the first loss is the same number
    # and the validation loss after the same training tokens agrees.
    assert abs(r["step0_loss_tunery"] - r["step0_loss_trl"]) < 1e-3
    assert r["val_loss_rel_diff"] < 0.02


def test_generation_quick():
    r = _run("generation.py")
    assert r["batched_tokens_per_s"] > 0 and r["sequential_tokens_per_s"] > 0 and r["prompts"] == 32


def test_constrained_generation_quick():
    r = _run("constrained_generation.py")
    assert r["free"]["tokens_per_s"] > 0 and r["compile_ms_to_first_mask"].keys() == {"json_schema", "choices_60"}
    assert r["choices_60"]["valid"] == "8/8"  # every answer held to its format; a random model's JSON strings
    assert int(r["json_schema"]["valid"][0]) + r["json_schema"]["cut_at_max_tokens"] == 8  # may run past max tokens
    assert r["json_schema"]["mask_ms_per_step"] > 0 == r["free"]["mask_ms_per_step"]


def test_constrain_libraries_quick():
    r = _run("constrain_libraries.py")
    assert r["library"] in ("llguidance", "xgrammar", "outlines-core")


def test_retrieval_quick():
    r = _run("retrieval.py")
    assert r["chunks"] > 0 and r["build_chunks_per_s"] > 0 and r["rebuild_one_changed_embedded"] < r["chunks"]
    assert set(r["query_ms"]) == {"hybrid", "bm25", "dense"} and r["recall_at_5"]["hybrid"] > 0.5


def test_data_scale_quick():
    r = _run("data_scale.py")
    assert [s["rows"] for s in r["sizes"]] == [2_000, 20_000]
    for s in r["sizes"]:
        assert (s["build"]["hit"], s["load"]["hit"]) == (False, True)
        assert s["build"]["examples"] == s["load"]["examples"] == s["check"]["good"] == s["rows"]
        assert s["load"]["seconds"] < s["build"]["seconds"]
        assert s["train"]["tokens_per_s"] > 0 and s["train"]["epoch_tokens"] == s["build"]["tokens"]


def test_distributed_quick():
    r = _run("distributed.py")
    assert r["tokens_per_s_1_process"] > 0 and r["tokens_per_s_2_processes"] > 0
    assert r["step_ms_with_sync"] > 0 and 0 <= r["allreduce_share_of_step"] < 1 and r["trainable_params"] > 0
