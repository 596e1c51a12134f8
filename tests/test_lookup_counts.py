"""LookupCounts against a dict: adds, sets, forgets, counts past a byte, chunks dropped."""

from __future__ import annotations

import random

from chanos.fs.lookup_counts import LookupCounts


def test_random_changes_agree_with_a_dict():
    rng = random.Random(11)
    counts = LookupCounts()
    model: dict[int, int] = {}
    inos = [rng.randrange(1, 1 << 32) for _ in range(50)] + list(range(1000, 4000))
    for step in range(30000):
        ino = rng.choice(inos)
        r = rng.random()
        if r < 0.6:
            n = rng.choice((1, 1, 2, 300))  # 300: past what a byte holds
            counts.add(ino, n)
            model[ino] = model.get(ino, 0) + n
        else:
            left = model.get(ino, 0) - rng.randrange(1, 400)
            counts.set(ino, left)
            if left > 0:
                model[ino] = left
            else:
                model.pop(ino, None)
        if step % 1499 == 0:
            assert len(counts) == len(model)
            for i in inos:
                assert counts.get(i) == model.get(i, 0)
                assert (i in counts) == (i in model)
    for ino in list(model):  # forget everything: no chunk and no big count is left
        counts.set(ino, 0)
    assert len(counts) == 0
    assert counts._chunks == {} and counts._big == {}


def test_absent_and_zero():
    counts = LookupCounts()
    assert counts.get(5) == 0 and 5 not in counts
    counts.set(5, 0)  # forgetting what was never counted makes nothing
    assert counts._chunks == {}
    counts.add(5)
    counts.add(5)
    assert counts.get(5) == 2 and 5 in counts and len(counts) == 1
    counts.set(5, -3)  # a forget of more than was counted stops at zero
    assert counts.get(5) == 0 and len(counts) == 0
