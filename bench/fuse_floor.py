#!/usr/bin/env python3
"""What FUSE requests cost: chanos, a pyfuse3 file system with nothing behind it, fuse2fs.

    bench/fuse_floor.py [--requests N] [--files N] [--targets null,null-lat,chanos,fuse2fs]

Every target answers the same request N times: getxattr(2) of an attribute the file does
not have. The host kernel caches no xattr answers, so each call is exactly one GETXATTR
round trip to the daemon. Printed per target: microseconds per request (wall) and the
daemon's CPU time per request, with ratios against fuse2fs.

With ``--files N`` (default 5,000; 0 skips it), each target then creates N empty files in
one directory, stats them and unlinks them, one Python loop each, as
``../shared/tools/fsbench.sh`` does: microseconds per operation and the daemon's CPU per
operation. For ``null`` these are the requests alone (an unlink is a GETATTR of the
directory, the UNLINK, and the FORGET), which tells how much of a row of
``bench/fs_compare.py`` the FUSE path itself takes and how much is the file system's work.

``null`` is a pyfuse3 file system that answers from memory with nothing behind it (a dict
of names per directory; this script serves it with ``--serve-null MOUNTPOINT``): the least
any pyfuse3 daemon under trio pays per request with pyfuse3's own request loop.
``null-wait`` is the same file system waiting for requests as ``chanos mount`` does (the
request wait of ``chanos.compat.request_wait``: a busy poll before sleeping, one worker
asleep on the descriptor); ``null-lat`` adds, as ``chanos mount`` does as root, the CPU
wake-up latency request of ``chanos.compat.wake_latency`` during bursts. Rows of
``bench/fs_compare.py`` whose workloads are many small requests (creates, unlinks,
ls -lR, untar) are bounded by the last: chanos's cost per request is that floor plus its
own work. Needs root for fuse2fs (``-o fakeroot`` is not needed as root).

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


def serve_null(mountpoint: str, busy_poll: float | None, latency: bool = False) -> None:
    """A file system in a dict: a root directory holding one empty file, ``f``; files and
    directories made in it exist by name only (no data, no times kept).

    With ``busy_poll`` (seconds) it waits for requests as ``chanos mount`` does
    (``chanos.compat.request_wait``), else with pyfuse3's own loop; with ``latency`` too,
    it holds the CPU wake-up latency request of ``chanos.compat.wake_latency`` during
    bursts, as ``chanos mount`` does as root.
    """
    import stat

    import pyfuse3
    import trio
    from chanos.compat import request_wait
    from chanos.compat.wake_latency import WakeLatency

    root = pyfuse3.ROOT_INODE

    class Null(pyfuse3.Operations):
        def __init__(self) -> None:
            super().__init__()
            self.modes = {root: stat.S_IFDIR | 0o755, 2: stat.S_IFREG | 0o644}
            self.dirs: dict[int, dict[bytes, int]] = {root: {b"f": 2}}
            self.next_ino = 3

        def _attrs(self, ino: int) -> pyfuse3.EntryAttributes:
            e = pyfuse3.EntryAttributes()
            e.st_ino = ino
            e.st_mode = self.modes[ino]
            e.st_nlink = 1
            e.attr_timeout = e.entry_timeout = 3600
            return e

        def _new(self, parent: int, name: bytes, mode: int) -> int:
            ino = self.next_ino
            self.next_ino += 1
            self.modes[ino] = mode
            self.dirs[parent][name] = ino
            return ino

        def _child(self, parent: int, name: bytes, remove: bool = False) -> int:
            entries = self.dirs[parent]
            ino = entries.pop(name, None) if remove else entries.get(name)
            if ino is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return ino

        async def getattr(self, inode, ctx=None):
            return self._attrs(inode)

        async def lookup(self, parent_inode, name, ctx=None):
            return self._attrs(self._child(parent_inode, name))

        async def mkdir(self, parent_inode, name, mode, ctx):
            ino = self._new(parent_inode, name, stat.S_IFDIR | stat.S_IMODE(mode))
            self.dirs[ino] = {}
            return self._attrs(ino)

        async def create(self, parent_inode, name, mode, flags, ctx):
            ino = self._new(parent_inode, name, stat.S_IFREG | stat.S_IMODE(mode))
            return pyfuse3.FileInfo(fh=ino), self._attrs(ino)

        async def release(self, fh):
            pass

        async def unlink(self, parent_inode, name, ctx):
            del self.modes[self._child(parent_inode, name, remove=True)]

        async def rmdir(self, parent_inode, name, ctx):
            ino = self._child(parent_inode, name, remove=True)
            del self.dirs[ino], self.modes[ino]

        async def forget(self, inode_list):
            pass

        async def getxattr(self, inode, name, ctx):
            raise pyfuse3.FUSEError(errno.ENODATA)

    async def main() -> None:
        before = request_wait.fuse_fds()
        pyfuse3.init(Null(), mountpoint, {"fsname=null", "default_permissions"})
        fd = request_wait.fuse_fd(before)
        wake = WakeLatency.open(0) if latency and busy_poll is not None else None
        waiting = (
            request_wait.installed(fd, busy_poll, None, wake)
            if busy_poll is not None and fd is not None
            else contextlib.nullcontext()
        )
        try:
            with waiting:
                async with trio.open_nursery() as nursery:
                    if wake is not None:
                        nursery.start_soon(wake.run)
                    await pyfuse3.main(min_tasks=1, max_tasks=8)
                    nursery.cancel_scope.cancel()
        finally:
            if wake is not None:
                wake.close()
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


def measure_files(root: Path, pid: int, n: int) -> dict[str, tuple[float, float]]:
    """(wall us, daemon CPU us) per create, stat and unlink of ``n`` empty files in a new
    directory under ``root``: one loop each, as ``fsbench.sh`` runs them."""
    d = root / "files"
    d.mkdir()
    paths = [str(d / f"f{i:06d}") for i in range(n)]
    out = {}
    for op in ("create", "stat", "unlink"):
        cpu0 = cpu_seconds(pid)
        t0 = time.perf_counter()
        if op == "create":
            for p in paths:
                os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))
        elif op == "stat":
            for p in paths:
                os.stat(p)
        else:
            for p in paths:
                os.unlink(p)
        wall = time.perf_counter() - t0
        out[op] = (1e6 * wall / n, 1e6 * (cpu_seconds(pid) - cpu0) / n)
    d.rmdir()
    return out


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


def run_target(
    kind: str, work: Path, master: Path, n: int, files: int
) -> dict[str, tuple[float, float]]:
    """Mount ``kind``, measure it: {"getxattr": (wall, cpu), "create": ..., ...}."""
    mnt = work / f"mnt-{kind}"
    mnt.mkdir()
    if kind == "null":
        cmd = [sys.executable, __file__, "--serve-null", str(mnt)]
    elif kind in ("null-wait", "null-lat"):
        cmd = [sys.executable, __file__, "--serve-null", str(mnt), "--busy-poll", "default"]
        if kind == "null-lat":
            cmd.append("--latency")
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
        held = _cpu_latency_held() if kind == "fuse2fs-lat" else contextlib.nullcontext()
        with held:
            results = {"getxattr": measure(f, proc.pid, n)}
            if files:
                results.update(measure_files(mnt, proc.pid, files))
        return results
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument(
        "--targets", default="null,null-wait,null-lat,chanos,chanos-nolat,fuse2fs,fuse2fs-lat"
    )
    ap.add_argument("--serve-null", metavar="MOUNTPOINT", help=argparse.SUPPRESS)
    ap.add_argument("--busy-poll", help=argparse.SUPPRESS)
    ap.add_argument("--latency", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.serve_null:
        from chanos.compat.options import MountConfig

        busy_poll = MountConfig().busy_poll if a.busy_poll == "default" else None
        serve_null(a.serve_null, busy_poll, a.latency)
        return 0
    targets = a.targets.split(",")
    with tempfile.TemporaryDirectory(prefix="chanos-floor-") as tmp:
        work = Path(tmp)
        master = work / "master.img"
        subprocess.run([CHANOS, "mkfs", str(master), "--size", "256M"], check=True,
                       capture_output=True)  # fmt: skip
        results = {t: run_target(t, work, master, a.requests, a.files) for t in targets}
    print(f"\n### one GETXATTR round trip, {a.requests} requests per target\n")
    _table(results, ["getxattr"], "request")
    if a.files:
        print(f"\n### {a.files} empty files in one directory: create, stat, unlink\n")
        _table(results, ["create", "stat", "unlink"], "operation")
    return 0


def _table(results: dict[str, dict[str, tuple[float, float]]], ops: list[str], per: str) -> None:
    """Wall and daemon CPU microseconds per ``per`` for each target and op; wall ratios
    against fuse2fs (above 1: slower)."""
    base = results.get("fuse2fs")
    head = " | ".join(f"{op} wall us/{per} | {op} daemon CPU us" for op in ops)
    print(f"| target | {head} |")
    print("|---|" + "---:|---:|" * len(ops))
    for t, res in results.items():
        cells = []
        for op in ops:
            wall, cpu = res[op]
            ratio = f" ({wall / base[op][0]:.2f}x)" if base and t != "fuse2fs" else ""
            cells.append(f"{wall:.1f}{ratio} | {cpu:.1f}")
        print(f"| {t} | {' | '.join(cells)} |")


if __name__ == "__main__":
    sys.exit(main())
