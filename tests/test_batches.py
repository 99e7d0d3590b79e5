"""Step groups: every example once per epoch, deterministic, and little padding when grouped by length."""

import random

import pytest
import torch

from tunery.data import Example
from tunery.config import steps_per_epoch
from tunery.training.batches import step_groups


def _examples(n=300, seed=0):
    rng = random.Random(seed)
    return [Example(i, [1] * rng.randint(5, 400), [1] * 1) for i in range(n)]


def _padding(groups):
    padded = real = 0
    for group in groups:
        for mb in group:
            width = max(len(e.input_ids) for e in mb)
            padded += width * len(mb)
            real += sum(len(e.input_ids) for e in mb)
    return padded / real - 1


def test_every_example_once_and_deterministic():
    ex = _examples()
    for by_length in (True, False):
        groups = list(step_groups(ex, seed=3, epoch=1, batch_size=4, grad_accum=2, group_by_length=by_length))
        assert len(groups) == steps_per_epoch(len(ex), 4, 2)
        seen = sorted(e.line for g in groups for mb in g for e in mb)
        assert seen == list(range(len(ex)))
        again = list(step_groups(ex, seed=3, epoch=1, batch_size=4, grad_accum=2, group_by_length=by_length))
        assert [[e.line for mb in g for e in mb] for g in groups] == [[e.line for mb in g for e in mb] for g in again]
    other_epoch = list(step_groups(ex, seed=3, epoch=2, batch_size=4, grad_accum=2))
    assert [e.line for e in other_epoch[0][0]] != [e.line for e in groups[0][0]]


def test_grouping_by_length_cuts_padding():
    ex = _examples()
    grouped = _padding(step_groups(ex, 0, 0, 8, 1, group_by_length=True))
    plain = _padding(step_groups(ex, 0, 0, 8, 1, group_by_length=False))
    assert plain > 0.5 and grouped < 0.1, (plain, grouped)


def test_shared_prefix_stops_before_the_first_target():
    from tunery.training.batches import shared_prefix_length

    rows = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 9], [1, 2, 3, 7]]
    assert shared_prefix_length(rows, [[0] * 6, [0] * 5, [0] * 4]) == 3
    # token 3 of the second row is trained, so position 2 must not be shared: prefix of 2
    assert shared_prefix_length(rows, [[0] * 6, [0, 0, 0, 1, 1], [0] * 4]) == 2
    assert shared_prefix_length([[1, 2, 3]], [[0, 0, 1]]) == 0  # nothing to share with one row
    assert shared_prefix_length([[1, 2], [1, 2]], [[0, 1], [0, 1]]) == 0  # every row keeps a token


def _qwen2(folder):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tiny import build_tokenizer

    tok = build_tokenizer(folder)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=None)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_packed_batches_match_padded_ones(tiny_model, tmp_path, arch, precision):
    """Packing (no padding, a shared prefix computed once) gives the loss and the LoRA gradients of
    running every example in its own padded row."""
    from tunery.config import TrainConfig
    from tunery.data import Example
    from tunery.models import resolve_model
    from tunery.training import attention
    from tunery.training.batches import collate
    from tunery.training.loss import TokenLoss
    from tunery.training.setup import build_model

    path = tiny_model if arch == "llama" else _qwen2(tmp_path / "qwen2")
    cfg = TrainConfig(model=str(path), data="-", method="lora", lora_r=4, precision="fp32")
    model = build_model(cfg, resolve_model(str(path)))
    assert attention.installed(model)
    for name, p in model.named_parameters():  # LoRA B starts at zero: make the adapter matter
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    loss_fn = TokenLoss(model)
    prefix = [1, 30, 31, 32, 33, 34, 35, 36, 2]
    batch = [Example(0, prefix + [40, 41, 42, 43, 2], [0] * 9 + [0, 1, 1, 1, 1]),
             Example(1, prefix + [50, 51, 2], [0] * 9 + [0, 1, 1]),
             Example(2, prefix + [60, 61, 62, 63, 64, 65, 66, 2], [0] * 9 + [0, 0, 0, 1, 1, 0, 1, 1])]

    def run(bf16=False, **how):
        model.zero_grad()
        b = collate(batch, 2, "cpu", **how)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss_sum, n = loss_fn(**b)
        loss_sum.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
        return loss_sum.item(), int(n), grads, b

    if precision == "fp32":
        ref_loss, ref_n, ref_grads, _ = run()
        for how in (dict(packed=True), dict(packed=True, share_prefix=True)):
            loss, n, grads, b = run(**how)
            assert n == ref_n == 10 and loss == pytest.approx(ref_loss, rel=1e-5)
            for k in ref_grads:
                torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-3, atol=1e-4, msg=lambda m: f"{how} {k}: {m}")
            # no padding, and the shared prefix stored once instead of three times
            shared = 9 if how.get("share_prefix") else 0
            assert b["input_ids"].shape == (1, sum(len(e.input_ids) for e in batch) - 2 * shared)
        return
    # bf16: packing must stay as close to padded batches as bf16 rounding allows
    pad_loss, _, pad_grads, _ = run(bf16=True)
    loss, _, grads, _ = run(bf16=True, packed=True, share_prefix=True)
    assert loss == pytest.approx(pad_loss, rel=1e-2)
    worst = max(((grads[k] - pad_grads[k]).norm() / pad_grads[k].norm()).item() for k in grads)
    assert worst < 0.05


