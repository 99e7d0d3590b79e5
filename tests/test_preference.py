"""Preference tuning: pair formats and the doctor's checks, the dpo and simpo objectives on tiny
models (step-0 loss, logged rewards, exact resume, the reference kept in the run), training from a
LoRA fine-tune, pref_accuracy in eval, and method.type dpo in the jobs API."""

import json
import math

import pytest
import torch

from conftest import write_jsonl
from tunery.config import TrainConfig
from tunery.data.formats import normalise
from tunery.errors import ConfigError
from tunery.run_folder import RunFolder
from tunery.training import train


def pair_rows(n=32):
    """Short answers preferred to long, wrong ones."""
    words = ["red", "blue", "green", "gold"]
    return [{"prompt": f"color {i} {words[i % 4]}", "chosen": f"the color is {words[i % 4]}",
             "rejected": f"I think that the color might be {words[(i + 1) % 4]}, maybe"} for i in range(n)]


@pytest.fixture
def pairs(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", pair_rows())


def cfg(tiny_model, data, out, **kw):
    base = dict(model=str(tiny_model), data=str(data), out=str(out), batch_size=4, max_steps=6, lr=1e-2,
                val_split=0.125, eval_every=3, seed=0, objective="dpo", precision="fp32")
    return TrainConfig(**(base | kw))


# -- formats and the doctor ------------------------------------------------------------------------

def test_preference_shapes_normalise_alike():
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    a = {"role": "assistant", "content": "Hello."}
    b = {"role": "assistant", "content": "What do you want?"}
    shapes = [
        {"prompt": prompt, "chosen": "Hello.", "rejected": "What do you want?"},
        {"prompt": prompt, "chosen": [a], "rejected": [b]},
        {"input": {"messages": prompt}, "preferred_output": [a], "non_preferred_output": [b]},
        {"chosen": prompt + [a], "rejected": prompt + [b]},
    ]
    for row in shapes:
        conv, issues = normalise(1, row, "preference")
        assert not issues, (row, issues)
        assert conv.messages == prompt + [a] and conv.rejected == [b]
        chosen, rejected = conv.sides()
        assert rejected.messages == prompt + [b] and rejected.weights[-1] == 1.0 and chosen.weights[-1] == 1.0
    conv, _ = normalise(1, {"prompt": "q", "chosen": "a", "rejected": "b"}, "preference")
    assert conv.messages == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


def test_a_prompts_own_assistant_turns_are_not_trained(tiny_tokenizer):
    from tunery.data.render import Renderer
    from tunery.data.template import load_template

    prompt = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "earlier answer"},
              {"role": "user", "content": "two"}]
    conv, _ = normalise(1, {"prompt": prompt, "chosen": "yes", "rejected": "no"}, "preference")
    enc = Renderer(tiny_tokenizer, load_template(tiny_tokenizer)).encode_many([conv])[0]
    for side, answer in ((enc.chosen, "yes"), (enc.rejected, "no")):
        trained = tiny_tokenizer.decode([t for t, m in zip(side.input_ids, side.loss_mask) if m])
        assert trained == answer + "<|im_end|>"


def test_doctor_checks_pairs(tiny_model, tmp_path):
    from tunery.data.doctor import check_dataset

    rows = pair_rows(4) + [
        {"prompt": "q", "chosen": "same", "rejected": "same"},                                   # 5 same_answers
        {"prompt": "q", "chosen": "x"},                                                          # 6 missing_answer
        {"prompt": "q", "chosen": "x", "rejected": [{"role": "user", "content": "y"}]},           # 7 bad_answer
        {"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
         "rejected": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]},  # 8 missing_prompt
        {"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
         "chosen": "x", "rejected": "y"},                                                        # 9 bad_prompt
        {"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": "fine",
         "non_preferred_output": []},                                                            # 10 missing_answer
    ]
    report = check_dataset(write_jsonl(tmp_path / "p.jsonl", rows), model=str(tiny_model))
    assert report["stats"]["format"] == "preference" and report["good"] == 4
    assert [(e["line"], e["code"]) for e in report["errors"]] == [
        (5, "same_answers"), (6, "missing_answer"), (7, "bad_answer"), (8, "missing_prompt"), (9, "bad_prompt"),
        (10, "missing_answer")]
    with_all = check_dataset(write_jsonl(tmp_path / "q.jsonl", pair_rows(2)), model=str(tiny_model), mask="all")
    assert {e["code"] for e in with_all["errors"]} == {"bad_mask"}


