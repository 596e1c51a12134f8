#!/usr/bin/env python3
"""chanos against its peers, in one run: chanos, fuse2fs on an identical image, tmpfs.

    bench/fs_compare.py [--size 3G] [--targets chanos,fuse2fs,tmpfs] [--quick]
                        [--rounds 3] [--out DIR]

Every target gets the same workloads, one after the other, on a fresh mount:
``../shared/tools/fsbench.sh`` beside the repository (or $FSBENCH) for
creates/stats/unlinks per second,
``ls -lR`` of a 4,000-file tree cold and warm, ``cp -r`` of that tree, sequential 512 MiB
write with fsync and cold read, 4 KiB random-write IOPS with fio, cp in/out; plus, from
this script, the untar of a real source tree (the Python standard library) with a final
sync, 100,000 files created in one directory then listed cold with ``ls -l`` and
removed (fuse2fs scans a directory linearly for every change and listing, so this takes
it about ten minutes; ``--quick`` uses 10,000), and the daemon's peak memory over the
whole run (VmHWM). chanos and fuse2fs get
byte-identical copies of one image made by ``chanos mkfs``; after unmounting, both images
must pass ``e2fsck -fn``.

A target name may carry chanos mount options after a colon, e.g. ``chanos:nowriteback``
(measure the writeback cache off) or ``chanos:attr_timeout=0``. ``chanos`` asks the
kernel for a 0 µs CPU wake-up latency while requests come back to back (see
``chanos.compat.wake_latency``; ``chanos:nocpu_latency`` measures without it), which
fuse2fs does not do: the ``fuse2fs-lat`` target is fuse2fs measured while this script
holds the same request, to see the peer under that setting too. The result is one
markdown table with the fuse2fs column as the base of the ratios (``x`` > 1: more
than fuse2fs for rates, longer for seconds). Needs root (mounts, drop_caches).

Every target is measured ``--rounds`` times (3 by default), each time on a fresh copy of
the image, the targets taken in turn and their order reversed every other round (A B,
B A, A B), so that a machine whose speed drifts during the run favours no target. Each
cell of the table is then the median of the rounds (the peak memory rows: the largest),
and a second table gives every round's own ratio to the base, which shows how far one
run can be trusted. The 100,000-file directory is measured in the last round only: it
is most of fuse2fs's time, so three rounds of four targets took 26 minutes here and a
single pass (``--rounds 1``) about 20. Raw rows stay in ``results-rN.tsv``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHANOS = str(Path(sys.executable).parent / "chanos")
SOURCE_SUBDIRS = (
    *("asyncio", "email", "json", "xml", "unittest", "logging", "http", "urllib"),
    *("concurrent", "importlib", "multiprocessing", "sqlite3", "tomllib"),
)
# The peer benchmark script lives beside the repository, in ../shared/tools/.
FSBENCH = os.environ.get("FSBENCH", str(ROOT.parent / "shared" / "tools" / "fsbench.sh"))


def log(msg: str) -> None:
    print(f"[fs_compare] {msg}", file=sys.stderr, flush=True)


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def wait_mounted(path: Path, proc: subprocess.Popen | None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not is_mounted(path):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"daemon exited {proc.returncode} before mounting {path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} not mounted after {timeout}s")
        time.sleep(0.05)


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Target:
    """One mounted file system under test."""

    def __init__(self, spec: str, work: Path, master: Path) -> None:
        self.kind, _, self.opts = spec.partition(":")
        self.label = spec.replace(":", "+")
        self.mnt = work / f"mnt-{self.label}"
        self.image = work / f"{self.label}.img"
        self.master = master
        self.proc: subprocess.Popen | None = None
        self.peak = 0.0
        self.latency_fd: int | None = None

    def mount(self) -> None:
        self.mnt.mkdir(exist_ok=True)
        if self.kind == "tmpfs":
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4G", "tmpfs", str(self.mnt)],
                           check=True)  # fmt: skip
            return
        subprocess.run(["cp", "--sparse=always", str(self.master), str(self.image)], check=True)
        logf = open(self.image.with_suffix(".log"), "ab")  # noqa: SIM115 - lives with the daemon
        if self.kind == "chanos":
            cmd = [CHANOS, "mount", "-f", str(self.image), str(self.mnt)]
            if self.opts:
                cmd += ["-o", self.opts]
        elif self.kind in ("fuse2fs", "fuse2fs-lat"):
            cmd = ["fuse2fs", "-f", str(self.image), str(self.mnt)]
            if self.opts:
                cmd += ["-o", self.opts]
            if self.kind == "fuse2fs-lat":
                # Held for the whole target: chanos holds it only during bursts.
                self.latency_fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
                os.write(self.latency_fd, struct.pack("=i", 0))
        else:
            raise SystemExit(f"unknown target {self.kind}")
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
        wait_mounted(self.mnt, self.proc)

    def sample(self) -> None:
        if self.proc is not None:
            self.peak = max(self.peak, peak_rss_mib(self.proc.pid) or 0.0)

    def unmount(self) -> str:
        """Unmount, wait for the daemon, fsck the image -> e2fsck verdict."""
        if self.kind == "tmpfs":
            subprocess.run(["umount", str(self.mnt)], check=True)
            return ""
        self.sample()
        subprocess.run(["fusermount3", "-u", str(self.mnt)], check=False)
        assert self.proc is not None
        try:
            self.proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return "daemon hung at unmount"
        if self.latency_fd is not None:
            os.close(self.latency_fd)
            self.latency_fd = None
        p = subprocess.run(["e2fsck", "-fn", str(self.image)], capture_output=True, text=True)
        verdict = "clean" if p.returncode == 0 else f"NOT CLEAN (e2fsck {p.returncode})"
        if p.returncode:
            log(f"{self.label}: e2fsck -fn:\n{p.stdout[-3000:]}")
        return verdict


def drop_caches() -> None:
    os.sync()
    with contextlib.suppress(OSError):  # not root: measure with warm caches
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def emit(tsv: Path, label: str, key: str, desc: str, value: str, unit: str, note: str = "") -> None:
    with open(tsv, "a") as f:
        f.write(f"{label}\t{key}\t{desc}\t{value}\t{unit}\t{note}\n")


def untar(t: Target, tarball: Path, tsv: Path, nfiles: int) -> None:
    dest = t.mnt / "untar"
    dest.mkdir()
    drop_caches()
    t0 = time.perf_counter()
    rc = subprocess.run(["tar", "-xf", str(tarball), "-C", str(dest)]).returncode
    rc = rc or subprocess.run(["sync", "-f", str(dest)]).returncode
    dt = time.perf_counter() - t0
    t.sample()
    note = "" if rc == 0 else f"rc={rc}"
    emit(tsv, t.label, "untar", f"untar of a source tree ({nfiles} files) + sync", f"{dt:.2f}",
         "s", note)  # fmt: skip
    t0 = time.perf_counter()
    rc = subprocess.run(["rm", "-rf", str(dest)]).returncode
    emit(tsv, t.label, "untar_rm", "rm -rf of the untarred tree", f"{time.perf_counter() - t0:.2f}",
         "s", "" if rc == 0 else f"rc={rc}")  # fmt: skip


_CREATE_MANY = """
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    os.close(os.open(f"{d}/file-with-a-longish-name-{i:08d}", os.O_CREAT | os.O_WRONLY, 0o644))
"""


def bigdir(t: Target, tsv: Path, n: int) -> None:
    """``n`` empty files created in one directory, the host's caches dropped, ``ls -l``
    of it, ``rm -rf``: what a large directory costs, above all in the daemon's memory
    (its peak counts in the whole-run VmHWM row)."""
    dest = t.mnt / "bigdir"
    dest.mkdir()
    t0 = time.perf_counter()
    rc = subprocess.run([sys.executable, "-c", _CREATE_MANY, str(dest), str(n)]).returncode
    dt = time.perf_counter() - t0
    emit(tsv, t.label, "bigdir_create", f"create {n} files in one directory",
         f"{n / dt:.1f}", "ops/s", "" if rc == 0 else f"rc={rc}")  # fmt: skip
    drop_caches()
    t0 = time.perf_counter()
    rc = subprocess.run(["ls", "-l", str(dest)], stdout=subprocess.DEVNULL).returncode
    emit(tsv, t.label, "bigdir_ls", "ls -l of that directory (cold)",
         f"{time.perf_counter() - t0:.2f}", "s", "" if rc == 0 else f"rc={rc}")  # fmt: skip
    t.sample()
    t0 = time.perf_counter()
    rc = subprocess.run(["rm", "-rf", str(dest)]).returncode
    emit(tsv, t.label, "bigdir_rm", "rm -rf of that directory",
         f"{time.perf_counter() - t0:.2f}", "s", "" if rc == 0 else f"rc={rc}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="3G", help="image size (default 3G)")
    ap.add_argument("--block-size", default="4096")
    ap.add_argument("--targets", default="chanos,fuse2fs,tmpfs")
    ap.add_argument("--quick", action="store_true", help="smaller workloads (a smoke run)")
    ap.add_argument("--out", type=Path, help="keep results here (default: a temp dir)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="measure every target this many times, in alternating order; "
                    "cells are medians (default 3)")  # fmt: skip
    a = ap.parse_args()
    if a.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    if os.geteuid() != 0:
        raise SystemExit("fs_compare.py needs root (mounts, drop_caches, per-phase RSS)")

    work = Path(tempfile.mkdtemp(prefix="fs_compare.", dir="/var/tmp"))
    out = a.out or work
    out.mkdir(parents=True, exist_ok=True)
    tsv = out / "results.tsv"
    tsv.unlink(missing_ok=True)
    master = work / "master.img"
    subprocess.run([CHANOS, "mkfs", str(master), "--size", a.size, "--block-size",
                    a.block_size], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    # the untar workload: a real source tree, tarred once on the host
    tarball = work / "src.tar"
    src = Path(os.__file__).parent
    nfiles = 0
    with tarfile.open(tarball, "w") as tf:
        for sub in SOURCE_SUBDIRS:
            if (src / sub).exists():
                tf.add(src / sub, arcname=sub)
        nfiles = sum(1 for m in tf.getmembers() if m.isfile())

    env = dict(os.environ)
    if a.quick:
        env.update(FSB_NFILES="1000", FSB_TREE_DIRS="10", FSB_TREE_FILES="100", FSB_SEQ_MB="64",
                   FSB_CP_MB="32", FSB_FIO_MB="16", FSB_FIO_SECS="3", FSB_TIMEOUT="60")  # fmt: skip
    verdicts: dict[str, list[str]] = {}
    targets = [Target(s.strip(), work, master) for s in a.targets.split(",") if s.strip()]
    round_files = [tsv] if a.rounds == 1 else [out / f"results-r{r}.tsv" for r in
                                                range(1, a.rounds + 1)]  # fmt: skip
    try:
        for r, rtsv in enumerate(round_files, 1):
            rtsv.unlink(missing_ok=True)
            suffix = "" if a.rounds == 1 else f"-r{r}"
            for t in targets if r % 2 else targets[::-1]:
                log(f"=== {t.label}" + (f", round {r} of {a.rounds}" if a.rounds > 1 else ""))
                t.mount()
                env_t = dict(env, FSB_TSV=str(rtsv), FSB_HOSTDIR=str(work))
                if t.proc is not None:
                    env_t["FSB_PID"] = str(t.proc.pid)
                p = subprocess.run(["bash", FSBENCH, str(t.mnt), t.label], env=env_t,
                                   stdout=subprocess.PIPE, text=True)  # fmt: skip
                (out / f"fsbench-{t.label}{suffix}.md").write_text(p.stdout)
                t.sample()
                untar(t, tarball, rtsv, nfiles)
                if r == a.rounds:
                    bigdir(t, rtsv, 10_000 if a.quick else 100_000)
                if t.proc is not None:
                    emit(rtsv, t.label, "rss_peak", "daemon peak RSS (whole run, VmHWM)",
                         f"{t.peak:.1f}", "MiB")  # fmt: skip
                verdicts.setdefault(t.label, []).append(t.unmount())
    finally:
        for t in targets:
            if is_mounted(t.mnt):
                subprocess.run(["fusermount3", "-uz", str(t.mnt)], check=False)
                subprocess.run(["umount", "-l", str(t.mnt)], check=False)
            if t.proc is not None and t.proc.poll() is None:
                t.proc.kill()
        _clean_work(work, keep_results=a.out is None, targets=targets)
    base = "fuse2fs" if any(t.label == "fuse2fs" for t in targets) else targets[0].label
    rounds = [read_rows(f) for f in round_files]
    if a.rounds > 1:
        write_rows(tsv, combine(rounds))
    table = subprocess.run(["bash", FSBENCH, "--merge", "--base", base, str(tsv)],
                           capture_output=True, text=True).stdout  # fmt: skip
    what = "ratios against" if a.rounds == 1 else f"medians of {a.rounds} rounds, ratios against"
    print(f"\n### chanos vs peers ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.cpu_count()} cpu, image {a.size}, {what} {base})\n")  # fmt: skip
    print(table)
    if a.rounds > 1:
        print(f"\n### Each round's own ratio against {base}\n")
        print(round_ratios(rounds, base, [t.label for t in targets if t.kind != "tmpfs"]))
    for label, vs in verdicts.items():
        for r, v in enumerate(vs, 1):
            if v:
                where = f", round {r}" if a.rounds > 1 else ""
                print(f"- e2fsck -fn after the run{where}, {label}: {v}")
    print(f"\nraw results: {', '.join(str(f) for f in round_files)}")
    return 0 if all(v in ("", "clean") for vs in verdicts.values() for v in vs) else 1


# One round's rows: (label, key) -> (description, value, unit, note), in file order.
Rows = dict[tuple[str, str], tuple[str, str, str, str]]


def read_rows(tsv: Path) -> Rows:
    """The rows of one round's TSV (fsbench's format; its ``_run`` markers skipped)."""
    rows: Rows = {}
    with contextlib.suppress(FileNotFoundError), open(tsv) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) >= 6 and p[1] != "_run":
                rows[(p[0], p[1])] = (p[2], p[3], p[4], p[5])
    return rows


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def combine(rounds: list[Rows]) -> Rows:
    """One row per (label, key): the median over the rounds that have a number for it
    (the largest for memory peaks, which are bounds whatever the round), with the notes
    of every round; a row with no number keeps the last round's value."""
    out: Rows = {}
    for key in dict.fromkeys(k for rows in rounds for k in rows):
        seen = [rows[key] for rows in rounds if key in rows]
        desc, _, unit, _ = seen[-1]
        texts = [v for _, v, _, _ in seen if _number(v) is not None]
        notes = "; ".join(dict.fromkeys(n for _, _, _, n in seen if n))
        if not texts:
            out[key] = (desc, seen[-1][1], unit, notes)
            continue
        values = [float(v) for v in texts]
        m = max(values) if key[1].startswith("rss") else statistics.median(values)
        decimals = max(len(v.partition(".")[2]) for v in texts)
        out[key] = (desc, f"{m:.{decimals}f}", unit, notes)
    return out


