"""Every metric on known cases."""

import pytest

from tunery.errors import ConfigError
from tunery.metrics import BUILTIN, resolve_metrics

M = BUILTIN


def test_exact_normalises_case_and_whitespace():
    assert M["exact"]("  Paris\n", "paris", {}) == 1.0
    assert M["exact"]("The  capital is Paris", "the capital is paris", {}) == 1.0
    assert M["exact"]("Paris.", "Paris", {}) == 0.0


def test_json_metrics():
    assert M["json_valid"]('{"a": 1}', "", {}) == 1.0
    assert M["json_valid"]("{'a': 1}", "", {}) == 0.0
    assert M["json_exact"]('{"b": 2, "a": 1}', '{"a":1,"b":2}', {}) == 1.0  # key order and spacing don't matter
    assert M["json_exact"]('{"a": 1}', '{"a": 2}', {}) == 0.0
    assert M["json_exact"]("not json", '{"a": 1}', {}) == 0.0
    schema = {"type": "object", "required": ["name"], "properties": {"age": {"type": "integer"}}}
    assert M["json_schema"]('{"name": "x", "age": 3}', "", {"schema": schema}) == 1.0
    assert M["json_schema"]('{"name": "x", "age": "3"}', "", {"schema": schema}) == 0.0
    assert M["json_schema"]('{"age": 3}', "", {"schema": schema}) == 0.0
    with pytest.raises(ConfigError, match="--schema"):
        M["json_schema"]("{}", "", {})


def test_regex_and_contains():
    assert M["regex"]("  2024-01-05 ", "", {"regex": r"\d{4}-\d{2}-\d{2}"}) == 1.0
    assert M["regex"]("on 2024-01-05", "", {"regex": r"\d{4}-\d{2}-\d{2}"}) == 0.0  # the whole answer must match
    assert M["contains"]("The answer is PARIS, of course", "paris", {}) == 1.0
    assert M["contains"]("London", "paris", {}) == 0.0


def test_rouge_l_and_chrf():
    assert M["rougeL"]("the cat sat on the mat", "the cat sat on the mat", {}) == pytest.approx(1.0)
    # LCS "the cat the mat" = 4 of 6 tokens each side -> F1 = 2/3
    assert M["rougeL"]("the cat was on the mat", "the cat sat near the mat", {}) == pytest.approx(4 / 6)
    assert M["rougeL"]("completely different", "nothing shared here", {}) == 0.0
    assert M["chrf"]("hello world", "hello world", {}) == pytest.approx(1.0)
    partial = M["chrf"]("hello word", "hello world", {})
    assert 0.3 < partial < 1.0
    assert M["chrf"]("xyz", "hello world", {}) < 0.1


def test_user_metric_and_unknown(tmp_path, monkeypatch):
    (tmp_path / "mymetrics.py").write_text("def length_ok(pred, ref):\n    return len(pred) <= len(ref)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fns = resolve_metrics(["exact", "mymetrics:length_ok"])
    assert fns["mymetrics:length_ok"]("ab", "abc", {}) == 1.0
    assert fns["mymetrics:length_ok"]("abcd", "abc", {}) == 0.0
    with pytest.raises(ConfigError, match="unknown"):
        resolve_metrics(["bleu9000"])
    with pytest.raises(ConfigError, match="cannot import"):
        resolve_metrics(["nosuchmodule_xyz:fn"])
