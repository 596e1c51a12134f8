"""The host kernel's read-ahead window for a chanos mount.

The host kernel reads a FUSE file ahead by its backing device's ``read_ahead_kb``, which
starts at 128 KiB: a sequential read then arrives as 128 KiB READ requests, and every
request costs the daemon a round trip of its own. Raising the window to the largest request
the kernel sends (``max_pages``, 1 MiB) makes the same read an eighth as many requests. The
setting lives in sysfs under the mount's device number (``/sys/class/bdi/MAJ:MIN``), is
writable by root only, and goes away with the mount.
"""

from __future__ import annotations

import logging
import os

from chanos.compat.mounts import MOUNTINFO, mounts

log = logging.getLogger(__name__)

SYSFS_BDI = "/sys/class/bdi"


def mount_device(mountpoint: str, mountinfo: str = MOUNTINFO) -> str | None:
    """``MAJ:MIN`` of the file system mounted last on ``mountpoint``, or None.

    ``mountpoint`` must be canonical (``os.path.realpath`` taken before mounting): once
    mounted, resolving it or stat(2) on it is a request to the daemon that calls this
    before it serves any. Hence mountinfo, not stat.
    """
    found = None
    for m in mounts(mountinfo):
        if m.point == mountpoint:
            found = m.device  # the last one: a later mount hides the earlier
    return found


def set_read_ahead(mountpoint: str, kib: int, sysfs: str = SYSFS_BDI) -> bool:
    """Set the mount's read-ahead window to ``kib`` KiB -> whether it was set.

    Not being allowed to (not root, no sysfs) is not an error: the mount works with the
    host kernel's default, only sequential reads are slower.
    """
    dev = mount_device(mountpoint)
    if dev is None:
        log.warning("read-ahead not set: %s is not in the mount table", mountpoint)
        return False
    path = os.path.join(sysfs, dev, "read_ahead_kb")
    try:
        with open(path, "w") as f:
            f.write(f"{kib}\n")
    except OSError as exc:
        log.info("read-ahead left at the host kernel's default (%s: %s)", path, exc.strerror)
        return False
    log.debug("read-ahead of %s (%s) set to %d KiB", mountpoint, dev, kib)
    return True
