"""`tunery export`: a run's weights in a format other tools load, checked before they are handed over.

    merged  base + adapter folded into one safetensors model, with the tokenizer, the chat template
            and a generation_config.json whose eos_token_id lists every end-of-turn token; verified:
            the merged model's logits against base + adapter's on rendered prompts of the run's data
    peft    the adapter alone, in the shape vLLM's LoRA loader takes (target modules only: no
            embedding, output-layer or modules_to_save tensors); verified: it loads over the base
            with peft and gives the logits the run's own adapter gives, and its rank is reported
            against vLLM's --max-lora-rank
    gguf    one GGUF file (`--quant` f16 | bf16 | q8_0 | q6_k | q5_k_m | q4_k_m) made by llama.cpp's own
            converter and quantizer from the merged model, carrying the chat template and the
            end-of-turn ids; verified in llama.cpp itself: the prompt the GGUF's template renders
            equals tunery's, llama.cpp tokenizes it to the same ids, every end-of-turn id tunery stops
            at is end-of-generation there, and greedy answers to the run's validation prompts agree
            with tunery's own (all of them at f16; at least MIN_AGREEMENT otherwise, with the size
            ratio to f16 and the model's largest activation reported, since llama.cpp multiplies
            quantized weights with 8-bit-quantized activations and outliers ruin them)
    ollama  the gguf export plus a Modelfile whose Go template renders what the chat template does
            (checked by Go's text/template on system / no-system / multi-turn conversations)

Every export writes OUT/export.json (format, file sha256s, the verification figures, the source
run's registry id and name). OUT is written atomically and must not exist or be empty. Its
progress is one task whose steps are the export's stages (load, merge, convert, quantize, verify,
hash), named as they run.
"""

import json
from pathlib import Path

from ..errors import ConfigError, TuneryError
from ..files import atomic_dir, file_digest, now
from ..models import load_model, load_tokenizer, resolve_model
from ..progress import Task
from ..registry import recorder
from ..run_folder import RunFolder
from .merge import free_output, save_merged

FORMATS = ("merged", "peft", "gguf", "ollama")
MIN_AGREEMENT = 0.5  # share of greedy answers a lossy GGUF must give exactly as tunery does
ANSWER_TOKENS = 48  # greedy answer length compared in GGUF verification
NEAR_TIE = 0.05  # logit gap below which f16 rounding may pick either of two tokens (fp32 reference)
TOLERANCE = 1e-3  # max |logit difference| a verified export may show (fp32, CPU)
VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # --max-lora-rank values vLLM accepts


def export(run: str | Path, fmt: str, out: str | Path, *, verify: bool = True, quant: str | None = None) -> dict:
    """Write the export and return what export.json records."""
    if fmt not in FORMATS:
        raise ConfigError(f"format: {fmt!r} is not one of {', '.join(FORMATS)}", "format")
    if quant is not None and fmt not in ("gguf", "ollama"):
        raise ConfigError(f"quant: only GGUF exports (gguf, ollama) are quantized, not {fmt}", "quant")
    if fmt in ("gguf", "ollama"):
        from .gguf import check_quant, converter

        check_quant(quant := quant or "f16")
        converter()  # the extra and the converter are there before any work
    resolved = resolve_model(str(run))
    if resolved.source != "run":
        raise TuneryError(f"{run} is not a tunery run (a run folder or a registered fine-tune)")
    if fmt == "peft" and resolved.adapter is None:
        raise TuneryError(f"{run} is a full fine-tune: it has no adapter to export; use --format merged")
    out = free_output(out)
    info = RunFolder(resolved.run).read_info()
    model_id = recorder.registered_id(str(resolved.run))  # a broken registry is reported before any work
    with Task(f"export {fmt}", len(_stages(fmt, verify, quant)), unit="stages") as task:
        record = _export(resolved, info, fmt, out, verify, quant, _Stages(task))
    recorder.record_export(model_id, record)
    return record


def _stages(fmt: str, verify: bool, quant: str | None) -> list[str]:
    """The stages an export goes through, in order (its progress counts them)."""
    if fmt in ("merged", "peft"):
        names = ["load", "merge" if fmt == "merged" else "copy", "verify", "hash"]
    else:
        from .gguf import FLOAT_QUANTS

        names = ["merge", "convert", "quantize", "verify", "modelfile", "hash"]
        if quant in FLOAT_QUANTS:
            names.remove("quantize")
        if fmt != "ollama":
            names.remove("modelfile")
    return [n for n in names if verify or n not in ("load", "verify")]


