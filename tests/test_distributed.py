"""Training with several processes (torch.distributed over gloo, on this CPU): N processes give
the update one process gives, each example is trained once per epoch by exactly one process,
rank 0 alone writes, a killed run resumes exactly, two "machines" on loopback train together,
and an error found by one process stops them all with one line.

The fast lane checks the sharding and the recipe; the process lane launches real processes
(`tunery train --nproc 2`, torchrun, two accelerate launchers)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clirun import TUNERY, one_line_error, tunery_cli
from conftest import write_jsonl
from test_train import toy_rows
from tunery.config import TrainConfig, auto_strategy
from tunery.errors import ConfigError
from tunery.run_folder import RunFolder
from tunery.training.batches import step_groups
from tunery.training.distributed import shard

BIN = Path(sys.executable).parent


# -- the fast lane ---------------------------------------------------------------------------

class _Ex:
    def __init__(self, i, n):
        self.i, self.input_ids, self.loss_mask = i, [0] * n, [0] + [1] * (n - 1)


@pytest.mark.parametrize("n,batch,accum,size", [(43, 8, 1, 2), (43, 8, 2, 3), (10, 4, 1, 4), (5, 2, 3, 8)])
def test_every_example_is_trained_once_per_epoch_by_one_process(n, batch, accum, size):
    """Each rank shards each micro-batch of the same seeded, length-grouped steps: together the
    ranks see every example of the epoch once, in the order and groups one process would."""
    examples = [_Ex(i, 3 + (i * 7) % 11) for i in range(n)]
    for epoch in (0, 1):
        seen = []
        for micro_batches in step_groups(examples, 5, epoch, batch, accum):
            for mb in micro_batches:
                shards = [shard(mb, rank, size) for rank in range(size)]
                assert sorted(e.i for s in shards for e in s) == sorted(e.i for e in mb)  # disjoint, complete
                assert max(map(len, shards)) - min(map(len, shards)) <= 1
                seen += [e.i for s in shards for e in s]
        assert sorted(seen) == list(range(n))  # none twice, none lost


def test_the_recipe_names_processes_and_strategy():
    assert auto_strategy("lora", 70_000_000_000) == "ddp"
    assert auto_strategy("full", 135_000_000) == "ddp"
    assert auto_strategy("full", 8_000_000_000) == "fsdp"
    cfg = TrainConfig(data="x.jsonl", method="full", nproc=2)
    resolved = cfg.resolve(100, 0, precision="fp32", format="chat", processes=2, parameters=2_000_000_000)
    assert resolved.nproc == 2 and resolved.strategy == "fsdp" and resolved.is_resolved
    with pytest.raises(ValueError):
        TrainConfig(data="x.jsonl", nproc=0)
    with pytest.raises(ValueError):
        TrainConfig(data="x.jsonl", strategy="zero3")
    out = tunery_cli("train", "--help")
    assert "--nproc" in out.stdout and "--strategy" in out.stdout


def test_fsdp_is_for_full_fine_tuning(tiny_model, tmp_path):
    from tunery.training import train

    data = write_jsonl(tmp_path / "d.jsonl", toy_rows(8))
    with pytest.raises(ConfigError, match="strategy: fsdp shards a full fine-tune"):
        train(TrainConfig(model=str(tiny_model), data=str(data), out=str(tmp_path / "r"), strategy="fsdp"),
              progress=False)


def test_jobs_api_takes_nproc_within_the_machine(tmp_path):
    from tunery.errors import validated
    from tunery.serve.jobs import JobRequest, config_for

    request = {"model": "tiny", "training_file": "file-" + "0" * 24, "tunery": {"nproc": 2, "strategy": "ddp"}}
    cfg = config_for(request, "ftjob-" + "0" * 24)
    assert cfg.nproc == 2 and cfg.strategy == "ddp"
    for bad in (0, (os.cpu_count() or 1) + 1, "2"):
        with pytest.raises(ConfigError) as e:
            validated(JobRequest, **(request | {"tunery": {"nproc": bad}}))
        assert e.value.field == "tunery.nproc"


def test_the_launcher_and_rank_0_talk_through_files(tmp_path):
    """Progress rows as rank 0 writes them (a row still being written is not read), a signal back,
    and an error that crosses processes as the same kind, with its field (its exit code, its HTTP
    status)."""
    from tunery.training.control import Channel, Signal, error_from, error_report

    channel = Channel(tmp_path)
    assert channel.on_step({"step": 1}) is None
    channel.progress.open("a").write('{"step": 2')  # half a row
    assert channel.rows(0) == [{"step": 1}]
    channel.ask(Signal.PAUSE)
    assert channel.on_step({"step": 3}) is Signal.PAUSE
    err = error_from(error_report(ConfigError("out: busy", field="out")))
    assert isinstance(err, ConfigError) and err.field == "out" and err.exit_code == 2
    assert str(error_from(error_report(KeyError("x")))) == "KeyError: 'x'"


# -- the process lane ------------------------------------------------------------------------

def _env(tmp_path) -> dict:
    return os.environ | {"TUNERY_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}


def _args(tiny_model, data, out, **kw) -> list[str]:
    flags = dict(model=tiny_model, data=data, out=out, max_steps=5, batch_size=8, lr=1e-3, val_split=0.125,
                 eval_every=2, save_every=5, seed=0, precision="fp32", warmup=0) | kw
    return [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(next(run.glob("adapter/*.safetensors")) if (run / "adapter").is_dir() else run / "model" / "model.safetensors")


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _same_run(a: Path, b: Path, rtol=1e-4, atol=2e-5) -> None:
    """The same weights within fp32 rounding (AdamW turns a gradient's last bits into up to lr x
    their relative size; lr 1e-3 keeps that under atol), the same metrics."""
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=rtol, atol=atol, msg=lambda m: f"{k}: {m}")
    ma, mb = _metrics(a), _metrics(b)
    assert [r["step"] for r in ma] == [r["step"] for r in mb]
    for ra, rb in zip(ma, mb):
        assert ra["trained_tokens"] == rb["trained_tokens"] and ra["tokens"] == rb["tokens"]
        for key in ("loss", "grad_norm", "val_loss"):
            assert (key in ra) == (key in rb)
            if key in ra:
                assert ra[key] == pytest.approx(rb[key], rel=1e-5), (ra["step"], key)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("toy") / "toy.jsonl", toy_rows())


RECIPES = {"lora": {"method": "lora"}, "full": {"method": "full", "grad_accum": 2}}


@pytest.fixture(scope="module")
def one_process(tiny_model, toy, tmp_path_factory):
    """Each recipe trained by one process, in this one (the reference)."""
    home = tmp_path_factory.mktemp("one")
    runs = {}
    for name, kw in RECIPES.items():
        out = tunery_cli("train", *_args(tiny_model, toy, home / name, **kw), home=home / "home")
        assert out.returncode == 0, out.stderr
        runs[name] = home / name
    return runs


@pytest.mark.process
@pytest.mark.parametrize("recipe,strategy", [("lora", "auto"), ("full", "auto"), ("full", "fsdp")])
def test_two_processes_give_the_update_of_one(tiny_model, toy, tmp_path, one_process, recipe, strategy):
    """`--nproc 2` with batch 8: each process trains 4 examples of each micro-batch (packed, with
    the shared prefix computed once), and after 5 steps the weights, losses, gradient norms and
    validation losses are one process's, within fp32 rounding; with DDP (auto for these) and with
    FSDP (weights, gradients and AdamW state sharded). Rank 0 alone wrote the run."""
    cfg = RunFolder(one_process[recipe]).read_config()
    assert cfg["share_prefix"] and cfg["nproc"] == 1  # packing: the tiny Llama's attention is packed
    out = subprocess.run([TUNERY, "train", *_args(tiny_model, toy, tmp_path / "two", nproc=2, strategy=strategy,
                                                  **RECIPES[recipe])],
                         env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    _same_run(one_process[recipe], tmp_path / "two")
    run = RunFolder(tmp_path / "two")
    assert run.read_config()["nproc"] == 2 and run.read_config()["strategy"] == ("ddp" if strategy == "auto" else strategy)
    assert out.stderr.count("done:") == 1 and out.stderr.count("→") == 1  # one voice: rank 0
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3, 4, 5]  # one writer, no row twice
    listed = json.loads(subprocess.run([TUNERY, "models", "list", "--json"], env=_env(tmp_path), capture_output=True,
                                       text=True).stdout)
    assert [m["status"] for m in listed] == ["completed"]
    step, ckpt = run.checkpoints()[-1]
    assert step == 5 and {"rng.safetensors", "rng-1.safetensors", "rng-1.json"} <= {p.name for p in ckpt.iterdir()}


@pytest.mark.process
def test_two_processes_train_dpo_as_one(tiny_model, tmp_path):
    """DPO with --nproc 2: each process takes its share of the pairs, for the reference computed
    before the first step and for every micro-batch; the rewards and weights are one process's."""
    from test_preference import pair_rows

    pairs = write_jsonl(tmp_path / "pairs.jsonl", pair_rows())
    runs = {}
    for n in (1, 2):
        runs[n] = tmp_path / f"n{n}"
        out = subprocess.run([TUNERY, "train", *_args(tiny_model, pairs, runs[n], nproc=n, objective="dpo",
                                                      batch_size=4, max_steps=4)],
                             env=_env(tmp_path), capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    _same_run(runs[1], runs[2])
    one, two = _metrics(runs[1]), _metrics(runs[2])
    for ra, rb in zip(one, two):
        for key in ("rewards_margin", "accuracy", "val_rewards_margin"):
            assert (key in ra) == (key in rb)
            if key in ra:
                assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), (ra["step"], key)
    ref = [(r / "reference.safetensors").read_bytes() for r in runs.values()]
    from safetensors.torch import load

    a, b = load(ref[0]), load(ref[1])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5)


