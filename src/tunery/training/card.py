"""The model card, RUN/README.md: what the run trained on, how it went, how to load the result."""

import yaml

from ..run_folder import RunFolder, RunInfo


def write_model_card(folder: RunFolder, info: RunInfo, config: dict) -> None:
    run_dir = folder.path
    final = info.final.model_dump() if info.final else {}
    if info.artifact == "adapter":
        load = (f"```python\nfrom peft import AutoPeftModelForCausalLM\n"
                f"model = AutoPeftModelForCausalLM.from_pretrained(\"{folder.artifact('adapter')}\")\n```\n\n"
                f"or `tunery generate {run_dir} --prompt ...`; `tunery merge {run_dir} OUT` writes a standalone model.")
    else:
        load = (f"```python\nfrom transformers import AutoModelForCausalLM\n"
                f"model = AutoModelForCausalLM.from_pretrained(\"{folder.artifact('model')}\")\n```\n\n"
                f"or `tunery generate {run_dir} --prompt ...`.")
    data = info.data
    lines = [
        f"# {run_dir.name}", "",
        f"Fine-tuned with tunery ({config['method']}) from base model `{info.base.reference}` ({info.base.name}).", "",
        *([f"Registry name: `{info.name}` (`tunery models show {info.name}`).", ""] if info.name else []),
        "## Data", "",
        f"- train: `{data.file}` (sha256 `{(data.sha256 or '')[:16]}…`, {data.used} of {data.examples} examples used)",
    ]
    if info.val:
        lines.append(f"- validation: {info.val.file or 'split from the training file'} ({info.val.used} examples)")
    lines += ["", "## Result", "",
              f"- steps: {final.get('steps')}, trained tokens: {final.get('trained_tokens')}",
              f"- final train loss: {final.get('train_loss')}",
              f"- validation loss: {final.get('val_loss')} (shipped weights: step {final.get('shipped_step')}, "
              f"selected by {config['select']})",
              f"- time: {final.get('seconds')} s", "",
              "## Load it", "", load, "",
              "## Config", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    folder.card_file.write_text("\n".join(lines))
