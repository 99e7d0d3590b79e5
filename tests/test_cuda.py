"""The CUDA paths, on a GPU: bf16 training, packed attention against padded batches, the fused
loss's gradients, QLoRA through bitsandbytes, merge parity, generation, and one host-device sync
per optimizer step. Marked `cuda` and skipped where no GPU is visible (every CPU lane collects
them and skips them); `bench/gpu_check.sh` runs them on one.
"""

import warnings

import pytest
import torch

from conftest import write_jsonl
from tunery.config import TrainConfig
from tunery.training import train

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def toy_rows(n=48):
    words = ["red", "blue", "green", "gold"]
    return [{"messages": [{"role": "user", "content": f"color {i} {words[i % 4]}"},
                          {"role": "assistant", "content": f"the color is {words[i % 4]}"}]} for i in range(n)]


@pytest.fixture
def toy_data(tmp_path):
    return write_jsonl(tmp_path / "toy.jsonl", toy_rows())


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """Wide enough for 4-bit blocks (64 values) and flash attention's head sizes (16)."""
    from tiny import build_model

    return build_model(tmp_path_factory.mktemp("wide-model"), hidden=64, layers=2)


def cfg(model, data, out, **kw):
    base = dict(model=str(model), data=str(data), out=str(out), batch_size=8, max_steps=30, lr=3e-2, method="lora",
                val_split=0.125, eval_every=10, seed=0)
    return TrainConfig(**(base | kw))


def _goes_down(run):
    losses = [r["loss"] for r in run.metrics]
    assert all(loss == loss and loss < 1e4 for loss in losses), losses  # finite
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


@pytest.mark.parametrize("method", ["lora", "full"])
def test_bf16_training_on_cuda(wide_model, toy_data, tmp_path, method):
    """precision auto is bf16 on CUDA; a LoRA base is stored in bf16 there (adapters in fp32)."""
    from tunery.models import resolve_model
    from tunery.training.setup import build_model

    run = train(cfg(wide_model, toy_data, tmp_path / method, method=method, lr=3e-2 if method == "lora" else 1e-2),
                progress=False)
    assert run.config["precision"] == "bf16"
    _goes_down(run)
    vals = [r["val_loss"] for r in run.metrics if "val_loss" in r]
    assert vals[-1] < vals[0]
    if method == "lora":
        model = build_model(cfg(wide_model, toy_data, tmp_path / "x"), resolve_model(str(wide_model)))
        dtypes = {n: p.dtype for n, p in model.named_parameters()}
        assert all(p.device.type == "cuda" for p in model.parameters())
        assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
        assert {d for n, d in dtypes.items() if "lora_" not in n} == {torch.bfloat16}
        # the adapters take the bf16 input as it is (no fp32 copy for autocast to cast back)
        from peft.tuners.lora import LoraLayer

        layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        assert layers and not any(m.cast_input_dtype_enabled for m in layers)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_packed_attention_matches_padded_on_cuda(wide_model, precision):
    """Packed micro-batches (SDPA's CUDA kernels over the gathered rows, a shared prefix once) give
    the loss and LoRA gradients of padded rows."""
    from tunery.data import Example
    from tunery.models import resolve_model
    from tunery.training import attention
    from tunery.training.batches import collate
    from tunery.training.loss import TokenLoss
    from tunery.training.setup import build_model

    c = TrainConfig(model=str(wide_model), data="-", method="lora", lora_r=4, precision=precision)
    model = build_model(c, resolve_model(str(wide_model)))
    assert attention.installed(model)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    loss_fn = TokenLoss(model)
    prefix = [1, 30, 31, 32, 33, 34, 35, 36, 2]
    batch = [Example(0, prefix + [40, 41, 42, 43, 2], [0] * 9 + [0, 1, 1, 1, 1]),
             Example(1, prefix + [50, 51, 2], [0] * 9 + [0, 1, 1]),
             Example(2, prefix + list(range(60, 140)) + [2], [0] * 9 + [0] * 3 + [1] * 78)]

    def run(**how):
        model.zero_grad()
        b = collate(batch, 2, "cuda", **how)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss_sum, n = loss_fn(**b)
        loss_sum.backward()
        return loss_sum.item(), int(n), {k: p.grad.float().clone() for k, p in model.named_parameters() if p.requires_grad}

    ref_loss, ref_n, ref_grads = run()
    for how in (dict(packed=True), dict(packed=True, share_prefix=True)):
        loss, n, grads = run(**how)
        assert n == ref_n
        # fp32: rounding only; bf16: as close as bf16 rounding allows
        assert loss == pytest.approx(ref_loss, rel=1e-4 if precision == "fp32" else 1e-2)
        worst = max(((grads[k] - ref_grads[k]).norm() / ref_grads[k].norm()).item() for k in grads)
        assert worst < (1e-4 if precision == "fp32" else 0.05), (how, worst)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("frozen_head", [False, True])