def test_pairs_that_differ_only_in_the_answer_are_not_duplicates(tiny_model, tmp_path):
    from tunery.data.doctor import check_dataset

    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a", "rejected": "c"},
            {"prompt": "q", "chosen": "a", "rejected": "b"}]
    report = check_dataset(write_jsonl(tmp_path / "p.jsonl", rows), model=str(tiny_model))
    assert [(w["line"], w["code"]) for w in report["warnings"]] == [(3, "duplicate")]


def test_show_prints_both_sides(tiny_model, pairs):
    from clirun import tunery_cli

    out = tunery_cli("data", "check", str(pairs), "--model", str(tiny_model), "--show", "1")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "[chosen]" in text and "[rejected]" in text
    assert "⟦the color is red<|im_end|>⟧" in text and "⟦I think that the color might be blue, maybe<|im_end|>⟧" in text


# -- the objectives --------------------------------------------------------------------------------

def test_chunked_logprobs_and_their_gradient_match_log_softmax(monkeypatch):
    """Per-token log-probabilities in chunks, logits recomputed in backward, any weight per token."""
    from torch import nn

    from tunery.training import loss

    monkeypatch.setattr(loss, "CHUNK", 3)  # several chunks
    torch.manual_seed(0)
    head = nn.Linear(16, 50, bias=False)
    h = torch.randn(7, 16, requires_grad=True)
    targets, upstream = torch.randint(0, 50, (7,)), torch.randn(7)
    ours = loss.linear_logprobs(h, head, targets)
    (ours * upstream).sum().backward()
    grads = h.grad.clone(), head.weight.grad.clone()
    h.grad = head.weight.grad = None
    plain = torch.log_softmax(h @ head.weight.T, -1)[torch.arange(7), targets]
    (plain * upstream).sum().backward()
    torch.testing.assert_close(ours, plain, rtol=0, atol=1e-5)
    torch.testing.assert_close(grads[0], h.grad, rtol=0, atol=1e-5)
    torch.testing.assert_close(grads[1], head.weight.grad, rtol=0, atol=1e-5)


def test_dpo_starts_at_log2_and_learns_the_preference(tiny_model, pairs, tmp_path):
    run = train(cfg(tiny_model, pairs, tmp_path / "r", max_steps=8, eval_every=4), progress=False)
    first, last = run.metrics[0], run.metrics[-1]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)  # the policy is the reference at step 0
    assert first["rewards_margin"] == first["rewards_chosen"] == first["rewards_rejected"] == 0
    for key in ("rewards_chosen", "rewards_rejected", "rewards_margin", "accuracy", "val_loss", "val_accuracy",
                "val_rewards_margin", "val_rewards_chosen", "val_rewards_rejected"):
        assert key in last, key
    assert last["loss"] < 0.5 and last["accuracy"] == 1.0 and last["rewards_margin"] > 0
    assert last["rewards_margin"] == pytest.approx(last["rewards_chosen"] - last["rewards_rejected"], abs=1e-5)
    assert last["val_loss"] < math.log(2)
    config = RunFolder(run.dir).read_config()
    assert config["objective"] == "dpo" and config["beta"] == 0.1
    stored = __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(RunFolder(run.dir).reference_file))
    assert stored["train.logprobs"].shape == (28, 2) and stored["val.logprobs"].shape == (4, 2)
    assert (stored["train.logprobs"] < 0).all()


def test_dpo_loss_is_the_sigmoid_of_the_reward_margin(tiny_model, pairs, tmp_path):
    """Beta scales the rewards: each logged step obeys loss = mean(-log sigmoid(margin)) for one pair a step."""
    run = train(cfg(tiny_model, pairs, tmp_path / "r", batch_size=1, max_steps=4, val_split=0, beta=0.5),
                progress=False)
    for row in run.metrics:
        assert row["loss"] == pytest.approx(-torch.nn.functional.logsigmoid(torch.tensor(row["rewards_margin"])).item(),
                                            abs=1e-5)
        assert row["accuracy"] == float(row["rewards_margin"] > 0)


