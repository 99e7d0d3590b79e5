"""The run folder: resolved config, metrics, checkpoints, the shipped weights and a model card.

    RUN/config.yaml        the fully resolved recipe (auto values replaced by what was used)
    RUN/run.json           status, base model, data hashes and counts, final metrics
    RUN/metrics.jsonl      one line per optimizer step (and val_loss when computed)
    RUN/checkpoints/       step-N/ folders for resume; the best one is kept
    RUN/adapter/ | model/  PEFT adapter (LoRA/DoRA/QLoRA) or full weights, with tokenizer + template
    RUN/README.md          model card
"""

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import yaml

from ..models.gguf_import import file_digest

RUN_FILE = "run.json"


def default_run_dir(data: str, method: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{Path(data).stem}-{method}-{stamp}"


def is_run_dir(path: Path) -> bool:
    return (path / RUN_FILE).is_file() and (path / "config.yaml").is_file()


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def write_config(run_dir: Path, resolved: dict) -> None:
    tmp = run_dir / ".config.yaml.tmp"
    tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))
    os.replace(tmp, run_dir / "config.yaml")


def read_run(run_dir: Path) -> dict:
    return json.loads((run_dir / RUN_FILE).read_text())


def data_record(path: str | None, n_examples: int, n_kept: int) -> dict | None:
    if not path:
        return None
    return {"file": str(Path(path).resolve()), "sha256": file_digest(Path(path)), "examples": n_examples, "used": n_kept}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Metrics:
    """metrics.jsonl, appended and flushed per step; on resume, cut back to the checkpoint."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is None:
            path.write_text("")
        else:
            kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= resume_step] \
                if path.exists() else []
            tmp = path.with_name(".metrics.jsonl.tmp")
            tmp.write_text("".join(ln + "\n" for ln in kept))
            os.replace(tmp, path)
        self._f = open(path, "a", encoding="utf-8")

    def log(self, row: dict) -> None:
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def write_model_card(run_dir: Path, info: dict, config: dict) -> None:
    artifact = info["artifact"]
    final = info.get("final", {})
    if artifact == "adapter":
        load = (f"```python\nfrom peft import AutoPeftModelForCausalLM\n"
                f"model = AutoPeftModelForCausalLM.from_pretrained(\"{run_dir / 'adapter'}\")\n```\n\n"
                f"or `tunery generate {run_dir} --prompt ...`; `tunery merge {run_dir} OUT` writes a standalone model.")
    else:
        load = (f"```python\nfrom transformers import AutoModelForCausalLM\n"
                f"model = AutoModelForCausalLM.from_pretrained(\"{run_dir / 'model'}\")\n```\n\n"
                f"or `tunery generate {run_dir} --prompt ...`.")
    data = info["data"]
    lines = [
        f"# {run_dir.name}", "",
        f"Fine-tuned with tunery ({config['method']}) from base model `{info['base']['reference']}` "
        f"({info['base']['name']}).", "",
        *([f"Registry name: `{info['name']}` (`tunery models show {info['name']}`).", ""] if info.get("name") else []),
        "## Data", "",
        f"- train: `{data['file']}` (sha256 `{data['sha256'][:16]}…`, {data['used']} of {data['examples']} examples used)",
    ]
    if info.get("val"):
        v = info["val"]
        lines.append(f"- validation: {v.get('file') or 'split from the training file'} ({v['used']} examples)")
    lines += ["", "## Result", "",
              f"- steps: {final.get('steps')}, trained tokens: {final.get('trained_tokens')}",
              f"- final train loss: {final.get('train_loss')}",
              f"- validation loss: {final.get('val_loss')} (shipped weights: step {final.get('shipped_step')}, "
              f"selected by {config['select']})",
              f"- time: {final.get('seconds')} s", "",
              "## Load it", "", load, "",
              "## Config", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    (run_dir / "README.md").write_text("\n".join(lines))
