"""Training on tiny random models: loss goes down, accumulation is exact, resume after SIGKILL is
exact, runs are complete and loadable, bad input is refused before compute."""

import json
import os
import signal
import subprocess
import time

import pytest
import torch
import yaml

from clirun import TUNERY, tunery_cli
from conftest import write_jsonl
from tunery.config import TrainConfig
from tunery.errors import ConfigError, DataError
from tunery.training import train
from tunery.run_folder import RunFolder


def toy_rows(n=48):
    """A learnable task: the answer is a fixed function of the question."""
    words = ["red", "blue", "green", "gold"]
    return [{"messages": [{"role": "user", "content": f"color {i} {words[i % 4]}"},
                          {"role": "assistant", "content": f"the color is {words[i % 4]}"}]} for i in range(n)]


@pytest.fixture
def toy_data(tmp_path):
    return write_jsonl(tmp_path / "toy.jsonl", toy_rows())


def cfg(tiny_model, data, out, **kw):
    base = dict(model=str(tiny_model), data=str(data), out=str(out), batch_size=8, max_steps=30, lr=1e-2,
                val_split=0.125, eval_every=10, seed=0)
    return TrainConfig(**(base | kw))


@pytest.mark.parametrize("method", ["full", "lora", "dora"])
def test_loss_goes_down(tiny_model, toy_data, tmp_path, method):
    run = train(cfg(tiny_model, toy_data, tmp_path / method, method=method, lr=1e-2 if method == "full" else 3e-2),
                progress=False)
    losses = [r["loss"] for r in run.metrics]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses
    vals = [r["val_loss"] for r in run.metrics if "val_loss" in r]
    assert vals[-1] < vals[0]
    artifact = tmp_path / method / ("model" if method == "full" else "adapter")
    assert (artifact / "tokenizer.json").is_file() and (artifact / "chat_template.jinja").is_file()


def test_grad_accum_matches_bigger_batch(tiny_model, toy_data, tmp_path):
    """batch 4 x accumulation 2 gives the same update as batch 8: the loss is averaged over the
    step's trained tokens, not per micro-batch."""
    from safetensors.torch import load_file

    common = dict(method="full", max_steps=3, lr=1e-3, val_split=0, save_every=3, warmup=0, precision="fp32")
    a = train(cfg(tiny_model, toy_data, tmp_path / "a", batch_size=8, grad_accum=1, **common), progress=False)
    b = train(cfg(tiny_model, toy_data, tmp_path / "b", batch_size=4, grad_accum=2, **common), progress=False)
    c = train(cfg(tiny_model, toy_data, tmp_path / "c", batch_size=3, grad_accum=3, max_steps=3, method="full",
                  lr=1e-3, val_split=0, warmup=0, precision="fp32"), progress=False)
    for r1, r2 in zip(a.metrics, b.metrics):
        assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-5)
        assert r1["grad_norm"] == pytest.approx(r2["grad_norm"], rel=1e-4)
    wa = load_file(a.dir / "model" / "model.safetensors")
    wb = load_file(b.dir / "model" / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=2e-5)
    # A different effective batch (9) really is a different update: the check above can fail.
    wc = load_file(c.dir / "model" / "model.safetensors")
    assert any(not torch.allclose(wa[k], wc[k], atol=1e-4) for k in wa)


def _train_cmd(tiny_model, data, out, *extra):
    return [TUNERY, "train", "--model", str(tiny_model), "--data", str(data), "--out", str(out), "--method", "lora",
            "--max-steps", "120", "--batch-size", "4", "--lr", "0.01", "--lora-dropout", "0.1", "--save-every", "2",
            "--eval-every", "5", "--seed", "3", *extra]