def test_simpo_needs_no_reference(tiny_model, pairs, tmp_path):
    run = train(cfg(tiny_model, pairs, tmp_path / "r", objective="simpo", batch_size=1, max_steps=3, val_split=0),
                progress=False)
    assert not RunFolder(run.dir).reference_file.exists()
    config = RunFolder(run.dir).read_config()
    assert config["beta"] == 2.0 and config["simpo_gamma"] == 1.0
    for row in run.metrics:  # length-normalised rewards, offset by gamma
        margin = torch.tensor(row["rewards_margin"])
        assert row["loss"] == pytest.approx(-torch.nn.functional.logsigmoid(margin - 1.0).item(), abs=1e-5)
    assert run.metrics[0]["loss"] != pytest.approx(math.log(2), abs=1e-3)


def test_dpo_resume_is_exact_and_reads_the_stored_reference(tiny_model, pairs, tmp_path):
    from safetensors.torch import load_file

    from tunery.training.loop import Signal, TrainingStopped

    kw = dict(max_steps=6, save_every=100, eval_every=2, lora_dropout=0.1)
    whole = train(cfg(tiny_model, pairs, tmp_path / "whole", **kw), progress=False)
    with pytest.raises(TrainingStopped):
        train(cfg(tiny_model, pairs, tmp_path / "paused", **kw), progress=False,
              on_step=lambda row: Signal.PAUSE if row["step"] == 3 else None)
    reference = RunFolder(tmp_path / "paused").reference_file
    stored = reference.read_bytes()
    resumed = train(cfg(tiny_model, pairs, tmp_path / "paused", resume=True, **kw), progress=False)
    assert reference.read_bytes() == stored  # read, not recomputed from the resumed (moved) model
    for a, b in zip(whole.metrics, resumed.metrics):
        for key in ("loss", "rewards_margin", "accuracy", "grad_norm", "val_loss", "val_rewards_margin"):
            assert a.get(key) == b.get(key), (a["step"], key)
    wa = load_file(whole.dir / "adapter" / "adapter_model.safetensors")
    wb = load_file(resumed.dir / "adapter" / "adapter_model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)


def test_resume_without_its_reference_is_refused(tiny_model, pairs, tmp_path):
    from tunery.errors import TuneryError
    from tunery.training.loop import Signal, TrainingStopped

    kw = dict(max_steps=4, save_every=100)
    with pytest.raises(TrainingStopped):
        train(cfg(tiny_model, pairs, tmp_path / "r", **kw), progress=False,
              on_step=lambda row: Signal.PAUSE if row["step"] == 2 else None)
    RunFolder(tmp_path / "r").reference_file.unlink()
    with pytest.raises(TuneryError, match="reference.safetensors is missing"):
        train(cfg(tiny_model, pairs, tmp_path / "r", resume=True, **kw), progress=False)


def test_dpo_from_a_lora_fine_tune_continues_its_adapter(tiny_model, pairs, tmp_path):
    """The reference is the SFT model (its adapter applied), and the new run's adapter starts from it."""
    from safetensors.torch import load_file

    from tunery.evaluate.evaluator import preference_scores, scan_for_eval
    from tunery.generation import Generator

    sft = train(cfg(tiny_model, pairs, tmp_path / "sft", objective="sft", max_steps=6, val_split=0), progress=False)
    assert sft.metrics[0]["loss"] > 1  # sft on a preference file: cross-entropy of the chosen answers
    dpo = train(cfg(sft.dir, pairs, tmp_path / "dpo", max_steps=2, val_split=0, lr=1e-9), progress=False)
    ref = load_file(str(RunFolder(dpo.dir).reference_file))["train.logprobs"]
    gen = Generator(str(sft.dir))
    scores = preference_scores(gen, scan_for_eval(gen, pairs, TrainConfig(model=str(sft.dir), data=str(pairs))))
    assert scores["pref_margin"] == pytest.approx(float((ref[:, 0] - ref[:, 1]).mean()), rel=1e-4)
    a = load_file(sft.dir / "adapter" / "adapter_model.safetensors")
    b = load_file(dpo.dir / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:  # lr 1e-9: still the SFT adapter, not a fresh one (whose B matrices start at zero)
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="is a lora fine-tune"):
        train(cfg(sft.dir, pairs, tmp_path / "dora", method="dora", max_steps=1), progress=False)


def test_dpo_refuses_a_file_without_pairs(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                               {"role": "assistant", "content": "a"}]}] * 4)
    with pytest.raises(ConfigError, match="objective: dpo trains on preference pairs, but .* holds chat examples"):
        train(cfg(tiny_model, data, tmp_path / "r"), progress=False)
    assert not (tmp_path / "r").exists()


