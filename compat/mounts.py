"""The host's mount table, as ``/proc/self/mountinfo`` gives it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = "/proc/self/mountinfo"


@dataclass(frozen=True, slots=True)
class Mount:
    """One mount: where, what kind, from what, and its device number (``MAJ:MIN``)."""

    point: str
    fstype: str
    source: str
    device: str


def mounts(mountinfo: str = MOUNTINFO) -> list[Mount]:
    """Every mount, oldest first (a later mount on the same point hides the earlier)."""
    try:
        text = Path(mountinfo).read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        f = left.split()
        r = right.split()
        if len(f) >= 5 and len(r) >= 2:
            out.append(Mount(_unescape(f[4]), r[0], _unescape(r[1]), f[2]))
    return out


def _unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash as octal escapes (\040 ...).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