@pytest.mark.process
def test_sigkill_then_resume_matches_uninterrupted(tiny_model, toy_data, tmp_path):
    env = os.environ | {"TUNERY_HOME": str(tmp_path / "home")}
    full = tmp_path / "full"
    subprocess.run(_train_cmd(tiny_model, toy_data, full), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(tiny_model, toy_data, killed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(step >= 6 for step, _ in RunFolder(killed).checkpoints()):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert RunFolder(killed).checkpoints(), "the run was killed before its first checkpoint"
    assert not (killed / "adapter").exists(), "the run finished before it could be killed"
    listed = subprocess.run([TUNERY, "models", "list", "--json"], env=env, capture_output=True, text=True)
    status = {m["run_dir"]: m["status"] for m in json.loads(listed.stdout)}
    assert status[str(killed.resolve())] == "interrupted" and status[str(full.resolve())] == "completed"

    out = subprocess.run([TUNERY, "train", "--out", str(killed), "--resume"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr

    from safetensors.torch import load_file

    wa = load_file(full / "adapter" / "adapter_model.safetensors")
    wb = load_file(killed / "adapter" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    ma = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in mb] == list(range(1, 121))
    listed = subprocess.run([TUNERY, "models", "list", "--json"], env=env, capture_output=True, text=True)
    assert {m["status"] for m in json.loads(listed.stdout)} == {"completed"}
    for ra, rb in zip(ma, mb):
        for key in ("loss", "lr", "grad_norm", "val_loss", "trained_tokens"):
            assert (key in ra) == (key in rb)
            if key in ra:
                assert ra[key] == pytest.approx(rb[key], rel=1e-5), (ra["step"], key)


def test_resume_ignores_incomplete_checkpoint(tiny_model, toy_data, tmp_path):
    run = train(cfg(tiny_model, toy_data, tmp_path / "r", max_steps=4, save_every=2), progress=False)
    fake = run.dir / "checkpoints" / "step-99"
    fake.mkdir()
    (fake / "state.json").write_text("{}")  # no COMPLETE marker: a crash mid-write
    assert [p.name for _, p in RunFolder(run.dir).checkpoints()] == ["step-2", "step-4"]
    resumed = train(cfg(tiny_model, toy_data, tmp_path / "r", max_steps=6, save_every=2, resume=True), progress=False)
    assert [r["step"] for r in resumed.metrics] == [1, 2, 3, 4, 5, 6]


def test_paused_then_resumed_matches_uninterrupted(tiny_model, toy_data, tmp_path):
    """A run paused at step 3 and resumed gives the same metrics and weights as one never stopped:
    optimizer, schedule, data order and the dropout RNG all come back."""
    from safetensors.torch import load_file

    from tunery.training.loop import Signal, TrainingStopped

    kw = dict(max_steps=6, save_every=100, eval_every=2, lora_dropout=0.1, batch_size=4, precision="fp32")
    full = train(cfg(tiny_model, toy_data, tmp_path / "full", **kw), progress=False)
    with pytest.raises(TrainingStopped):
        train(cfg(tiny_model, toy_data, tmp_path / "paused", **kw), progress=False,
              on_step=lambda row: Signal.PAUSE if row["step"] == 3 else None)
    assert RunFolder(tmp_path / "paused").checkpoints()[-1][0] == 3
    resumed = train(cfg(tiny_model, toy_data, tmp_path / "paused", resume=True, **kw), progress=False)
    assert [r["step"] for r in resumed.metrics] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(full.metrics, resumed.metrics):
        for key in ("loss", "lr", "grad_norm", "val_loss", "trained_tokens"):
            assert a.get(key) == b.get(key), (a["step"], key)
    wa = load_file(full.dir / "adapter" / "adapter_model.safetensors")
    wb = load_file(resumed.dir / "adapter" / "adapter_model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)


def test_checkpoint_rng_state_is_not_pickled(tiny_model, toy_data, tmp_path):
    """RNG states are tensors and JSON: no rng.pt in a checkpoint, and one planted there (a pickle
    that runs code when loaded) is never loaded by --resume."""
    import pickle

    run = train(cfg(tiny_model, toy_data, tmp_path / "r", max_steps=4, save_every=2), progress=False)
    ckpts = RunFolder(run.dir).checkpoints()
    assert ckpts
    for _, path in ckpts:
        assert not (path / "rng.pt").exists()
        assert not [p.name for p in path.iterdir() if p.suffix in (".pkl", ".pickle")]
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (ckpts[-1][1] / "rng.pt").write_bytes(pickle.dumps({"python": Exploit()}))
    resumed = train(cfg(tiny_model, toy_data, tmp_path / "r", max_steps=6, save_every=2, resume=True),
                    progress=False)
    assert [r["step"] for r in resumed.metrics] == [1, 2, 3, 4, 5, 6]
    assert not marker.exists(), "the planted rng.pt was unpickled"


def test_rng_states_round_trip_without_pickle(tmp_path):
    import random

    import numpy as np

    from tunery.training.checkpoint import _load_rng, _save_rng

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # a cached gaussian in numpy's state
    _save_rng(tmp_path)
    drawn = random.random(), np.random.standard_normal(3).tolist(), torch.rand(3)
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    _load_rng(tmp_path)
    again = random.random(), np.random.standard_normal(3).tolist(), torch.rand(3)
    assert drawn[:2] == again[:2] and torch.equal(drawn[2], again[2])


def _damage(path):
    """Truncate a file, as a full disk or an interrupted copy does."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_damaged_checkpoint_is_skipped_for_the_previous_one(tiny_model, toy_data, tmp_path, capsys):
    import hashlib

    run = train(cfg(tiny_model, toy_data, tmp_path / "r", max_steps=4, save_every=2), progress=False)
    (_, older), (_, newest) = RunFolder(run.dir).checkpoints()
    _damage(newest / "trainable.safetensors")
    capsys.readouterr()
    resumed = train(cfg(tiny_model, toy_data, tmp_path / "r", max_steps=6, save_every=2, resume=True))
    err = capsys.readouterr().err.replace("\n", "")  # rich wraps long lines
    assert "skipping checkpoint" in err and "step-4" in err and "trainable.safetensors" in err
    assert "from step-2" in err
    assert [r["step"] for r in resumed.metrics] == [1, 2, 3, 4, 5, 6] and resumed.info.status == "completed"

    # Files that match their recorded hashes but do not load (written for another recipe, say):
    # skipped the same way. Here the newest checkpoint's RNG state is not what it should be.
    (_, older), (_, newest) = RunFolder(run.dir).checkpoints()
    (newest / "rng.json").write_text('{"python": "nonsense"}')
    manifest = json.loads((newest / "sha256.json").read_text())
    manifest["rng.json"] = hashlib.sha256((newest / "rng.json").read_bytes()).hexdigest()
    (newest / "sha256.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    train(cfg(tiny_model, toy_data, tmp_path / "r", max_steps=8, save_every=2, resume=True))
    err = capsys.readouterr().err.replace("\n", "")  # rich wraps long lines
    assert f"{newest.name}: does not load" in err and f"from {older.name}" in err


def test_no_intact_checkpoint_is_a_one_line_error(tiny_model, toy_data, tmp_path):
    from tunery.registry import store
    from tunery.registry.db import connect

    run = train(cfg(tiny_model, toy_data, tmp_path / "r", max_steps=4, save_every=2), progress=False)
    for _, path in RunFolder(run.dir).checkpoints():
        _damage(path / "optimizer.pt")
    info = (run.dir / "run.json").read_text()
    with pytest.raises(ConfigError, match=r"^resume: no intact checkpoint in .*step-4: optimizer.pt does not match"
                                          r".*\(and 1 more\)") as err:
        train(cfg(tiny_model, toy_data, tmp_path / "r", max_steps=6, save_every=2, resume=True), progress=False)
    assert len(str(err.value).splitlines()) == 1
    assert (run.dir / "run.json").read_text() == info, "run.json still says completed"
    with connect() as conn:
        assert store.get(conn, run.info.id)["status"] == "completed"


def test_run_folder_is_complete_and_loadable(tiny_model, toy_data, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run = train(cfg(tiny_model, toy_data, tmp_path / "run", max_steps=6), progress=False)
    resolved = yaml.safe_load((run.dir / "config.yaml").read_text())
    assert "auto" not in resolved.values() and resolved["lr"] == 1e-2 and resolved["target_modules"] == "all-linear"
    rows = [json.loads(x) for x in (run.dir / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "epoch", "loss", "lr", "grad_norm", "tokens", "tokens_per_s"} <= rows[0].keys()
    keys = load_file(run.dir / "adapter" / "adapter_model.safetensors").keys()
    assert keys and all("lora_" in k for k in keys), "no embedding or lm_head copies in the adapter"
    card = (run.dir / "README.md").read_text()
    assert "sha256" in card and "lora" in card and "val" in card.lower()
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    PeftModel.from_pretrained(base, run.dir / "adapter")  # peft itself loads it

    from tunery.generation import Generator

    out = Generator(str(run.dir)).chat([[{"role": "user", "content": "color 1 blue"}]], max_new_tokens=5)
    assert out[0].completion_tokens >= 1


def test_merge_matches_adapter_logits(tiny_model, toy_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunery.export import merge_run

    run = train(cfg(tiny_model, toy_data, tmp_path / "run", max_steps=8, method="dora"), progress=False)
    merged_dir = merge_run(run.dir, tmp_path / "merged")
    ids = torch.tensor([[1, 5, 17, 42, 99, 7, 2]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    with_adapter = PeftModel.from_pretrained(base, run.dir / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    plain = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        a, m, p = with_adapter(ids).logits, merged(ids).logits, plain(ids).logits
    torch.testing.assert_close(a, m, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(a, p, atol=1e-4), "the adapter changed nothing"
    assert (merged_dir / "chat_template.jinja").is_file()
    from tunery.data.render import stop_token_ids
    from tunery.data.template import load_template
    from tunery.models import load_tokenizer

    tokenizer = load_tokenizer(merged_dir)  # other runtimes stop at every end-of-turn token
    eos = json.loads((merged_dir / "generation_config.json").read_text())["eos_token_id"]
    assert sorted(stop_token_ids(tokenizer, load_template(tokenizer))) == (eos if isinstance(eos, list) else [eos])


def test_bad_input_refused_before_compute(tiny_model, toy_data, tmp_path):
    with pytest.raises(ConfigError, match="qlora"):
        train(cfg(tiny_model, toy_data, tmp_path / "q", method="qlora"), progress=False)
    bad = write_jsonl(tmp_path / "bad.jsonl", toy_rows(8) + [{"messages": "nope"}])
    with pytest.raises(DataError, match=r"bad.jsonl:9: .*messages_not_list"):
        train(cfg(tiny_model, bad, tmp_path / "b"), progress=False)
    assert not (tmp_path / "b").exists(), "nothing written for a refused run"
    train(cfg(tiny_model, toy_data, tmp_path / "once", max_steps=2), progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg(tiny_model, toy_data, tmp_path / "once", max_steps=2), progress=False)


def test_out_with_user_files_is_refused_untouched(tiny_model, toy_data, tmp_path):
    """An existing folder that is not empty and holds no run is someone's files: refused before any
    compute, nothing in it touched, nothing added. An empty folder is fine."""
    out = tmp_path / "project"
    (out / "adapter").mkdir(parents=True)
    (out / "README.md").write_text("my project\n")
    (out / "adapter" / "notes.txt").write_text("keep me\n")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"^out: .*project") as err:
        train(cfg(tiny_model, toy_data, out, max_steps=2), progress=False)
    assert err.value.field == "out" and len(str(err.value).splitlines()) == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["README.md", "adapter", "adapter/notes.txt"]
    with pytest.raises(ConfigError, match="holds no run"):  # --resume does not make it a run either
        train(cfg(tiny_model, toy_data, out, max_steps=2, resume=True), progress=False)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["README.md", "adapter", "adapter/notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train(cfg(tiny_model, toy_data, empty, max_steps=2), progress=False).info.status == "completed"


def test_early_stopping_keeps_best(tiny_model, toy_data, tmp_path):
    # A learning rate far too high makes validation loss climb after the first evaluations.
    run = train(cfg(tiny_model, toy_data, tmp_path / "es", method="full", lr=0.9, max_steps=40, eval_every=2,
                    early_stopping=2, warmup=0), progress=False)
    final = run.info.final
    assert final.steps < 40
    vals = {r["step"]: r["val_loss"] for r in run.metrics if "val_loss" in r}
    assert final.shipped_step == min(vals, key=vals.get) == final.best_step
    assert RunFolder(run.dir).checkpoint_dir(final.best_step).is_dir()


def test_cli_yaml_with_flag_override(tiny_model, toy_data, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": str(tiny_model), "data": str(toy_data), "max_steps": 50,
                                      "batch_size": 4, "lr": 0.01}))
    out = tunery_cli("train", "-c", recipe, "--max-steps", "3", "--out", tmp_path / "run")
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["max_steps"] == 3 and resolved["batch_size"] == 4
    recipe.write_text("model: x\nlearning_rate: 3\n")
    out = tunery_cli("train", "-c", recipe, "--data", toy_data)
    assert out.returncode == 2 and "learning_rate: unknown field" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_masked_tokens_have_no_influence_on_gradients(tiny_model, tiny_tokenizer):
    """Padding and untrained tokens after the last target change nothing; the loss is exactly the
    cross-entropy over trained positions (as HF computes it with labels=-100 elsewhere)."""
    from transformers import AutoModelForCausalLM

    from tunery.data import Example
    from tunery.training.batches import collate
    from tunery.training.loss import TokenLoss

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    loss_fn = TokenLoss(model)
    a = Example(1, [1, 10, 11, 12, 13, 2, 14, 15], [0, 0, 0, 1, 1, 1, 0, 0])
    b = Example(2, [1, 20, 21, 22, 2], [0, 0, 1, 1, 1])

    def grads(batch_examples, pad):
        model.zero_grad()
        batch = collate(batch_examples, pad, "cpu")
        loss_sum, n = loss_fn(**batch)
        (loss_sum / n).backward()
        return loss_sum.item(), int(n), [p.grad.clone() for p in model.parameters()]

    loss1, n1, g1 = grads([a, b], pad=2)
    changed = Example(1, a.input_ids[:6] + [99, 98], a.loss_mask)  # different untrained trailing tokens
    loss2, n2, g2 = grads([changed, b], pad=77)  # and a different pad id
    assert n1 == n2 == 6 and loss1 == pytest.approx(loss2, rel=1e-6)
    for x, y in zip(g1, g2):
        torch.testing.assert_close(x, y)

    ids = torch.tensor([a.input_ids])
    labels = torch.tensor([[t if m else -100 for t, m in zip(a.input_ids, a.loss_mask)]])
    with torch.no_grad():
        hf = model(input_ids=ids, labels=labels).loss.item()
        ours, n = loss_fn(**collate([a], 2, "cpu"))
    assert ours.item() / int(n) == pytest.approx(hf, rel=1e-5)


def test_auto_values(tiny_model, tmp_path):
    from tunery.config import suggest_epochs

    data = write_jsonl(tmp_path / "small.jsonl", toy_rows(12))
    lora = train(TrainConfig(model=str(tiny_model), data=str(data), out=str(tmp_path / "l"), val_split=0.25),
                 progress=False)
    assert lora.config["lr"] == 2e-4 and lora.config["epochs"] == suggest_epochs(9) == 10
    assert lora.config["max_steps"] == 20 and lora.config["eval_every"] == 2 and lora.config["save_every"] == 2
    assert len(lora.metrics) == 20
    full = train(TrainConfig(model=str(tiny_model), data=str(data), out=str(tmp_path / "f"), method="full",
                             max_steps=2, val_split=0), progress=False)
    assert full.config["lr"] == 2e-5 and full.config["eval_every"] is None
    assert suggest_epochs(300) == 4 and suggest_epochs(1000) == 3 and suggest_epochs(100_000) == 1


def test_chat_cli_answers_until_empty_line(tiny_model, toy_data, tmp_path):
    run = train(cfg(tiny_model, toy_data, tmp_path / "run", max_steps=2), progress=False)
    out = tunery_cli("chat", run.dir, "--max-new-tokens", "4", input="color 1 blue\nagain\n\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("model>") == 2


def test_custom_template_ships_with_the_weights(tiny_model, toy_data, tmp_path):
    template = ("{% for m in messages %}{{ '### ' + m['role'] + ':\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
                "{% endfor %}{% if add_generation_prompt %}{{ '### assistant:\\n' }}{% endif %}")
    path = tmp_path / "t.jinja"
    path.write_text(template)
    run = train(cfg(tiny_model, toy_data, tmp_path / "run", max_steps=2, template=str(path)), progress=False)
    assert (run.dir / "adapter" / "chat_template.jinja").read_text() == template

    from tunery.generation import Generator

    gen = Generator(str(run.dir))
    assert gen.tokenizer.decode(gen.prompt_ids([{"role": "user", "content": "hi"}])) == "### user:\nhi<|im_end|>\n### assistant:\n"


def test_cpu_bf16_lora_casts_the_frozen_base_once(tiny_model, toy_data, tmp_path, monkeypatch):
    """Under CPU bf16 autocast the frozen linear weights are stored in bf16 (autocast would cast
    them every pass); everything else stays fp32, and evaluation and generation still run."""
    from tunery.models import hardware, resolve_model
    from tunery.training.setup import build_model

    monkeypatch.setenv("TUNERY_CPU_BF16", "1")
    hardware.cpu_bf16_is_fast.cache_clear()
    try:
        model = build_model(cfg(tiny_model, toy_data, tmp_path / "x", precision="bf16"), resolve_model(str(tiny_model)))
        dtypes = {n: p.dtype for n, p in model.named_parameters()}
        assert dtypes["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"] == torch.bfloat16
        assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n or "norm" in n or "embed" in n)
        # an adapter on the tied output layer must not turn the shared input embedding into bf16
        tied = build_model(cfg(tiny_model, toy_data, tmp_path / "t", precision="bf16",
                               target_modules=["q_proj", "lm_head"]), resolve_model(str(tiny_model)))
        assert tied.get_input_embeddings().weight.dtype == torch.float32
        run = train(cfg(tiny_model, toy_data, tmp_path / "r", precision="bf16", max_steps=4, eval_every=2,
                        eval_generate_every=2, eval_metric="exact", eval_samples=2), progress=False)
        assert run.config["precision"] == "bf16" and "eval_exact" in run.metrics[-1]
        assert run.metrics[-1]["val_loss"] < run.metrics[1]["val_loss"] * 1.5
    finally:
        hardware.cpu_bf16_is_fast.cache_clear()


def test_eval_every_none_evaluates_at_the_end_only(tiny_model, toy_data, tmp_path):
    run = train(cfg(tiny_model, toy_data, tmp_path / "r", max_steps=3, eval_every=None), progress=False)
    assert ["val_loss" in r for r in run.metrics] == [False, False, True]


def test_validation_is_capped_and_the_cap_recorded(tiny_model, toy_data, tmp_path):
    """val_max: a split holds out at most that many (the rest train); a val file is sampled down to
    it, the same sample each run; the resolved config says which cap applied."""
    split = train(cfg(tiny_model, toy_data, tmp_path / "s", max_steps=1, val_split=0.5, val_max=5), progress=False)
    assert split.config["val_max"] == 5 and split.info.val.used == 5 and split.info.data.used == 43
    auto = train(cfg(tiny_model, toy_data, tmp_path / "a", max_steps=1, val_split=0.5), progress=False)
    assert auto.config["val_max"] == 256 and auto.info.val.used == 24  # under the cap: as asked
    val_file = write_jsonl(tmp_path / "val.jsonl", toy_rows(20))
    runs = [train(cfg(tiny_model, toy_data, tmp_path / f"f{i}", max_steps=1, val_data=str(val_file), val_max=7),
                  progress=False) for i in range(2)]
    assert [r.info.val.used for r in runs] == [7, 7] and runs[0].metrics[-1]["val_loss"] == runs[1].metrics[-1]["val_loss"]
    every = train(cfg(tiny_model, toy_data, tmp_path / "all", max_steps=1, val_data=str(val_file), val_max=0),
                  progress=False)
    assert every.info.val.used == 20 and every.config["val_max"] == 0


def system_rows(n=24):
    return [{"messages": [{"role": "system", "content": "You answer with the color named in the question, nothing else."},
                          *toy_rows(n)[i]["messages"]]} for i in range(n)]


def test_share_prefix_auto_measures_once_and_the_resume_keeps_it(tiny_model, tmp_path, monkeypatch):
    """auto: timed on the first micro-batch (here made to look slower shared), recorded in the
    resolved config; the measurement leaves no gradient or random state behind; a resume reads
    the recorded choice and measures nothing."""
    from tunery.training import autotune

    data = write_jsonl(tmp_path / "sys.jsonl", system_rows())
    calls = []
    real = autotune.share_prefix

    def measured(first, collate, objective, loss_fn, autocast, params, parameters):
        rng = torch.get_rng_state()
        calls.append(len(first))
        monkeypatch.setattr(autotune, "MIN_FLOPS", 0)
        clock = iter([0.0, 3.0, 10.0, 11.0, 20.0, 23.0])  # shared 3 s, unshared 1 s, shared 3 s
        monkeypatch.setattr(autotune.time, "perf_counter", lambda: next(clock))
        try:
            choice = real(first, collate, objective, loss_fn, autocast, params, parameters)
        finally:
            monkeypatch.undo()
        assert all(p.grad is None for p in params) and torch.equal(rng, torch.get_rng_state())
        return choice

    monkeypatch.setattr(autotune, "share_prefix", measured)
    monkeypatch.setattr(autotune, "MIN_MICRO_BATCHES", 4)  # a run this short is measured here
    run = train(cfg(tiny_model, data, tmp_path / "r", max_steps=4, save_every=2, eval_every=2, lora_dropout=0.1),
                progress=False)
    assert calls == [8] and run.config["share_prefix"] is False
    told = train(cfg(tiny_model, data, tmp_path / "t", max_steps=4, save_every=2, eval_every=2, lora_dropout=0.1,
                     share_prefix=False), progress=False)
    assert [r["loss"] for r in told.metrics] == [r["loss"] for r in run.metrics]  # measuring left no trace

    def never(*a):
        raise AssertionError("a resumed run measures again")

    monkeypatch.setattr(autotune, "share_prefix", never)
    ckpt = RunFolder(run.dir)
    import shutil
    shutil.rmtree(ckpt.checkpoint_dir(4))
    again = train(cfg(tiny_model, data, tmp_path / "r", max_steps=4, save_every=2, eval_every=2, lora_dropout=0.1,
                      resume=True), progress=False)
    assert again.config["share_prefix"] is False


def test_share_prefix_auto_keeps_sharing_where_a_pass_is_too_short_to_time(tiny_model, tmp_path, monkeypatch):
    """Decided by size, not by a clock: a tiny model is never timed, so two runs always agree; nor is
    a run too short to repay three measuring passes."""
    from tunery.training import autotune

    answers, real = [], autotune.share_prefix
    monkeypatch.setattr(autotune, "share_prefix", lambda *a: answers.append(real(*a)) or answers[-1])
    data = write_jsonl(tmp_path / "sys.jsonl", system_rows())
    short = train(cfg(tiny_model, data, tmp_path / "s", max_steps=2), progress=False)
    assert short.config["share_prefix"] is True and answers == []  # 2 micro-batches: not worth measuring
    monkeypatch.setattr(autotune, "MIN_MICRO_BATCHES", 1)
    run = train(cfg(tiny_model, data, tmp_path / "r", max_steps=1), progress=False)
    assert run.config["share_prefix"] is True and answers == [(True, None)]  # None: nothing was timed
    explicit = train(cfg(tiny_model, data, tmp_path / "e", max_steps=1, val_max="auto", share_prefix="auto"), progress=False)
    assert explicit.config["val_max"] == 256
