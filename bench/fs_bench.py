#!/usr/bin/env python3
"""In-process file-system benchmark: the kernel driven by system-call messages, no FUSE.

    python bench/fs_bench.py [--json] [--files N] [--mib M] [--ram] [--max-vnodes V]
                             [--write-behind BYTES] [--tree-dirs D]

Measures, on a fresh ``mkfs.ext4 -O ^metadata_csum`` image (an image file in a temp dir,
or a RAM disk with ``--ram``):

- creates/s: Create + Release of N empty files in one directory (what ``touch`` costs);
- stats/s: Lookup of each of them (a stat by path the host kernel has not cached is one
  lookup, whose Entry carries the attributes);
- unlinks/s: Unlink + Forget of each;
- getattrs/s: GetAttr of each (a stat the host kernel's attribute cache missed);
- renames/s: Rename of each within its directory;
- tree creates/s: a tree of D directories of F files of 4 KiB (MkDir, then Create +
  Write + Release per file, as the mount sends them (the front end declines FLUSH): what
  untar or ``cp -r`` of small files costs);
- rm -rf files/s: the same tree removed (Unlink + Forget per file, RmDir + Forget per
  directory), counted in files;
- sequential write MB/s: a M MiB file in 1 MiB writes (FUSE's largest), then FSync;
- sequential read MB/s: the same file after a remount (nothing cached above the device;
  the host page cache may still hold the image file);
- message hops per operation: actor messages (calls and casts, counted with the model's
  tracing hook) per create, stat, getattr, rename, unlink, tree file (create + 4 KiB +
  close), rm -rf file, mkdir, rmdir, 1 MiB write and 1 MiB read, in a separate pass with
  tracing on (so the timed passes run with tracing off);
- peak memory: the process's VmHWM at the end (imports included).

The last line with ``--json`` is one JSON object with the same figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import trio
from chanos.personality import trace
from chanos.personality.boot import MountOptions, boot
from chanos.personality.syscalls import (
    ROOT_INO,
    Create,
    Forget,
    FSync,
    GetAttr,
    Lookup,
    MkDir,
    Open,
    Read,
    Release,
    Rename,
    RmDir,
    Unlink,
    Write,
)

MIB = 1 << 20


def mkfs(path: Path, size: str) -> None:
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "^metadata_csum", str(path), size],
        check=True,
        capture_output=True,
    )


@asynccontextmanager
async def mounted(source, ram: bool, max_vnodes: int, write_behind: int | None = None):
    opts = MountOptions(max_vnodes=max_vnodes)
    if write_behind is not None:
        opts = replace(opts, write_behind=write_behind)
    if ram:
        from chanos.drivers import RamDiskDriver

        data = Path(source).read_bytes()
        async with boot(lambda: RamDiskDriver(data), opts) as k:
            yield k
    else:
        async with boot(str(source), opts) as k:
            yield k


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class HopCounter:
    """Counts actor messages (trace "send" events) between two marks."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, ev) -> None:
        if ev.kind == "send":
            self.n += 1


FLAGS = os.O_WRONLY | os.O_CREAT
PAGE = b"t" * 4096


async def creates(k, d: int, names: list[bytes]) -> None:
    for name in names:
        h, _ = await k.syscall(Create(d, name, 0o644, FLAGS))
        await k.syscall(Release(h))


async def lookups(k, d: int, names: list[bytes]) -> list[int]:
    return [(await k.syscall(Lookup(d, name))).inode for name in names]


async def getattrs(k, inos: list[int]) -> None:
    for ino in inos:
        await k.syscall(GetAttr(ino))


async def renames(k, d: int, names: list[bytes]) -> list[bytes]:
    new = [name + b".r" for name in names]
    for old, name in zip(names, new, strict=True):
        await k.syscall(Rename(d, old, d, name, 0))
    return new


async def unlinks(k, d: int, names: list[bytes], inos: list[int], refs: int) -> None:
    for name, ino in zip(names, inos, strict=True):
        await k.syscall(Unlink(d, name))
        await k.syscall(Forget(ino, refs))


