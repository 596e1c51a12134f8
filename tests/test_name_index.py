"""NameIndex against a dict: names -> positions through adds, removes, growth, shrinking
and names that share a hash."""

from __future__ import annotations

import errno
import random

import pytest
from chanos.fs.name_index import NameIndex


def _get(index: NameIndex, stored: dict[int, bytes], name: bytes) -> int:
    """The position of ``name``: the candidate whose stored name matches, as a directory
    reads them back."""
    return next((p for p in index.positions(name) if stored[p] == name), -1)


class _SameHash(bytes):
    """A name whose hash collides with every other one of its kind."""

    def __hash__(self) -> int:
        return 12345


def test_random_adds_and_removes_agree_with_a_dict():
    rng = random.Random(7)
    stored: dict[int, bytes] = {}  # position -> name, as the directory blocks hold them
    model: dict[bytes, int] = {}
    index = NameIndex()
    next_pos = 0
    for step in range(20000):
        name = b"n%d" % rng.randrange(3000)
        if name in model and rng.random() < 0.5:
            index.remove(name, model[name])
            del stored[model.pop(name)]
        elif name not in model:
            next_pos += 12
            stored[next_pos] = name
            model[name] = next_pos
            index.add(name, next_pos)
        if step % 997 == 0:
            assert len(index) == len(model)
            for probe in (b"n%d" % i for i in range(3000)):
                assert _get(index, stored, probe) == model.get(probe, -1)
    assert len(index) == len(model)
    for name, pos in list(model.items()):  # empty it: the index shrinks and stays right
        index.remove(name, pos)
        del model[name]
        assert _get(index, stored, name) == -1
    assert len(index) == 0 and _get(index, stored, b"n1") == -1


def test_names_sharing_a_hash_are_told_apart_by_the_stored_name():
    stored: dict[int, bytes] = {}
    index = NameIndex()
    names = [_SameHash(b"x%d" % i) for i in range(40)]
    for i, name in enumerate(names):  # positions are 4-byte aligned, as records are
        stored[4 * i] = bytes(name)
        index.add(name, 4 * i)
    assert [_get(index, stored, n) for n in names] == [4 * i for i in range(40)]
    assert _get(index, stored, _SameHash(b"absent")) == -1
    index.remove(names[3], 12)
    assert _get(index, stored, names[3]) == -1
    assert _get(index, stored, names[39]) == 156  # found past the removed slot
    with pytest.raises(KeyError):
        index.remove(names[3], 12)


def test_positions_past_16_gib_are_refused():
    stored = {(1 << 34) - 12: b"far"}
    index = NameIndex()
    index.add(b"far", (1 << 34) - 12)  # the last one that fits
    assert _get(index, stored, b"far") == (1 << 34) - 12
    with pytest.raises(OSError) as ei:
        index.add(b"farther", 1 << 34)
    assert ei.value.errno == errno.EFBIG


def test_clear_forgets_everything():
    stored = {4: b"a", 8: b"b"}
    index = NameIndex()
    index.add(b"a", 4)
    index.add(b"b", 8)
    index.clear()
    assert len(index) == 0 and _get(index, stored, b"a") == -1
