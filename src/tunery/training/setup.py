"""Build the model to train: the base model, plus a LoRA/DoRA adapter or with every weight
trainable (full), or 4-bit quantised under the adapter (QLoRA, CUDA only)."""

from ..config import TrainConfig
from ..errors import ConfigError, TuneryError
from ..models import ResolvedModel


def device_and_dtype(cfg: TrainConfig):
    import torch

    cuda = torch.cuda.is_available()
    if cfg.precision == "bf16" and not cuda:
        # bf16 matmuls run ~80x slower than fp32 on typical CPUs.
        raise ConfigError("precision: bf16 needs a CUDA GPU; on CPU use fp32 (or auto)")
    dtype = torch.float32 if (cfg.precision == "fp32" or not cuda) else torch.bfloat16
    return ("cuda" if cuda else "cpu"), dtype


def check_method_supported(cfg: TrainConfig) -> None:
    """Refuse what this machine cannot do before any compute is spent."""
    import torch

    if cfg.method == "qlora":
        if not torch.cuda.is_available():
            raise ConfigError("method: qlora quantises the base to 4 bits with bitsandbytes, which needs a CUDA GPU; "
                              "on CPU use --method lora")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError("method: qlora needs bitsandbytes: pip install bitsandbytes") from None


def build_model(cfg: TrainConfig, base: ResolvedModel):
    """Return the trainable model (a PeftModel for adapter methods) on its device."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..models.load import quiet_transformers

    quiet_transformers()
    device, dtype = device_and_dtype(cfg)
    kwargs = dict(trust_remote_code=False, use_safetensors=True)
    if cfg.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": 0}
    try:
        # Full fine-tuning keeps fp32 master weights; autocast gives bf16 speed on GPU.
        model = AutoModelForCausalLM.from_pretrained(
            base.path, dtype=torch.float32 if cfg.method == "full" else dtype, **kwargs)
    except Exception as exc:
        raise TuneryError(f"{base.path}: cannot load model ({type(exc).__name__}: {exc})") from None
    if cfg.method != "qlora":
        model.to(device)
    model.config.use_cache = False
    if cfg.method == "full":
        model.requires_grad_(True)
        return model

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules, use_dora=cfg.method == "dora", bias="none", task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise ConfigError(f"target_modules: {exc}") from None
    return model  # peft keeps adapter weights in fp32 over a bf16 base (autocast_adapter_dtype)


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
