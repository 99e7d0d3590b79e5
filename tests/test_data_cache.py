"""The data cache: encoded once, read lazily after; any change of inputs misses; a damaged cache is
rebuilt, never read; racing builders do not corrupt it; training from it is exactly training as before."""

import pickle
import threading

import pytest
from conftest import write_jsonl

from tunery.data import Renderer, load_template, scan_file, split_examples
from tunery.data import cache as data_cache
from tunery.data.cache import CachedExamples, encode_cached
from tunery.errors import DataError

ROWS = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                      {"role": "assistant", "content": f"It is {2 * i}." + " And more." * (i % 5)}]}
        for i in range(30)]


def renderer(tok, mask="assistant", template=None):
    return Renderer(tok, load_template(tok, template), mask)


def encode(path, tok, **kw):
    r = kw.pop("renderer", None) or renderer(tok)
    return encode_cached(path, r, max_length=kw.pop("max_length", 64), **kw)


def as_tuples(examples):
    return [(e.line, e.input_ids, e.loss_mask) for e in examples]


def caches():
    return sorted(p.name for p in data_cache.cache_root().iterdir())


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "d.jsonl", ROWS + ["", {"messages": [{"role": "user", "content": "q"},
                                                                      {"role": "assistant", "content": "x " * 80}]}])


def test_second_load_is_a_hit_without_tokenizing(data, tiny_tokenizer, monkeypatch):
    first = encode(data, tiny_tokenizer)
    built = caches()
    assert not first.hit and len(built) == 1
    assert (first.rows, len(first.examples), first.format) == (31, 30, "chat")  # one dropped as too long

    def no_tokenizing(*a, **k):
        raise AssertionError("the tokenizer was called on a cache hit")

    monkeypatch.setattr(Renderer, "encode_many", no_tokenizing)
    monkeypatch.setattr(type(tiny_tokenizer), "__call__", no_tokenizing)
    second = encode(data, tiny_tokenizer)
    assert second.hit and second.warning is None and caches() == built
    assert as_tuples(second.examples) == as_tuples(first.examples)
    assert (second.rows, second.format, second.notes) == (first.rows, first.format, first.notes)


def test_cached_examples_equal_a_fresh_encode(data, tiny_tokenizer):
    for kw in ({}, {"overlong": "truncate"}, {"max_length": 30, "overlong": "truncate"}):
        fresh = scan_file(data, renderer(tiny_tokenizer), max_length=kw.get("max_length", 64), keep=True,
                          overlong=kw.get("overlong", "drop")).kept
        for _ in range(2):  # built, then read back
            assert as_tuples(encode(data, tiny_tokenizer, **kw).examples) == as_tuples(fresh)


def test_any_change_of_inputs_misses(data, tiny_tokenizer, tmp_path):
    encode(data, tiny_tokenizer)
    seen = set(caches())
    other_template = tmp_path / "t.jinja"
    other_template.write_text(load_template(tiny_tokenizer).source.replace("\n'", "\n\n'"))
    variants = [
        dict(renderer=renderer(tiny_tokenizer, mask="last")),
        dict(renderer=renderer(tiny_tokenizer, mask="all")),
        dict(renderer=renderer(tiny_tokenizer, template=str(other_template))),
        dict(max_length=100),
        dict(overlong="truncate"),
        dict(fmt="chat"),
    ]
    for kw in variants:
        got = encode(data, tiny_tokenizer, **kw)
        assert not got.hit, kw
        assert len(set(caches()) - seen) == 1, kw
        seen = set(caches())
    assert encode(data, tiny_tokenizer, max_length=100).hit  # each is a hit the second time
    # The data file's content: rewritten with one row changed.
    write_jsonl(data, ROWS[:-1] + [ROWS[0]])
    changed = encode(data, tiny_tokenizer)
    assert not changed.hit and changed.examples[-1].line == 30


def test_a_damaged_cache_is_rebuilt_with_a_warning(data, tiny_tokenizer):
    good = as_tuples(encode(data, tiny_tokenizer).examples)
    (folder,) = [data_cache.cache_root() / name for name in caches()]
    damages = [
        ("tokens.bin", lambda p: p.write_bytes(p.read_bytes()[:-7]), "tokens.bin has"),  # truncated
        ("offsets.bin", lambda p: p.write_bytes(b""), "offsets.bin has 0 bytes"),
        ("mask.bin", lambda p: p.write_bytes(bytes([1]) + p.read_bytes()[1:]), "mask.bin does not match its sha256"),
        ("manifest.json", lambda p: p.write_text("{"), "manifest.json"),
        ("lines.bin", lambda p: p.unlink(), "lines.bin is missing"),
    ]
    for name, damage, why in damages:
        damage(folder / name)
        again = encode(data, tiny_tokenizer)
        assert not again.hit and why in again.warning and "rebuilding" in again.warning, name
        assert as_tuples(again.examples) == good
        assert encode(data, tiny_tokenizer).hit  # the rebuilt cache is whole
    assert len(caches()) == 1


