"""Step groups: every example once per epoch, deterministic, and little padding when grouped by length."""

import random

from tunery.data import Example
from tunery.training.batches import step_groups, steps_per_epoch


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
