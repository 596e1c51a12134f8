#!/usr/bin/env python3
"""What one FUSE request costs: chanos, an empty pyfuse3 file system, fuse2fs, in one run.

    bench/fuse_floor.py [--requests N] [--targets null,null-wait,chanos,fuse2fs]

Every target answers the same request N times: getxattr(2) of an attribute the file does
not have. The host kernel caches no xattr answers, so each call is exactly one GETXATTR
round trip to the daemon. Printed per target: microseconds per request (wall) and the
daemon's CPU time per request, with ratios against fuse2fs.

``null`` is a pyfuse3 file system that answers from memory with nothing behind it (this
script serves it with ``--serve-null MOUNTPOINT``): the least any pyfuse3 daemon under trio
pays per request with pyfuse3's own request loop. ``null-wait`` is the same file system
waiting for requests as ``chanos mount`` does (``chanos.compat.request_wait``: a busy
poll before sleeping, one worker asleep on the descriptor). Rows of ``bench/fs_compare.py`` whose
workloads are many small requests (creates, unlinks, ls -lR, untar) are bounded by the
second: chanos's cost per request is that floor plus its own work. Needs root for
fuse2fs (``-o fakeroot`` is not needed as root).

``chanos`` is mounted as by default: while requests come back to back it asks the
kernel for a CPU wake-up latency of 0 µs (``chanos.compat.wake_latency``), so the
program's CPU polls instead of halting between two requests. ``chanos-nolat`` is mounted
with ``nocpu_latency``; ``fuse2fs-lat`` is fuse2fs measured while this script holds the
same request, so the peer is also seen under the setting chanos chooses.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHANOS = str(Path(sys.executable).parent / "chanos")
NAME = "user.absent"


def serve_null(mountpoint: str, busy_poll: float | None) -> None:
    """An empty file system: a root directory holding one empty file, ``f``.

    With ``busy_poll`` (seconds) it waits for requests as ``chanos mount`` does
    (``chanos.compat.request_wait``), else with pyfuse3's own loop.
    """
    import stat

    import pyfuse3
    import trio
    from chanos.compat import request_wait

    class Null(pyfuse3.Operations):
        def _attrs(self, ino: int) -> pyfuse3.EntryAttributes:
            e = pyfuse3.EntryAttributes()
            e.st_ino = ino
            root = ino == pyfuse3.ROOT_INODE
            e.st_mode = stat.S_IFDIR | 0o755 if root else stat.S_IFREG | 0o644
            e.st_nlink = 1
            e.attr_timeout = e.entry_timeout = 3600
            return e

        async def getattr(self, inode, ctx=None):
            return self._attrs(inode)

        async def lookup(self, parent_inode, name, ctx=None):
            if name == b"f":
                return self._attrs(2)
            raise pyfuse3.FUSEError(errno.ENOENT)

        async def getxattr(self, inode, name, ctx):
            raise pyfuse3.FUSEError(errno.ENODATA)

    async def main() -> None:
        before = request_wait.fuse_fds()
        pyfuse3.init(Null(), mountpoint, {"fsname=null", "default_permissions"})
        fd = request_wait.fuse_fd(before)
        waiting = (
            request_wait.installed(fd, busy_poll)
            if busy_poll is not None and fd is not None
            else contextlib.nullcontext()
        )
        try:
            with waiting:
                await pyfuse3.main(min_tasks=1, max_tasks=8)
        finally:
            pyfuse3.close()

    trio.run(main)


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(path: Path, pid: int, n: int) -> tuple[float, float]:
    """(wall us, daemon CPU us) per getxattr of a missing attribute."""
    for _ in range(100):  # warm the dentry and the daemon's caches
        _getxattr(path)
    cpu0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    for _ in range(n):
        _getxattr(path)
    wall = time.perf_counter() - t0
    return 1e6 * wall / n, 1e6 * (cpu_seconds(pid) - cpu0) / n


def _getxattr(path: Path) -> None:
    try:
        os.getxattr(path, NAME, follow_symlinks=False)
    except OSError as exc:
        if exc.errno != errno.ENODATA:
            raise
    else:
        raise RuntimeError(f"{path} has {NAME}")


@contextlib.contextmanager
def _cpu_latency_held():
    """Hold a 0 µs CPU wake-up latency request, as ``chanos mount`` does during bursts
    (``chanos.compat.wake_latency``): the same system setting for a peer."""
    fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
    try:
        os.write(fd, struct.pack("=i", 0))
        yield
    finally:
        os.close(fd)


def run_target(kind: str, work: Path, master: Path, n: int) -> tuple[float, float]:
    mnt = work / f"mnt-{kind}"
    mnt.mkdir()
    if kind == "null":
        cmd = [sys.executable, __file__, "--serve-null", str(mnt)]
    elif kind == "null-wait":
        cmd = [sys.executable, __file__, "--serve-null", str(mnt), "--busy-poll", "default"]
    elif kind in ("chanos", "chanos-nolat"):
        image = work / f"{kind}.img"
        shutil.copyfile(master, image)
        cmd = [CHANOS, "mount", "-f", str(image), str(mnt)]
        if kind == "chanos-nolat":
            cmd += ["-o", "nocpu_latency"]
    else:
        image = work / f"{kind}.img"
        shutil.copyfile(master, image)
        cmd = ["fuse2fs", "-f", str(image), str(mnt)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"{kind} did not mount: {err.strip()}")
            time.sleep(0.05)
        f = mnt / "f"
        if not kind.startswith("null"):
            f.write_bytes(b"")
        if kind == "fuse2fs-lat":
            with _cpu_latency_held():
                return measure(f, proc.pid, n)
        return measure(f, proc.pid, n)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--targets", default="null,null-wait,chanos,chanos-nolat,fuse2fs,fuse2fs-lat")
    ap.add_argument("--serve-null", metavar="MOUNTPOINT", help=argparse.SUPPRESS)
    ap.add_argument("--busy-poll", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.serve_null:
        from chanos.compat.options import MountConfig

        busy_poll = MountConfig().busy_poll if a.busy_poll == "default" else None
        serve_null(a.serve_null, busy_poll)
        return 0
    targets = a.targets.split(",")
    with tempfile.TemporaryDirectory(prefix="chanos-floor-") as tmp:
        work = Path(tmp)
        master = work / "master.img"
        subprocess.run([CHANOS, "mkfs", str(master), "--size", "256M"], check=True,
                       capture_output=True)  # fmt: skip
        results = {t: run_target(t, work, master, a.requests) for t in targets}
    base = results.get("fuse2fs")
    print(f"\n### one GETXATTR round trip, {a.requests} requests per target\n")
    print("| target | wall us/request | daemon CPU us/request |")
    print("|---|---:|---:|")
    for t, (wall, cpu) in results.items():
        ratio = f" ({wall / base[0]:.1f}x)" if base and t != "fuse2fs" else ""
        print(f"| {t} | {wall:.1f}{ratio} | {cpu:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