@pytest.mark.process
def test_two_processes_killed_then_resumed_match_an_uninterrupted_run(tiny_model, toy, tmp_path):
    """The uninterrupted run under torchrun; the other with --nproc 2, SIGKILLed after its step-6
    checkpoint (its processes die with it) and resumed: the same weights and metrics, dropout
    included (every process's RNG state is in the checkpoint)."""
    kw = dict(max_steps=40, batch_size=4, lora_dropout=0.1, save_every=2, eval_every=5, seed=3, val_split=0.1)
    env = _env(tmp_path)
    full = subprocess.run([BIN / "torchrun", "--nproc_per_node", "2", "-m", "tunery", "train",
                           *_args(tiny_model, toy, tmp_path / "full", **kw)], env=env, capture_output=True, text=True,
                          timeout=180)
    assert full.returncode == 0, full.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen([TUNERY, "train", *_args(tiny_model, toy, killed, nproc=2, **kw)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(step >= 6 for step, _ in RunFolder(killed).checkpoints()):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "adapter").exists(), "the run finished before it could be killed"
    deadline = time.time() + 20  # the processes die with their launcher; the registry sees rank 0 gone
    while time.time() < deadline:
        listed = json.loads(subprocess.run([TUNERY, "models", "list", "--json"], env=env, capture_output=True,
                                           text=True).stdout)
        if {m["run_dir"]: m["status"] for m in listed}[str(killed.resolve())] == "interrupted":
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"the killed run is not shown as interrupted: {listed}")

    resumed = subprocess.run([TUNERY, "train", "--out", str(killed), "--resume"], env=env, capture_output=True,
                             text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and RunFolder(killed).read_config()["nproc"] == 2
    _same_run(tmp_path / "full", killed, rtol=1e-5, atol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.process
def test_two_machines_on_loopback_train_together(tiny_model, toy, tmp_path, one_process):
    """Two accelerate launchers, as on two machines (--num_machines 2, --machine_rank 0/1, rank 0's
    address and a port), one process each: one run, one process's update."""
    port, env = _free_port(), _env(tmp_path)
    machines = [subprocess.Popen(
        [BIN / "accelerate", "launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "2",
         "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tunery", "train",
         *_args(tiny_model, toy, tmp_path / "run", method="lora")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outs = [m.communicate(timeout=120) for m in machines]
    assert [m.returncode for m in machines] == [0, 0], outs
    assert "done:" in outs[0][1] and "done:" not in outs[1][1]  # machine 1 holds rank 1: it writes nothing
    _same_run(one_process["lora"], tmp_path / "run")


@pytest.mark.process
def test_an_error_in_any_process_stops_them_all_with_one_line(tiny_model, toy, tmp_path):
    """Bad data (found by every process) and a run folder that is not free (found by rank 0 only):
    each time one line, a non-zero exit, no hang."""
    bad = write_jsonl(tmp_path / "bad.jsonl", toy_rows(3) + ["{not json"])
    out = subprocess.run([TUNERY, "train", *_args(tiny_model, bad, tmp_path / "r", nproc=2)], env=_env(tmp_path),
                         capture_output=True, text=True, timeout=90)
    assert "bad.jsonl:4: invalid JSON" in one_line_error(out)

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    out = subprocess.run([TUNERY, "train", *_args(tiny_model, toy, tmp_path / "busy", nproc=2)], env=_env(tmp_path),
                         capture_output=True, text=True, timeout=90)
    assert "exists and is not empty" in one_line_error(out) and out.returncode == 2
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


@pytest.mark.process
def test_on_step_steers_the_processes_it_started(tiny_model, toy, tmp_path):
    """The Python API's `on_step` (the jobs worker's hook) sees every step's row from the
    launching process; a pause it asks for reaches rank 0 a step or so later (the launcher learns of
    a step once it is done), which checkpoints that step and stops every process. Sharded (FSDP)
    here: the checkpoint gathers whole weights and AdamW moments, the resume slices them again,
    and the run ends as one process's uninterrupted run does."""
    from tunery.training import train
    from tunery.training.loop import Signal, TrainingStopped

    cfg = TrainConfig(model=str(tiny_model), data=str(toy), out=str(tmp_path / "r"), nproc=2, strategy="fsdp",
                      method="full", max_steps=16, batch_size=4, lr=1e-3, save_every=100, val_split=0, seed=0,
                      precision="fp32")
    rows = []
    with pytest.raises(TrainingStopped) as stopped:
        train(cfg, progress=False, on_step=lambda row: rows.append(row) or (Signal.PAUSE if row["step"] == 3 else None))
    paused_at = stopped.value.step
    assert 3 < paused_at < 16 and [r["step"] for r in rows] == list(range(1, paused_at + 1))
    assert rows[0]["total_steps"] == 16 and RunFolder(cfg.out).checkpoints()[-1][0] == paused_at
    assert RunFolder(cfg.out).read_info().status == "interrupted"
    run = train(cfg.model_copy(update={"resume": True}), progress=False)
    assert run.info.status == "completed" and [r["step"] for r in run.metrics] == list(range(1, 17))
    one = train(cfg.model_copy(update={"nproc": 1, "out": str(tmp_path / "one")}), progress=False)
    _same_run(one.dir, run.dir)