def test_a_crash_mid_build_leaves_nothing_that_is_read(data, tiny_tokenizer, monkeypatch):
    assert str(data_cache.cache_root()).startswith(str(data.parent))  # TUNERY_HOME is the test's
    def crash(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(data_cache._Writer, "close", crash)
        with pytest.raises(KeyboardInterrupt):
            encode(data, tiny_tokenizer)
    assert caches() == []
    assert not encode(data, tiny_tokenizer).hit


def test_a_file_with_errors_is_refused_and_leaves_no_cache(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "bad.jsonl", ROWS[:3] + ["{bad"])
    with pytest.raises(DataError, match=r"bad\.jsonl:4: .*invalid_json"):
        encode(path, tiny_tokenizer)
    assert caches() == []


def test_racing_builders_do_not_corrupt_the_cache(data, tiny_tokenizer, monkeypatch):
    """Both builders finish their own temporary folder; then both rename: the first wins, the other
    discards its copy and reads the winner's."""
    both_built = threading.Barrier(2, timeout=60)
    publish = data_cache._publish
    won = []

    def racing_publish(tmp, dest):
        both_built.wait()
        ours = publish(tmp, dest)
        won.append(ours)
        return ours

    monkeypatch.setattr(data_cache, "_publish", racing_publish)
    results = [None, None]

    def build(k):
        results[k] = encode(data, tiny_tokenizer)

    threads = [threading.Thread(target=build, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == [False, True]
    assert len(caches()) == 1  # no temporary folder left behind
    assert as_tuples(results[0].examples) == as_tuples(results[1].examples) == as_tuples(encode(data, tiny_tokenizer).examples)
    assert encode(data, tiny_tokenizer).hit


def test_the_examples_are_a_lazy_sequence(data, tiny_tokenizer):
    examples = encode(data, tiny_tokenizer).examples
    expected = as_tuples(scan_file(data, renderer(tiny_tokenizer), max_length=64, keep=True).kept)
    assert isinstance(examples, CachedExamples) and len(examples) == 30
    assert as_tuples(examples) == expected
    assert as_tuples([examples[-1]]) == expected[-1:]
    with pytest.raises(IndexError):
        examples[30]
    assert as_tuples(examples[5:8]) == expected[5:8] and isinstance(examples[5:8], CachedExamples)
    assert examples.lengths.tolist() == [len(ids) for _, ids, _ in expected]
    assert examples.lines.tolist() == [line for line, _, _ in expected]
    train, val = split_examples(examples, 0.2, seed=3)
    list_train, list_val = split_examples(scan_file(data, renderer(tiny_tokenizer), max_length=64, keep=True).kept, 0.2, seed=3)
    assert as_tuples(train) == as_tuples(list_train) and as_tuples(val) == as_tuples(list_val)
    assert val.lines.tolist() == [e.line for e in list_val] and val.lengths.tolist() == [len(e.input_ids) for e in list_val]
    assert as_tuples(pickle.loads(pickle.dumps(val))) == as_tuples(val)  # by name, for worker processes


def test_without_the_cache_nothing_is_kept_on_disk(data, tiny_tokenizer):
    private = encode(data, tiny_tokenizer, cache=False)
    assert caches() == []  # deleted as soon as its files were open
    assert as_tuples(private.examples) == as_tuples(encode(data, tiny_tokenizer).examples)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(private.examples)


def test_training_from_the_cache_gives_the_loss_training_on_lists_gave(tiny_model, tmp_path, monkeypatch):
    from tunery.config import TrainConfig
    from tunery.data.doctor import make_renderer
    from tunery.training import loop, train

    words = ["red", "blue", "green", "gold"]
    rows = [{"messages": [{"role": "user", "content": f"color {i} {words[i % 4]}" + " please" * (i % 3)},
                          {"role": "assistant", "content": f"the color is {words[i % 4]}"}]} for i in range(40)]
    data = write_jsonl(tmp_path / "toy.jsonl", rows)

    def run(out, **kw):
        cfg = TrainConfig(model=str(tiny_model), data=str(data), out=str(tmp_path / out), batch_size=4, grad_accum=2,
                          max_steps=4, lr=1e-2, val_split=0.2, eval_every=2, seed=0, precision="fp32", **kw)
        return [(r["loss"], r.get("val_loss")) for r in train(cfg, progress=False).metrics]

    built, hit, private = run("built"), run("hit"), run("private", data_cache=False)
    original = loop.load_data

    def as_before(cfg, tok, **kw):  # lists from the scan, split as lists: the loop's input before the cache
        _, _, record, val = original(cfg, tok, **kw)
        kept = scan_file(cfg.data, make_renderer(tok, cfg), max_length=cfg.max_length, keep=True).kept
        return *split_examples(kept, cfg.val_split, cfg.seed), record, val

    monkeypatch.setattr(loop, "load_data", as_before)
    lists = run("lists")
    assert built == hit == private == lists and len(lists) == 4 and lists[1][1] is not None