class _Stages:
    """Moves an export's task on as each stage begins."""

    def __init__(self, task: Task):
        self.task, self.started = task, False

    def __call__(self, name: str) -> None:
        self.task.advance(1 if self.started else 0, note=name)
        self.started = True

    def done(self) -> None:
        self.task.update(self.task.total, note="")


def _export(resolved, info, fmt: str, out: Path, verify: bool, quant: str | None, stage: _Stages) -> dict:
    import torch

    if verify and fmt in ("merged", "peft"):
        stage("load")
        reference, tokenizer = load_model(resolved, dtype=torch.float32, device="cpu", merge=False)
    else:
        reference, tokenizer = None, load_tokenizer(resolved)
    prompts = _prompts(info, tokenizer) if verify else []
    record = {"format": fmt, "source": {"run": str(resolved.run), "id": info.id, "name": info.name},
              "created": now()}
    with atomic_dir(out) as tmp:
        if fmt == "merged":
            stage("merge")
            save_merged(resolved, tokenizer, tmp)
            check = (lambda: _max_logit_diff(reference, _load(tmp), tokenizer, prompts)) if verify else None
        elif fmt in ("gguf", "ollama"):
            record |= _gguf(resolved, info, tokenizer, tmp, out.name, quant, fmt == "ollama", verify, stage)
            check = None
        else:
            stage("copy")
            record["adapter"] = _copy_adapter(resolved.adapter, tmp)
            tokenizer.save_pretrained(tmp)
            check = (lambda: _max_logit_diff(reference, _load(resolved.path, adapter=tmp), tokenizer, prompts)) \
                if verify else None
        if check is not None:
            stage("verify")
            diff = check()
            record["verification"] = {"prompts": len(prompts), "max_abs_logit_diff": diff, "tolerance": TOLERANCE}
            if not diff <= TOLERANCE:
                raise TuneryError(f"export verification failed: logits differ by up to {diff:.2e} from the run's own "
                                  f"weights (tolerance {TOLERANCE:g}); nothing was written")
        stage("hash")
        record["files"] = {p.name: file_digest(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / "export.json").write_text(json.dumps(record, indent=2))
    record["out"] = str(out)
    stage.done()
    return record


def _ollama_name(name: str | None) -> str:
    """ft:base:suffix:abcd1234 -> base-suffix-abcd1234 (Ollama names take no colons but a tag's)."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", (name or "tuned").removeprefix("ft:")).strip("-.") or "tuned"


def _gguf(resolved, info, tokenizer, dest: Path, final: str, quant: str, ollama: bool, verify: bool, stage) -> dict:
    """Merge, convert with llama.cpp's converter, quantize, and check the file in llama.cpp."""
    import tempfile

    from .gguf import FLOAT_QUANTS, convert, quantize

    name = f"model-{quant}.gguf"
    record: dict = {"quant": quant, "gguf": name}
    if info.method == "qlora":
        record["warning"] = ("a QLoRA run: its adapter was merged into the base de-quantized to fp32, "
                             "not into the 4-bit weights it trained against")
    with tempfile.TemporaryDirectory(prefix=".tunery-gguf-", dir=dest.parent) as staging:
        staging = Path(staging)
        stage("merge")
        merged = save_merged(resolved, tokenizer, staging / "hf")
        f16 = staging / "model-f16.gguf"
        stage("convert")
        convert(staging / "hf", dest / name if quant in FLOAT_QUANTS else f16, quant if quant in FLOAT_QUANTS else "f16")
        if quant not in FLOAT_QUANTS:
            stage("quantize")
            quantize(f16, dest / name, quant)
            record["size_ratio_to_f16"] = round((dest / name).stat().st_size / f16.stat().st_size, 4)
        if verify:
            stage("verify")
            record["verification"] = _verify_gguf(dest / name, merged, tokenizer, _conversations(resolved.run, info), quant)
    if ollama:
        from .ollama import go_template, import_command, modelfile

        stage("modelfile")
        from ..data.template import load_template

        tmpl = go_template(load_template(tokenizer), tokenizer)
        (dest / "Modelfile").write_text(modelfile(name, tmpl))
        record["ollama"] = {"family": tmpl.family, "stops": tmpl.stops, "system": tmpl.system,
                            "conversations_checked": tmpl.checked,
                            "import": import_command(_ollama_name(info.name), dest.parent / final)}
    return record


def _verify_gguf(path: Path, merged, tokenizer, conversations: list[list[dict]], quant: str) -> dict:
    """The GGUF in llama.cpp against tunery's own generation on the run's validation prompts."""
    from ..data.render import stop_token_ids
    from ..data.template import load_template
    from ..generation import generate_batch
    from ..models.llamacpp import GGUFModel
    from .gguf import FLOAT_QUANTS

    template = load_template(tokenizer)
    if template is None:
        raise TuneryError("the model has no chat template, so its GGUF could not be checked; use --no-verify")
    stops = sorted(stop_token_ids(tokenizer, template))
    gguf = GGUFModel(path, n_ctx=4096)
    try:
        not_eog = [tokenizer.convert_ids_to_tokens(i) for i in stops if i not in gguf.eog_ids]
        if not_eog:
            raise TuneryError(f"export verification failed: llama.cpp does not stop at {', '.join(not_eog)} in the GGUF, "
                              "so its answers would run on past the end of the turn; nothing was written")
        agree, ties, samples = 0, 0, []
        for messages in conversations:
            ours = template.render(messages, add_generation_prompt=True)
            theirs = gguf.render(messages)
            if theirs != ours:
                raise TuneryError("export verification failed: the chat template inside the GGUF renders a different prompt "
                                  f"in llama.cpp than tunery trained with ({_first_difference(ours, theirs)}); nothing was written")
            ids = tokenizer(ours, add_special_tokens=False)["input_ids"]
            if gguf.tokenize(theirs) != ids:
                raise TuneryError("export verification failed: llama.cpp tokenizes the prompt differently from the model's "
                                  "tokenizer (tokenizer pre-type or BOS); nothing was written")
            mine = generate_batch(merged, tokenizer, [ids], stops, max_new_tokens=ANSWER_TOKENS)[0]
            got = gguf.complete(gguf.tokenize(theirs), max_tokens=ANSWER_TOKENS)
            same = got.text == mine.text and got.finish_reason == mine.finish_reason
            if not same and quant == "f16" and _near_tie(merged, ids, mine.token_ids, got.token_ids):
                ties += 1  # f16 rounding picked the other of two tokens tunery itself nearly tied on
                same = True
            agree += same
            samples.append({"tunery": mine.text, "llama.cpp": got.text, "same": same})
    finally:
        gguf.close()
    rate = agree / len(conversations)
    samples = sorted(samples, key=lambda x: x["same"])[:3]  # differing answers first
    record = {"prompts": len(conversations), "agreement": round(rate, 4), "prompt_render_equal": True,
              "end_of_turn_ids": stops, "samples": samples}
    if ties:
        record["near_ties"] = ties  # answers counted as agreeing: they part at a near-tie (NEAR_TIE)
    needed = 1.0 if quant == "f16" else MIN_AGREEMENT
    if quant not in FLOAT_QUANTS:
        record["largest_activation"] = _largest_activation(merged, tokenizer, template, conversations)
    why = ""
    if "largest_activation" in record and rate < 1:
        big = record["largest_activation"]
        why = (f"llama.cpp multiplies {quant} weights with activations quantized to 8 bits in blocks of 32, and "
               f"this model's activations reach {big['value']:.0f} (input of {big['module']}), which that rounding distorts")
        record["note"] = f"{len(conversations) - agree}/{len(conversations)} answers differ from tunery's: {why}"
        why = f"; {why}: export at f16 or bf16"
    if rate < needed:
        raise TuneryError(f"export verification failed: the {quant} GGUF answers {agree}/{len(conversations)} validation "
                          f"prompts as tunery does (needs {needed:.0%}){why}; nothing was written (--no-verify writes it anyway)")
    return record


def _near_tie(model, prompt: list[int], mine: list[int], theirs: list[int]) -> bool:
    """Whether two greedy answers part where the reference's top token leads llama.cpp's pick by
    less than NEAR_TIE: a coin toss under f16 rounding, not a broken file."""
    import torch

    k = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), None)
    if k is None:  # one is a prefix of the other: parted at the end-of-turn token
        return False
    with torch.no_grad():
        logits = model(torch.tensor([prompt + mine[:k]])).logits[0, -1]
    return float(logits[mine[k]] - logits[theirs[k]]) < NEAR_TIE