def test_training_attention_keeps_padding_masks_for_generation(tiny_model):
    """While training, generation (the in-training metric) runs left-padded batches through the
    same attention: padding must stay masked, so a batch answers as each prompt alone does."""
    from transformers import AutoModelForCausalLM

    from tunery.generation import generate_batch
    from tunery.models import load_tokenizer
    from tunery.training import attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    attention.install(model)
    tok = load_tokenizer(str(tiny_model))
    prompts = [[1, 30, 31, 32, 33, 34, 35, 36, 37, 38], [1, 40, 41]]
    alone = [generate_batch(model, tok, [p], [2], max_new_tokens=6)[0].text for p in prompts]
    together = [g.text for g in generate_batch(model, tok, prompts, [2], max_new_tokens=6)]
    assert together == alone


@pytest.mark.parametrize("head_trained", [False, True])
def test_fused_output_layer_loss_matches_plain_cross_entropy(monkeypatch, head_trained):
    """The chunked, fused output layer + cross-entropy gives the plain loss and gradients (for
    the hidden states and, when trained, the output weights), across several chunks."""
    from tunery.training import loss as loss_mod

    monkeypatch.setattr(loss_mod, "CHUNK", 7)
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    head.weight.requires_grad_(head_trained)
    h = torch.randn(20, 16, requires_grad=True)
    targets = torch.randint(0, 50, (20,))
    plain = torch.nn.functional.cross_entropy(head(h), targets, reduction="sum")
    plain.backward(torch.tensor(0.5))
    ref_h, ref_w = h.grad.clone(), head.weight.grad.clone() if head_trained else None
    h.grad, head.weight.grad = None, None
    fused = loss_mod.linear_cross_entropy(h, head, targets)
    fused.backward(torch.tensor(0.5))
    assert fused.item() == pytest.approx(plain.item(), rel=1e-5)
    torch.testing.assert_close(h.grad, ref_h)
    if head_trained:
        torch.testing.assert_close(head.weight.grad, ref_w)
    with torch.no_grad():  # evaluation: no gradient work
        assert loss_mod.linear_cross_entropy(h, head, targets).item() == pytest.approx(plain.item(), rel=1e-5)
    # under bf16 autocast a frozen head is cast once and reused, with the result of casting each time
    cache = {}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fresh = loss_mod.linear_cross_entropy(h, head, targets)
        cached = [loss_mod.linear_cross_entropy(h, head, targets, cache) for _ in range(2)]
    assert bool(cache) != head_trained
    assert cached[0].item() == cached[1].item() == pytest.approx(fresh.item(), rel=1e-6)
    assert fresh.item() == pytest.approx(plain.item(), rel=0.02)


def test_heads_that_scale_logits_and_batches_without_targets(tmp_path):
    """Granite divides its logits by `logits_scaling`: the training loss must be the model's own.
    A micro-batch whose examples train nothing gives a zero loss, not an error."""
    from transformers import GraniteConfig, GraniteForCausalLM

    from tunery.data import Example
    from tunery.training import attention
    from tunery.training.batches import collate
    from tunery.training.loss import TokenLoss

    torch.manual_seed(0)
    model = GraniteForCausalLM(GraniteConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, logits_scaling=8.0, pad_token_id=None, tie_word_embeddings=True))
    attention.install(model)
    ex = Example(0, [1, 5, 6, 7, 8, 9, 2], [0, 0, 0, 1, 1, 1, 1])
    labels = torch.tensor([[t if m else -100 for t, m in zip(ex.input_ids, ex.loss_mask)]])
    with torch.no_grad():
        own = model(input_ids=torch.tensor([ex.input_ids]), labels=labels).loss.item()
        for packed in (False, True):
            loss_sum, n = TokenLoss(model)(**collate([ex, ex], 0, "cpu", packed=packed, share_prefix=True))
            assert loss_sum.item() / n == pytest.approx(own, rel=1e-5)
    untrained = Example(1, [1, 5, 6], [0, 0, 0])
    for packed in (False, True):
        loss_sum, n = TokenLoss(model)(**collate([untrained], 0, "cpu", packed=packed))
        assert n == 0 and loss_sum.item() == 0.0


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model):
    """Recomputing activations in backward (less memory) changes no number, packed batches included."""
    from tunery.config import TrainConfig
    from tunery.data import Example
    from tunery.models import resolve_model
    from tunery.training.batches import collate
    from tunery.training.loss import TokenLoss
    from tunery.training.setup import build_model

    batch = [Example(0, [1, 30, 31, 32, 40, 41, 2], [0, 0, 0, 0, 1, 1, 1]),
             Example(1, [1, 30, 31, 32, 50, 2], [0, 0, 0, 0, 1, 1])]
    grads = []
    for checkpointing in (False, True):
        cfg = TrainConfig(model=str(tiny_model), data="-", method="lora", precision="fp32",
                          gradient_checkpointing=checkpointing)
        torch.manual_seed(0)
        model = build_model(cfg, resolve_model(str(tiny_model)))
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5, generator=torch.Generator().manual_seed(len(name)))
        model.train()
        assert model.is_gradient_checkpointing == checkpointing
        loss_sum, _ = TokenLoss(model)(**collate(batch, 2, "cpu", packed=True, share_prefix=True))
        loss_sum.backward()
        grads.append({k: p.grad for k, p in model.named_parameters() if p.requires_grad})
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k])
