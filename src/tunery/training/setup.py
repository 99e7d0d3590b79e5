"""Build the model to train: the base model, plus a LoRA/DoRA adapter or with every weight
trainable (full), or 4-bit quantised under the adapter (QLoRA, CUDA only).

Training from an adapter fine-tune (a run or ft:... of LoRA/DoRA/QLoRA) starts from that model:
an adapter method continues its adapter (its rank and target modules; the new run's adapter
still applies to the same base, so serving and exports need nothing else), a full fine-tune
starts from the adapter merged into the base."""

from ..config import TrainConfig
from ..errors import ConfigError, TuneryError
from ..models import ResolvedModel
from . import attention


def device_and_dtype(cfg: TrainConfig):
    """fp32 or bf16 compute: auto takes bf16 on CUDA and on CPUs measured to run it faster."""
    import torch

    from ..models.hardware import cpu_bf16_is_fast, default_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.precision == "fp32":
        return device, torch.float32
    if cfg.precision == "bf16":
        if device == "cpu" and not cpu_bf16_is_fast():
            raise ConfigError("precision: this CPU has no fast bf16 (no AVX512-BF16 or AMX it may use, or measured "
                              "slower than fp32); use fp32 or auto", "precision")
        return device, torch.bfloat16
    return device, default_dtype(device)


def check_method_supported(cfg: TrainConfig) -> None:
    """Refuse what this machine cannot do before any compute is spent."""
    import torch

    if cfg.strategy == "fsdp" and cfg.method != "full":
        raise ConfigError(f"strategy: fsdp shards a full fine-tune; {cfg.method} trains a small adapter, "
                          "which ddp replicates cheaply (use --strategy ddp or auto)", field="strategy")

    if cfg.method == "qlora":
        if not torch.cuda.is_available():
            raise ConfigError("method: qlora quantises the base to 4 bits with bitsandbytes, which needs a CUDA GPU; "
                              "on CPU use --method lora")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError("method: qlora needs bitsandbytes", field="method", hint="run `pip install bitsandbytes`") from None


def build_model(cfg: TrainConfig, base: ResolvedModel):
    """Return the trainable model (a PeftModel for adapter methods) on its device."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..models.hf import quiet_transformers

    quiet_transformers()
    device, dtype = device_and_dtype(cfg)
    kwargs = dict(trust_remote_code=False, use_safetensors=True)
    if cfg.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": 0}
    # Weights stay fp32 and autocast computes matmuls in bf16, keeping the residual stream, norms
    # and softmax in fp32 (a bf16-stored base trained measurably worse on CPU: val loss 0.66 vs
    # 0.49 after 10 steps). Only an adapter's frozen base on CUDA is stored in bf16, to halve GPU
    # memory (QLoRA: what bitsandbytes leaves unquantised, the embeddings and norms).
    load_dtype = dtype if (cfg.method in ("lora", "dora", "qlora") and device == "cuda") else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(base.path, dtype=load_dtype, **kwargs)
    except Exception as exc:
        raise TuneryError(f"{base.path}: cannot load model ({type(exc).__name__}: {exc})") from None
    if cfg.method != "qlora":
        model.to(device)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        # non-reentrant: works with frozen inputs (LoRA) and keyword arguments (packed layouts)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if attention.packing_supported(model.config, cfg.max_length):
        attention.install(model)  # padding-free micro-batches, a shared prefix computed once
    if cfg.method == "full":
        if base.adapter is not None:  # start from the fine-tune: its adapter merged into the base
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(base.adapter)).merge_and_unload()
        model.requires_grad_(True)
        return model

    from peft import LoraConfig, get_peft_model

    # QLoRA: no peft `prepare_model_for_kbit_training`, which casts every unquantised weight to
    # fp32 (for fp16 training): under bf16 autocast that only doubles the embeddings' memory (a
    # tied 49k x 2048 table is 0.4 GB in fp32) and adds a bf16 copy of the output layer per step.
    if base.adapter is not None:
        model = _continued_adapter(model, base, cfg)
    else:
        lora = LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=cfg.target_modules, use_dora=cfg.method == "dora", bias="none", task_type="CAUSAL_LM",
        )
        try:
            model = get_peft_model(model, lora)
        except ValueError as exc:
            raise ConfigError(f"target_modules: {exc}") from None
    if device == "cpu" and dtype == torch.bfloat16 and cfg.method == "lora":
        _store_frozen_linears_in_bf16(model)
    if device == "cuda" and load_dtype == torch.bfloat16 and cfg.method == "lora":
        _keep_adapter_inputs_bf16(model)
    return model  # peft keeps adapter weights in fp32 over a bf16 base (autocast_adapter_dtype)


def _continued_adapter(model, base: ResolvedModel, cfg: TrainConfig):
    """The fine-tune's own adapter, trainable: its weights are where this run starts."""
    import json

    from peft import PeftModel

    adapter_cfg = json.loads((base.adapter / "adapter_config.json").read_text())
    kind = "dora" if adapter_cfg.get("use_dora") else "lora"
    wanted = "lora" if cfg.method == "qlora" else cfg.method
    if kind != wanted:
        raise ConfigError(f"method: {base.reference} is a {kind} fine-tune; training from it continues its adapter, "
                          f"so use --method {kind} (or full, which starts from it merged)", field="method")
    try:
        return PeftModel.from_pretrained(model, str(base.adapter), is_trainable=True)
    except Exception as exc:
        raise TuneryError(f"{base.adapter}: cannot load the adapter to continue ({type(exc).__name__}: {exc})") from None


def _store_frozen_linears_in_bf16(model) -> None:
    """Under bf16 autocast every matmul casts its fp32 weight to bf16, each forward pass (measured:
    8% of a CPU step). The frozen base weights under LoRA adapters are cast once instead, which is
    the same arithmetic; norms, embeddings and the residual stream stay fp32. (DoRA is excluded:
    it computes weight norms from the stored base weight.)"""
    import torch
    from peft.tuners.lora import LoraLayer

    embedding = model.get_input_embeddings().weight  # a tied output layer shares it: it stays fp32
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if isinstance(module, LoraLayer) and isinstance(base, torch.nn.Linear) and not base.weight.requires_grad \
                and base.weight is not embedding:
            base.weight.data = base.weight.data.to(torch.bfloat16)


def _keep_adapter_inputs_bf16(model) -> None:
    """peft casts each LoRA layer's input to the adapter's dtype (fp32) before autocast casts it
    back to bf16 for the matmul: two copies of every adapted layer's input per pass, and the bf16
    copy is kept for backward beside the input the base layer already keeps (measured on an H100,
    1B Llama, 10k tokens a step: ~6 GB more memory and a fifth of the GPU's time in copies). The
    input goes to the adapter as it is: the same bf16 operands, so the same arithmetic. Only where
    every pass runs under bf16 autocast (the frozen base stored in bf16 on CUDA)."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.cast_input_dtype_enabled = False


def base_parameters(base: ResolvedModel) -> int:
    """The base model's parameter count, from its safetensors headers (nothing is loaded)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(base.path.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            for key in f.keys():
                n = 1
                for d in f.get_slice(key).get_shape():
                    n *= d
                total += n
    return total


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