def test_fused_loss_gradients_on_cuda(autocast, frozen_head):
    """The chunked loss (gradient computed in the forward pass) against plain cross-entropy over
    full logits, across chunk boundaries; and the per-token log-probabilities' backward."""
    from torch.nn import functional as F

    from tunery.training.loss import CHUNK, linear_cross_entropy, linear_logprobs

    torch.manual_seed(0)
    n, hidden, vocab = 2 * CHUNK + 300, 64, 1000
    head = torch.nn.Linear(hidden, vocab, bias=False, device="cuda")
    head.weight.requires_grad_(not frozen_head)
    h = torch.randn(n, hidden, device="cuda", requires_grad=True)
    targets = torch.randint(vocab, (n,), device="cuda")
    weights = torch.rand(n, device="cuda")
    ctx = lambda: torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast)  # noqa: E731

    def grads(loss):
        loss.backward()
        out = [h.grad.clone()] + ([] if frozen_head else [head.weight.grad.clone()])
        h.grad = head.weight.grad = None
        return loss.detach().float(), out

    with ctx():
        fused = grads(linear_cross_entropy(h, head, targets, {}))
    with ctx():
        plain = grads(F.cross_entropy(head(h).float(), targets, reduction="sum"))
    with ctx():
        fused_lp = grads((linear_logprobs(h, head, targets, {}) * weights).sum())
    with ctx():
        plain_lp = grads((F.log_softmax(head(h).float(), -1).gather(1, targets[:, None])[:, 0] * weights).sum())
    tol = 2e-2 if autocast else 1e-4
    for (a_loss, a), (b_loss, b) in ((fused, plain), (fused_lp, plain_lp)):
        assert abs(a_loss - b_loss) / abs(b_loss) < tol
        for x, y in zip(a, b):
            assert x.dtype == y.dtype
            assert ((x.float() - y.float()).norm() / y.float().norm()).item() < tol


def test_qlora_trains_on_cuda(wide_model, toy_data, tmp_path):
    """QLoRA: the base's linear layers in 4 bits (bitsandbytes nf4), the rest of the base bf16,
    the adapter fp32; it learns, and its adapter loads for inference."""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    from tunery.models import resolve_model
    from tunery.training.setup import build_model

    model = build_model(cfg(wide_model, toy_data, tmp_path / "x", method="qlora"), resolve_model(str(wide_model)))
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 2 * 7
    dtypes = {n: p.dtype for n, p in model.named_parameters() if "lora_" not in n and p.dtype.is_floating_point}
    assert set(dtypes.values()) == {torch.bfloat16}, dtypes
    del model
    run = train(cfg(wide_model, toy_data, tmp_path / "q", method="qlora"), progress=False)
    assert run.config["precision"] == "bf16"
    _goes_down(run)
    assert (run.dir / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_merge_matches_adapter_logits_after_cuda_training(wide_model, toy_data, tmp_path, method):
    """An adapter trained on the GPU merges (fp32, never into a 4-bit base) into weights whose
    logits are the adapter's over the same fp32 base."""
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunery.export import merge_run

    run = train(cfg(wide_model, toy_data, tmp_path / "run", method=method, max_steps=8, val_split=0), progress=False)
    merged_dir = merge_run(run.dir, tmp_path / "merged")
    ids = torch.tensor([[1, 5, 17, 42, 99, 7, 2]], device="cuda")
    base = AutoModelForCausalLM.from_pretrained(wide_model, dtype=torch.float32).cuda()
    with_adapter = PeftModel.from_pretrained(base, run.dir / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).cuda().eval()
    with torch.no_grad():
        a, m = with_adapter(ids).logits, merged(ids).logits
        with with_adapter.disable_adapter():
            p = with_adapter(ids).logits
    torch.testing.assert_close(a, m, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(a, p, atol=1e-3), "the adapter changed nothing"


def test_generation_on_cuda(wide_model, toy_data, tmp_path):
    """A run answers on the GPU (bf16 by default); in fp32 a left-padded batch answers exactly as
    each prompt alone."""
    from tunery.generation import Generator

    run = train(cfg(wide_model, toy_data, tmp_path / "run", max_steps=10, val_split=0), progress=False)
    gen = Generator(str(run.dir))
    param = next(gen.model.parameters())
    assert (param.device.type, param.dtype) == ("cuda", torch.bfloat16)
    out = gen.chat([[{"role": "user", "content": "color 1 blue"}]], max_new_tokens=8)
    assert out[0].completion_tokens >= 1
    gen32 = Generator(str(run.dir), dtype=torch.float32)
    chats = [[{"role": "user", "content": "color 1 blue"}],
             [{"role": "user", "content": "color 22 green, and a much longer question than the other one"}]]
    batched = gen32.chat(chats, max_new_tokens=8)
    alone = [gen32.chat([c], max_new_tokens=8)[0] for c in chats]
    assert [b.token_ids for b in batched] == [a.token_ids for a in alone]


def test_one_host_sync_per_optimizer_step(wide_model, toy_data, tmp_path):
    """Between two optimizer steps the host waits for the GPU once (the step's loss and gradient
    norm, read together): batches go up from pinned memory asynchronously, packed attention builds
    no mask, the fused loss and clipping stay on the device. Counted by PyTorch's sync debug mode."""
    counts, seen = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def on_step(row):
            syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
            counts.append(len(syncs))
            seen.append(syncs)

        torch.cuda.set_sync_debug_mode("warn")
        try:
            train(cfg(wide_model, toy_data, tmp_path / "run", max_steps=5, val_split=0, share_prefix=True,
                      grad_accum=2, batch_size=4), progress=False, on_step=on_step)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    per_step = [b - a for a, b in zip(counts, counts[1:])]
    print("host syncs per optimizer step:", per_step)
    # exactly one: none at all would mean the counting saw nothing
    assert per_step and set(per_step) == {1}, (per_step, seen[-1][-5:])