def _largest_activation(model, tokenizer, template, conversations) -> dict:
    """The largest |input| of any linear layer on the verification prompts (outliers break 8-bit activations)."""
    import torch

    worst = {"value": 0.0, "module": ""}

    def hook(name):
        def record(_module, args):
            value = float(args[0].detach().abs().max())
            if value > worst["value"]:
                worst.update(value=value, module=name)
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.no_grad():
            for messages in conversations:
                text = template.render(messages, add_generation_prompt=True)
                model(torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]]))
    finally:
        for h in handles:
            h.remove()
    return {"value": round(worst["value"], 2), "module": worst["module"]}


def _first_difference(a: str, b: str) -> str:
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"tunery: {a[max(0, i - 20): i + 30]!r} vs GGUF: {b[max(0, i - 20): i + 30]!r}"


def _conversations(run: Path, info, n: int = 6) -> list[list[dict]]:
    """Up to n conversations of the run's validation set (else its data), each cut before its
    last assistant turn: the prompts a user of the export would send."""
    from ..data.formats import normalise, rows_with_format

    sources = [p for p in (RunFolder(run).eval_set_file, Path(info.data.file)) if p.is_file()]
    found: list[list[dict]] = []
    for source in sources:
        try:
            fmt, rows = rows_with_format(source, "auto")
            for line, row in rows:
                conv, _ = normalise(line, row, fmt)
                if conv is None or conv.text is not None:
                    continue
                last = max((i for i, m in enumerate(conv.messages) if m["role"] == "assistant"), default=None)
                if last:
                    found.append(conv.messages[:last])
                if len(found) >= n:
                    return found
        except (OSError, TuneryError):
            continue
        if found:
            break
    return found or [[{"role": "user", "content": "Hello! How are you today?"}]]