def test_cli_dpo_flags(tiny_model, pairs, tmp_path):
    from clirun import one_line_error, tunery_cli

    out = tunery_cli("train", "--model", str(tiny_model), "--data", str(pairs), "--objective", "dpo", "--beta", "0.2",
                     "--max-steps", "2", "--batch-size", "4", "--out", str(tmp_path / "r"), "--val-split", "0")
    assert out.returncode == 0, out.stderr
    config = RunFolder(tmp_path / "r").read_config()
    assert config["objective"] == "dpo" and config["beta"] == 0.2 and config["lr"] == pytest.approx(2e-5)
    bad = tunery_cli("train", "--model", str(tiny_model), "--data", str(pairs), "--objective", "ppo")
    assert "objective" in one_line_error(bad)


# -- eval and the jobs API -------------------------------------------------------------------------

def test_eval_on_pairs_reports_pref_accuracy(tiny_model, pairs, tmp_path):
    from tunery.evaluate.evaluator import evaluate_model

    run = train(cfg(tiny_model, pairs, tmp_path / "r", max_steps=8, val_split=0), progress=False)
    before = evaluate_model(str(tiny_model), pairs, ["exact"], max_new_tokens=4)
    after = evaluate_model(str(run.dir), pairs, ["exact"], max_new_tokens=4)
    for result in (before, after):
        assert result["pairs"] == 32 and 0 <= result["metrics"]["pref_accuracy"] <= 1
    assert after["metrics"]["pref_margin"] > before["metrics"]["pref_margin"]
    assert after["metrics"]["pref_accuracy"] >= before["metrics"]["pref_accuracy"]