def write_rows(tsv: Path, rows: Rows) -> None:
    """Rows in fsbench's TSV format, a ``_run`` marker before each label's first row."""
    with open(tsv, "w") as f:
        started: set[str] = set()
        for (label, key), (desc, value, unit, note) in rows.items():
            if label not in started:
                started.add(label)
                f.write(f"{label}\t_run\t\t\t\t\n")
            f.write(f"{label}\t{key}\t{desc}\t{value}\t{unit}\t{note}\n")


def round_ratios(rounds: list[Rows], base: str, labels: list[str]) -> str:
    """Markdown: for each row and each target but the base, its ratio to the base in
    every round (same convention as the main table)."""
    lines = ["| metric | target | " + " | ".join(f"round {r}" for r in range(1, len(rounds) + 1))
             + " |", "|---|---|" + "---|" * len(rounds)]  # fmt: skip
    keys = dict.fromkeys(k for rows in rounds for (lab, k) in rows if lab == base)
    for key in keys:
        desc = next(rows[(base, key)][0] for rows in rounds if (base, key) in rows)
        for label in labels:
            if label == base:
                continue
            cells = []
            for rows in rounds:
                b = _number(rows[(base, key)][1]) if (base, key) in rows else None
                x = _number(rows[(label, key)][1]) if (label, key) in rows else None
                cells.append(f"{x / b:.2f}x" if b and x is not None else "")
            if any(cells):
                lines.append(f"| {desc} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _clean_work(work: Path, keep_results: bool, targets: list[Target]) -> None:
    """Remove the images (3 GiB each), the tarball and the mount points; the whole work
    directory when the results went to --out. Nothing under a mount still attached."""
    if any(is_mounted(t.mnt) for t in targets):
        log(f"left {work} in place: a mount under it is still attached")
        return
    if not keep_results:
        shutil.rmtree(work, ignore_errors=True)
        return
    for p in [*work.glob("*.img"), *work.glob("*.tar")]:
        p.unlink(missing_ok=True)
    for t in targets:
        with contextlib.suppress(OSError):
            t.mnt.rmdir()


if __name__ == "__main__":
    sys.exit(main())