def _prompts(info, tokenizer, n: int = 4) -> list[str]:
    """A few prompts of the run's own data, rendered through the chat template it trained with."""
    from ..data.formats import normalise, rows_with_format
    from ..data.template import load_template

    template = load_template(tokenizer)
    texts = []
    try:
        fmt, rows = rows_with_format(info.data.file, "auto")
        for line, row in rows:
            conv, _ = normalise(line, row, fmt)
            if conv is None:
                continue
            texts.append(conv.text if conv.text is not None or template is None else template.render(conv.messages, conv.tools))
            if len(texts) >= n:
                break
    except (OSError, TuneryError):
        pass
    return texts or ["Hello! How are you today?"]


def _load(path: Path, adapter: Path | None = None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False, use_safetensors=True)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()


def _max_logit_diff(a, b, tokenizer, prompts: list[str]) -> float:
    import torch

    worst = 0.0
    with torch.no_grad():
        for text in prompts:
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][:, :256]
            worst = max(worst, float((a(ids).logits - b(ids).logits).abs().max()))
    return worst


def _copy_adapter(adapter: Path, dest: Path) -> dict:
    """The adapter's config and weights, refusing what vLLM's LoRA loader does not take."""
    from safetensors import safe_open

    config = json.loads((adapter / "adapter_config.json").read_text())
    if config.get("use_dora"):
        raise TuneryError(f"{adapter}: a DoRA adapter (magnitude vectors), which vLLM's LoRA loader does not take; "
                          "use --format merged")
    if config.get("modules_to_save"):
        raise TuneryError(f"{adapter}: the adapter saves whole modules ({config['modules_to_save']}), which vLLM's "
                          "LoRA loader does not take; use --format merged")
    weights = adapter / "adapter_model.safetensors"
    with safe_open(str(weights), "pt") as f:
        keys = list(f.keys())
    extra = [k for k in keys if "lora_" not in k]
    if extra:
        raise TuneryError(f"{adapter}: the adapter holds {len(extra)} non-LoRA tensors (e.g. {extra[0]}), which "
                          "vLLM's LoRA loader does not take; use --format merged")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (dest / name).write_bytes((adapter / name).read_bytes())
    r = int(config.get("r", 0))
    return {"r": r, "alpha": config.get("lora_alpha"), "target_modules": config.get("target_modules"),
            "dora": bool(config.get("use_dora")), "tensors": len(keys),
            "vllm_max_lora_rank": next((v for v in VLLM_RANKS if v >= r), None)}
