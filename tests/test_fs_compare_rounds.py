"""bench/fs_compare.py's rounds: medians per cell, peaks as maxima, per-round ratios."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "bench" / "fs_compare.py"


@pytest.fixture(scope="module")
def fs_compare():
    spec = importlib.util.spec_from_file_location("fs_compare_under_test", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _round(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """A round's TSV as fsbench writes it: a ``_run`` marker per label, then rows."""
    lines, started = [], set()
    for label, key, value, note in rows:
        if label not in started:
            started.add(label)
            lines.append(f"{label}\t_run\t\t2026-11-28T00:00:00Z\t\tfuse\n")
        unit = "MiB" if key.startswith("rss") else "ops/s"
        lines.append(f"{label}\t{key}\tdesc of {key}\t{value}\t{unit}\t{note}\n")
    path.write_text("".join(lines))
    return path


def test_combine_takes_medians_and_peak_maxima(fs_compare, tmp_path):
    r1 = _round(tmp_path / "r1.tsv", [
        ("chanos", "create", "100.0", ""), ("chanos", "rss_peak", "60.1", ""),
        ("fuse2fs", "create", "80.5", ""), ("chanos", "cp_cmp", "OK", ""),
    ])  # fmt: skip
    r2 = _round(tmp_path / "r2.tsv", [
        ("fuse2fs", "create", "90.25", "TIMEOUT 3/5"), ("chanos", "create", "300.0", ""),
        ("chanos", "rss_peak", "58.0", ""), ("chanos", "cp_cmp", "FAIL", ""),
    ])  # fmt: skip
    r3 = _round(tmp_path / "r3.tsv", [
        ("chanos", "create", "200.0", ""), ("chanos", "rss_peak", "70.9", ""),
        ("fuse2fs", "create", "", "TIMEOUT 0/5"), ("chanos", "bigdir", "12.5", ""),
    ])  # fmt: skip
    rounds = [fs_compare.read_rows(p) for p in (r1, r2, r3)]
    rows = fs_compare.combine(rounds)
    assert rows[("chanos", "create")][1] == "200.0"
    # two numbers (the third round's cell is empty): their mean, at the inputs' precision
    assert rows[("fuse2fs", "create")][1] == "85.38"
    assert rows[("fuse2fs", "create")][3] == "TIMEOUT 3/5; TIMEOUT 0/5"
    assert rows[("chanos", "rss_peak")][1] == "70.9"
    assert rows[("chanos", "cp_cmp")][1] == "FAIL"  # text: the last round's
    assert rows[("chanos", "bigdir")][1] == "12.5"  # measured in one round only

    out = tmp_path / "results.tsv"
    fs_compare.write_rows(out, rows)
    assert fs_compare.read_rows(out) == rows
    markers = [ln.split("\t")[0] for ln in out.read_text().splitlines() if "\t_run\t" in ln]
    assert markers == ["chanos", "fuse2fs"]


def test_round_ratios_are_per_round(fs_compare, tmp_path):
    rounds = []
    for i, (b, c) in enumerate([(100, 150), (200, 150), (0, 10)]):
        rows = [("fuse2fs", "create", f"{b}", ""), ("chanos", "create", f"{c}", ""),
                ("tmpfs", "create", "1000", "")]  # fmt: skip
        rounds.append(fs_compare.read_rows(_round(tmp_path / f"r{i}.tsv", rows)))
    table = fs_compare.round_ratios(rounds, "fuse2fs", ["chanos", "fuse2fs"])
    lines = table.splitlines()
    assert lines[0] == "| metric | target | round 1 | round 2 | round 3 |"
    # a zero base gives no ratio rather than a division error
    assert lines[2] == "| desc of create | chanos | 1.50x | 0.75x |  |"
    assert len(lines) == 3  # tmpfs was not asked for, the base has no row of its own
