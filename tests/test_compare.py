"""Evaluation and comparison on tiny models; the HTML report renders in headless Chromium."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from clirun import tunery_cli
from conftest import write_jsonl
from tunery.training import train


@pytest.fixture(scope="module")
def tuned(tiny_model, tmp_path_factory):
    """A LoRA fine-tune that has learned a fixed behaviour the base model cannot guess."""
    folder = tmp_path_factory.mktemp("cmp")
    rows = [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": "the color is blue"}]} for i in range(64)]
    train_file = write_jsonl(folder / "train.jsonl", rows[:48])
    test_file = write_jsonl(folder / "test.jsonl", rows[48:])
    os.environ.setdefault("TUNERY_HOME", str(folder / "home"))
    run = train(dict(model=str(tiny_model), data=str(train_file), out=str(folder / "run"), method="lora",
                     max_steps=60, lr=3e-2, batch_size=8, val_split=0.1, eval_every=10), progress=False)
    return run, train_file, test_file


def _run(args, tmp_path):
    return tunery_cli(*args, home=tmp_path / "home")


def test_eval_json(tuned, tmp_path):
    run, _, test_file = tuned
    out = _run(["eval", str(run.dir), "--data", str(test_file), "--metrics", "exact,contains,chrf",
                "--max-new-tokens", "24", "--json"], tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["metrics"]["exact"] == 1.0 and result["metrics"]["contains"] == 1.0
    assert result["metrics"]["loss"] < 0.5 and result["metrics"]["perplexity"] == pytest.approx(
        2.718281828 ** result["metrics"]["loss"], rel=1e-6)
    assert len(result["examples"]) == 16 and result["examples"][0]["prediction"] == "the color is blue"


def test_compare_three_contestants_and_report(tuned, tmp_path):
    run, train_file, test_file = tuned
    report_dir = tmp_path / "report"
    out = _run(["compare", "--base", str(run.config["model"]), "--tuned", str(run.dir), "--data", str(test_file),
                "--few-shot", "2", "--metrics", "exact,rougeL", "--max-new-tokens", "24", "--json",
                "--report-dir", str(report_dir)], tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    cs = result["contestants"]
    assert set(cs) == {"base", "prompt_only", "tuned"}
    for c in cs.values():
        assert {"exact", "rougeL"} <= c["metrics"].keys()
        assert c["prompt_tokens_per_request"] > 0 and c["latency_s_per_request"] > 0
    assert cs["tuned"]["metrics"]["exact"] == 1.0 > cs["base"]["metrics"]["exact"]
    # Two few-shot pairs make the baseline's prompts longer; the fine-tune needs none of them.
    assert cs["prompt_only"]["prompt_tokens_per_request"] > cs["tuned"]["prompt_tokens_per_request"] + 20
    assert result["summary"]["prompt_tokens_saved_per_request"] > 20
    assert result["summary"]["tuned_wins_on_quality"] is True
    v = result["verdict"]
    assert v["worth_it"] is True and v["best_tuned"] == "tuned" and v["metric"] == "exact" and v["quality_gain"] > 0
    assert v["training"]["seconds"] > 0 and v["training"]["trained_tokens"] > 0 and v["text"].startswith("Worth it")
    assert json.loads((report_dir / "report.json").read_text())["contestants"].keys() == cs.keys()
    html = (report_dir / "report.html").read_text()
    assert 'class="verdict" data-worth-it="true"' in html
    assert html.count('class="series"') == 2  # train and validation loss curves
    assert "http://" not in html and "https://" not in html and "<script" not in html  # self-contained

    screenshot = _screenshot(report_dir / "report.html", tmp_path)
    from PIL import Image

    img = Image.open(screenshot).convert("RGB")
    assert img.size == (1100, 1400)
    import numpy as np

    pixels = np.asarray(img).astype(int)

    def count(rgb):
        return int((np.abs(pixels - np.array(rgb)).max(axis=-1) < 20).sum())

    blue, red = count((0x2F, 0x80, 0xED)), count((0xE5, 0x53, 0x4B))
    assert blue > 500, "the training-loss curve and tuned bars are drawn"
    assert red > 50, "the validation-loss curve is drawn"


def test_compare_needs_training_data_for_few_shot(tiny_model, tuned, tmp_path):
    _, _, test_file = tuned
    out = _run(["compare", "--base", str(tiny_model), "--tuned", str(tiny_model), "--data", str(test_file),
                "--few-shot", "2"], tmp_path)
    assert out.returncode == 1 and "--train-data" in out.stderr and "Traceback" not in out.stderr
    out = _run(["eval", str(tiny_model), "--data", str(test_file), "--metrics", "nope"], tmp_path)
    assert out.returncode == 2 and "metric 'nope' is unknown" in out.stderr


def _screenshot(page: Path, tmp_path: Path) -> Path:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "headless Chromium is needed for this test: `make test` installs Debian's chromium package"
    png = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'chrome'}", "--hide-scrollbars", "--window-size=1100,1400",
                    f"--screenshot={png}", page.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    return png


def test_generation_metric_during_training_picks_best(tiny_model, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": "the color is blue"}]} for i in range(40)]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    run = train(dict(model=str(tiny_model), data=str(data), out=str(tmp_path / "run"), max_steps=30, lr=3e-2,
                     batch_size=8, val_split=0.2, eval_every=10, eval_generate_every=5, eval_metric="exact",
                     eval_samples=4, eval_max_new_tokens=24, best_by="metric"), progress=False)
    scored = {r["step"]: r["eval_exact"] for r in run.metrics if "eval_exact" in r}
    assert sorted(scored) == [5, 10, 15, 20, 25, 30]
    assert scored[30] == 1.0 and scored[5] < 1.0, scored
    best = run.info.final.best_step
    assert scored[best] == max(scored.values()) and run.info.final.eval_exact == 1.0
    assert run.info.final.shipped_step == best


def test_best_by_metric_needs_generation(tiny_model, tmp_path):
    from tunery.errors import ConfigError

    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}] * 4)
    with pytest.raises(ConfigError, match="eval-generate-every"):
        train(dict(model=str(tiny_model), data=str(data), out=str(tmp_path / "r"), best_by="metric"), progress=False)
    with pytest.raises(ConfigError, match="unknown"):
        train(dict(model=str(tiny_model), data=str(data), out=str(tmp_path / "r"), eval_generate_every=2,
                   eval_metric="nope"), progress=False)


def _contestant(quality: float, tokens: float, latency: float, metric: str = "exact") -> dict:
    return {"metrics": {metric: quality}, "prompt_tokens_per_request": tokens, "latency_s_per_request": latency}


@pytest.mark.parametrize("case, worth, starts", [
    ("prompting is better", False, "Not worth fine-tuning: prompt_only"),
    ("same quality, cheaper", True, "Worth it for the cost per request"),
    ("same quality, no cheaper", False, "Not worth fine-tuning: the same quality"),
    ("fine-tune better", True, "Worth it: the fine-tune is better"),
])
def test_the_verdict_weighs_quality_then_cost(case, worth, starts):
    from tunery.evaluate.compare import verdict

    tuned_q, tuned_tokens, tuned_latency = {"prompting is better": (0.6, 50, 0.1), "same quality, cheaper": (0.9, 50, 0.1),
                                            "same quality, no cheaper": (0.9, 250, 0.5),
                                            "fine-tune better": (0.97, 50, 0.1)}[case]
    cs = {"base": _contestant(0.0, 50, 0.1), "prompt_only": _contestant(0.9, 250, 0.5),
          "tuned": _contestant(tuned_q, tuned_tokens, tuned_latency)}
    v = verdict(cs, "exact", {"seconds": 40.0, "trained_tokens": 10_000})
    assert v["worth_it"] is worth and v["text"].startswith(starts), v["text"]
    assert v["best_untuned"] == "prompt_only"
    if case == "same quality, cheaper":
        assert v["break_even_requests"] == 100  # 40 s of training / 0.4 s saved per request


def test_the_verdict_reads_a_lower_is_better_metric_the_right_way():
    from tunery.evaluate.compare import verdict

    cs = {"prompt_only": _contestant(1.5, 250, 0.5, "loss"), "tuned": _contestant(0.5, 50, 0.1, "loss")}
    v = verdict(cs, "loss", None)
    assert v["worth_it"] and v["quality_gain"] == pytest.approx(1.0) and v["break_even_requests"] is None