async def tree_create(k, top: int, dirs: int, files: int) -> list[tuple[int, int, list]]:
    """``dirs`` directories of ``files`` 4 KiB files -> [(dir inode, lookups, files)]."""
    tree = []
    for i in range(dirs):
        d = (await k.syscall(MkDir(top, b"d%03d" % i, 0o755))).inode
        made = []
        for j in range(files):
            name = b"f%04d" % j
            h, e = await k.syscall(Create(d, name, 0o644, FLAGS))
            await k.syscall(Write(h, 0, PAGE))
            await k.syscall(Release(h))  # no Flush: the front end declines FLUSH
            made.append((name, e.inode))
        tree.append((d, made))
    return tree


async def tree_remove(k, top: int, tree: list) -> None:
    for i, (d, made) in enumerate(tree):
        for name, ino in made:
            await k.syscall(Unlink(d, name))
            await k.syscall(Forget(ino, 1))
        await k.syscall(RmDir(top, b"d%03d" % i))
        await k.syscall(Forget(d, 1))


async def metadata_ops(k, d: int, names: list[bytes], tree_dirs: int) -> dict[str, float]:
    n = len(names)
    t0 = time.perf_counter()
    await creates(k, d, names)
    t1 = time.perf_counter()
    inos = await lookups(k, d, names)
    t2 = time.perf_counter()
    await getattrs(k, inos)
    t3 = time.perf_counter()
    names = await renames(k, d, names)
    t4 = time.perf_counter()
    await unlinks(k, d, names, inos, 2)
    t5 = time.perf_counter()
    top = (await k.syscall(MkDir(ROOT_INO, b"tree", 0o755))).inode
    per_dir = max(n // tree_dirs, 1)
    t6 = time.perf_counter()
    tree = await tree_create(k, top, tree_dirs, per_dir)
    t7 = time.perf_counter()
    await tree_remove(k, top, tree)
    t8 = time.perf_counter()
    files = tree_dirs * per_dir
    return {
        "creates_per_s": n / (t1 - t0),
        "stats_per_s": n / (t2 - t1),
        "getattrs_per_s": n / (t3 - t2),
        "renames_per_s": n / (t4 - t3),
        "unlinks_per_s": n / (t5 - t4),
        "tree_creates_per_s": files / (t7 - t6),
        "rm_rf_files_per_s": files / (t8 - t7),
    }


async def write_file(k, mib: int) -> tuple[int, float]:
    chunk = os.urandom(MIB)
    t0 = time.perf_counter()
    h, e = await k.syscall(Create(ROOT_INO, b"big", 0o644, os.O_WRONLY | os.O_CREAT))
    for i in range(mib):
        await k.syscall(Write(h, i * MIB, chunk))
    await k.syscall(FSync(h, False))
    await k.syscall(Release(h))
    return e.inode, mib / (time.perf_counter() - t0)


async def read_file(k, ino: int, mib: int) -> float:
    t0 = time.perf_counter()
    h = await k.syscall(Open(ino, os.O_RDONLY))
    total = 0
    for i in range(mib):
        total += len(await k.syscall(Read(h, i * MIB, MIB)))
    await k.syscall(Release(h))
    assert total == mib * MIB
    return mib / (time.perf_counter() - t0)


async def count_hops(k, d: int) -> dict[str, float]:
    counter = HopCounter()
    trace.enable(record=False, hooks=[counter])
    try:
        out = {}
        n = 50
        names = [b"hop-%d" % i for i in range(n)]

        async def measure(key, fn):
            counter.n = 0
            await fn()
            out[key] = counter.n / n

        inos: list[int] = []
        renamed: list[bytes] = []
        tree: list = []
        top = (await k.syscall(MkDir(ROOT_INO, b"hop-tree", 0o755))).inode

        async def stats():
            inos.extend(await lookups(k, d, names))

        async def rename():
            renamed.extend(await renames(k, d, names))

        async def tree_files():
            tree.extend(await tree_create(k, top, 1, n))

        async def rm_files():
            for name, ino in tree[0][1]:
                await k.syscall(Unlink(tree[0][0], name))
                await k.syscall(Forget(ino, 1))

        dnames = [b"hd%d" % i for i in range(n)]
        dinos: list[int] = []

        async def mkdirs():
            for name in dnames:
                dinos.append((await k.syscall(MkDir(top, name, 0o755))).inode)

        async def rmdirs():
            for name, ino in zip(dnames, dinos, strict=True):
                await k.syscall(RmDir(top, name))
                await k.syscall(Forget(ino, 1))

        h, _ = await k.syscall(Create(d, b"hop-data", 0o644, os.O_RDWR | os.O_CREAT))
        chunk = os.urandom(MIB)

        async def writes():
            for i in range(n):
                await k.syscall(Write(h, i * MIB, chunk))

        async def reads():
            for i in range(n):
                await k.syscall(Read(h, i * MIB, MIB))

        await measure("create", lambda: creates(k, d, names))
        await measure("stat", stats)
        await measure("getattr", lambda: getattrs(k, inos))
        await measure("rename", rename)
        await measure("unlink", lambda: unlinks(k, d, renamed, inos, 2))
        await measure("tree_file", tree_files)
        await measure("rm_rf_file", rm_files)
        await measure("mkdir", mkdirs)
        await measure("rmdir", rmdirs)
        await measure("write_1mib", writes)
        await measure("read_1mib", reads)
        await k.syscall(Release(h))
        return out
    finally:
        trace.disable()


async def run(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="chanos-fsbench-"))
    try:
        img = tmp / "bench.img"
        size_mib = max(512, args.mib * 2 + 256)
        mkfs(img, f"{size_mib}M")
        names = [b"file-%06d" % i for i in range(args.files)]
        async with mounted(img, args.ram, args.max_vnodes, args.write_behind) as k:
            d = (await k.syscall(MkDir(ROOT_INO, b"meta", 0o755))).inode
            res = await metadata_ops(k, d, names, args.tree_dirs)
            ino, res["write_mb_per_s"] = await write_file(k, args.mib)
            if args.ram:
                # A RAM disk does not survive a remount: read back in the same mount.
                res["read_mb_per_s"] = await read_file(k, ino, args.mib)
            res["hops_per_op"] = await count_hops(k, d)
            stats = await k.vnode_stats()
            res["vnodes_live_peak"] = stats.peak
        if not args.ram:
            async with mounted(img, False, args.max_vnodes, args.write_behind) as k:
                res["read_mb_per_s"] = await read_file(k, ino, args.mib)
            fsck = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True)
            res["e2fsck_clean"] = fsck.returncode == 0
        res["peak_rss_mib"] = peak_rss_mib()
        res.update(files=args.files, mib=args.mib, device="ram" if args.ram else "image file")
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="also print one JSON line")
    ap.add_argument("--files", type=int, default=2000, help="files for create/stat/unlink")
    ap.add_argument("--mib", type=int, default=256, help="size of the sequential file")
    ap.add_argument("--tree-dirs", type=int, default=20, help="directories of the tree")
    ap.add_argument("--ram", action="store_true", help="RAM disk instead of an image file")
    ap.add_argument("--max-vnodes", type=int, default=10_000)
    ap.add_argument("--write-behind", type=int, default=None, help="driver write cache, bytes")
    args = ap.parse_args(argv)
    res = trio.run(run, args)
    hops = res["hops_per_op"]
    print(f"chanos fs_bench ({res['device']}, {res['files']} files, {res['mib']} MiB file)")
    print(f"  creates/s        {res['creates_per_s']:10.0f}")
    print(f"  stats/s          {res['stats_per_s']:10.0f}")
    print(f"  getattrs/s       {res['getattrs_per_s']:10.0f}")
    print(f"  renames/s        {res['renames_per_s']:10.0f}")
    print(f"  unlinks/s        {res['unlinks_per_s']:10.0f}")
    print(f"  tree creates/s   {res['tree_creates_per_s']:10.0f}   (files: create + 4 KiB + close)")
    print(f"  rm -rf files/s   {res['rm_rf_files_per_s']:10.0f}")
    print(f"  seq write MB/s   {res['write_mb_per_s']:10.1f}   (1 MiB writes + fsync)")
    print(f"  seq read MB/s    {res['read_mb_per_s']:10.1f}   (1 MiB reads)")
    print("  message hops per operation:")
    for key, v in hops.items():
        print(f"    {key:<14} {v:8.1f}")
    print(f"  peak RSS MiB     {res['peak_rss_mib']:10.1f}   (VmHWM, imports included)")
    if "e2fsck_clean" in res:
        print(f"  e2fsck -fn clean: {res['e2fsck_clean']}")
    if args.json:
        print(json.dumps(res))
    return 0 if res.get("e2fsck_clean", True) else 1


if __name__ == "__main__":
    sys.exit(main())