def test_jobs_api_dpo_method():
    from tunery.serve.jobs import JobRequest, config_for

    def config(body):
        request = JobRequest(**({"model": "default", "training_file": "file-x"} | body)).model_dump(exclude_none=True)
        return config_for(request, "ftjob-" + "0" * 24)

    c = config({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25, "learning_rate_multiplier": 2}}}})
    assert c.objective == "dpo" and c.beta == 0.25 and c.lr == pytest.approx(4e-5)
    assert config({"method": {"type": "dpo"}}).objective == "dpo"
    assert config({"method": {"type": "dpo"}, "tunery": {"objective": "simpo"}}).objective == "simpo"
    assert config({}).objective == "sft"
    with pytest.raises(ConfigError, match="contradicts"):
        config({"method": {"type": "dpo"}, "tunery": {"objective": "sft"}})
    from pydantic import ValidationError

    with pytest.raises(ValidationError):  # beta is a dpo hyperparameter, not a supervised one
        JobRequest(model="default", training_file="file-x",
                   method={"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}})
    with pytest.raises(ValidationError):
        JobRequest(model="default", training_file="file-x", method={"type": "reinforcement"})


def test_job_object_reports_the_dpo_method():
    from tunery.serve.jobs import job_object

    request = {"model": "default", "training_file": "file-x", "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.3}}}}
    row = {"id": "ftjob-" + "1" * 24, "model": "default", "created_at": 0, "finished_at": None, "fine_tuned_model": None,
           "status": "queued", "training_file": "file-x", "validation_file": None, "trained_tokens": None, "error": None,
           "estimated_finish": None, "request": json.dumps(request), "config": json.dumps({"objective": "dpo", "beta": 0.3}),
           "run_dir": None}
    job = job_object(row)
    assert job["method"]["type"] == "dpo" and job["method"]["dpo"]["hyperparameters"]["beta"] == 0.3


# -- against TRL -------------------------------------------------------------------------------------

NO_NEWLINE_CHATML = (  # ChatML with nothing after <|im_end|>: TRL scores the same answer tokens as tunery
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _tunery_dpo_step0(policy_dir, ref_dir, path, beta: float) -> dict:
    """tunery's objective on the pairs of a file, the reference's log-probabilities from another model."""
    import contextlib
    import functools

    from transformers import AutoModelForCausalLM

    from tunery.data.dataset import Pairs, scan_file
    from tunery.data.doctor import make_renderer
    from tunery.models import load_tokenizer
    from tunery.training.batches import collate
    from tunery.training.distributed import World
    from tunery.training.loss import TokenLoss
    from tunery.training.objectives import Preference, sequence_logprobs

    tokenizer = load_tokenizer(str(policy_dir))
    scan = scan_file(path, make_renderer(tokenizer, TrainConfig(model=str(policy_dir), data=str(path))),
                     max_length=1024, keep=True)
    pairs = Pairs(scan.kept)
    results = []
    for packed in (False, True):  # padded and packed micro-batches give the same numbers
        batch_of = functools.partial(collate, pad_id=tokenizer.pad_token_id, device="cpu", packed=packed)
        models = [AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32) for d in (policy_dir, ref_dir)]
        if packed:
            from tunery.training import attention

            for m in models:
                attention.install(m)
        reference = sequence_logprobs(TokenLoss(models[1]), pairs, batch_of, contextlib.nullcontext, 8, World())
        objective = Preference("dpo", beta, reference={"train": reference})
        mb = list(pairs)
        with torch.no_grad():
            loss, stats = objective.loss(TokenLoss(models[0]), batch_of(objective.rows(mb), sequences=True), mb)
        results.append({"loss": float(loss) / len(mb)} | {k: float(v) / len(mb) for k, v in stats.items()})
    assert results[1] == pytest.approx(results[0], abs=1e-5)
    return results[0] | {"tokens": [(p.chosen, p.rejected) for p in pairs]}


@pytest.mark.parametrize("template", ["chatml", "no_newline"])
def test_dpo_step0_matches_trl(tmp_path, template):
    """The same pairs, policy and reference: tunery's DPO loss and rewards are TRL DPOTrainer's at step 0.
    With ChatML, TRL also scores the newline the template writes after <|im_end|>, which tunery does
    not train (the turn ends at its end-of-turn token): the tokens differ by exactly that newline, and
    the loss matches on a template that writes nothing after it."""
    pytest.importorskip("trl")
    from tiny import build_model
    from transformers import AutoTokenizer
    from trl_dpo import trl_dpo_step0

    policy, ref = build_model(tmp_path / "policy", seed=0), build_model(tmp_path / "ref", seed=1)
    if template == "no_newline":
        for folder in (policy, ref):
            tok = AutoTokenizer.from_pretrained(folder)
            tok.chat_template = NO_NEWLINE_CHATML
            tok.save_pretrained(folder)
    prompts = ["What is the capital of France?", "2+2?", "Say hello"]
    chosen = ["Paris.", "4", "Hello!"]
    rejected = ["It is London, I believe.", "The answer is five.", "Go away."]
    trl_pairs = [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
                  "rejected": [{"role": "assistant", "content": r}]} for p, c, r in zip(prompts, chosen, rejected)]
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": p, "chosen": c, "rejected": r}
                                                  for p, c, r in zip(prompts, chosen, rejected)])
    theirs = trl_dpo_step0(policy, ref, trl_pairs, beta=0.1)
    ours = _tunery_dpo_step0(policy, ref, path, beta=0.1)
    newline = AutoTokenizer.from_pretrained(policy).convert_tokens_to_ids("Ċ")  # byte-level "\n"
    for t, sides in zip(theirs["tokens"], ours["tokens"]):
        for scored, ours_ in zip((t["chosen_ids"], t["rejected_ids"]), sides):
            assert t["prompt_ids"] + scored == ours_.input_ids  # the same sequence ...
            trained = [i for i, m in zip(ours_.input_ids, ours_.loss_mask) if m]
            assert trained + ([newline] if template == "chatml" else []) == scored  # ... scored on the answer
    if template == "no_newline":
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-5)
        assert ours["rewards_chosen"] == pytest.approx(theirs["rewards/chosen"], abs=1e-5)
        assert ours["rewards_rejected"] == pytest.approx(theirs["rewards/rejected"], abs=1e-5)
        assert ours["rewards_margin"] == pytest.approx(theirs["rewards/margins"], abs=1e-5)
        assert ours["accuracy"] == pytest.approx(theirs["rewards/accuracies"], abs=1e-6)
    assert 0.3 < theirs["loss"] < 1.5 and abs(theirs["rewards/margins"]) > 1e-3  # policy and reference differ
