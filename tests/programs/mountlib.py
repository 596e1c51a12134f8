"""Helpers for the mount tests: a real chanos FUSE mount of a fresh image in a temp dir.

``Mounted`` runs ``chanos mount -f`` as a child process (so a hung daemon can be killed
and its log shown), waits until the mount is ready, and on ``unmount()`` unmounts with
fusermount3, waits for the daemon to write everything back and exit, and checks the
image with ``e2fsck -fn``. ``tree_digest`` fingerprints a tree (types, modes, sizes,
content hashes, link targets, xattrs) so a remount can prove nothing changed.

FUSE availability: ``require_fuse()`` skips when /dev/fuse or fusermount3 is missing,
unless CHANOS_REQUIRE_FUSE=1, in which case that is a failure.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHANOS = str(Path(sys.executable).parent / "chanos")
E2FSCK = shutil.which("e2fsck") or "/sbin/e2fsck"
PROGRAMS = Path(__file__).resolve().parent


def fuse_problem() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "no access to /dev/fuse"
    if not shutil.which("fusermount3"):
        return "fusermount3 not installed"
    return None


def require_fuse() -> None:
    problem = fuse_problem()
    if problem is None:
        return
    if os.environ.get("CHANOS_REQUIRE_FUSE") == "1":
        pytest.fail(f"FUSE required (CHANOS_REQUIRE_FUSE=1) but unavailable: {problem}")
    pytest.skip(f"FUSE unavailable: {problem}")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed")
    return path


def mkfs(image: Path, size: str = "256M", block_size: int = 4096) -> Path:
    subprocess.run(
        [CHANOS, "mkfs", str(image), "--size", size, "--block-size", str(block_size)],
        check=True,
        capture_output=True,
    )
    return image


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def fsck(image: Path) -> tuple[int, str]:
    proc = subprocess.run(
        [E2FSCK, "-fn", str(image)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return proc.returncode, proc.stdout


def chanos(*args: str, **kw) -> subprocess.CompletedProcess:
    """Run the ``chanos`` command with ``args``; output captured as text."""
    return subprocess.run([CHANOS, *args], capture_output=True, text=True, timeout=120, **kw)


def run(cmd, cwd=None, timeout: float = 300, env=None, input=None) -> str:
    """Run a command (list or shell string); fail the test with its output if it fails."""
    shell = isinstance(cmd, str)
    try:
        proc = subprocess.run(
            cmd,
            shell=shell,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            env=env,
            input=input,
            text=True,
            executable="/bin/bash" if shell else None,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{cmd!r} timed out after {timeout}s:\n{exc.stdout}")
    if proc.returncode != 0:
        pytest.fail(f"{cmd!r} exited {proc.returncode}:\n{proc.stdout[-4000:]}")
    return proc.stdout


class Mounted:
    """A chanos daemon serving ``image`` on ``mountpoint`` (``chanos mount -f``)."""

    def __init__(self, image: Path, mountpoint: Path, options: str = "", log: Path | None = None):
        self.image = Path(image)
        self.mnt = Path(mountpoint)
        self.options = options
        self.log = log or self.image.with_suffix(".log")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Mounted:
        self.mount()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.unmount()
        else:
            self.kill()

    def mount(self, timeout: float = 60) -> None:
        require_fuse()
        self.mnt.mkdir(parents=True, exist_ok=True)
        cmd = [CHANOS, "mount", "-f", str(self.image), str(self.mnt)]
        opts = ",".join(o for o in ("log_level=warning", self.options) if o)
        cmd += ["-o", opts]
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not is_mounted(self.mnt):
            if self.proc.poll() is not None:
                pytest.fail(f"chanos mount exited {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"mount not ready after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.02)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def unmount(self, timeout: float = 180, check: bool = True) -> None:
        """fusermount3 -u, wait for the daemon to exit 0, then e2fsck -fn must be clean."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            p = subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True, text=True)
            if p.returncode == 0 or not is_mounted(self.mnt):
                break
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"cannot unmount: {p.stderr}\n{self.log_tail()}")
            time.sleep(0.2)  # busy: a program of the test is still finishing
        try:
            code = self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"daemon did not exit after unmount:\n{self.log_tail()}")
        self.proc = None
        if code != 0:
            pytest.fail(f"daemon exited {code}:\n{self.log_tail()}")
        if check:
            self.check_clean()

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 180) -> int:
        """Stop the daemon with a signal; return its exit code."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"daemon did not stop on signal {sig}:\n{self.log_tail()}")
        self.proc = None
        return code

    def check_clean(self) -> None:
        code, out = fsck(self.image)
        if code != 0:
            pytest.fail(f"e2fsck -fn exited {code}:\n{out}\ndaemon log:\n{self.log_tail()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)

    def remount(self) -> None:
        self.unmount()
        self.mount()


def tree_digest(root: Path, *, xattrs: bool = True, times: bool = False) -> dict[str, tuple]:
    """Relative path -> (type, mode, size, sha256 / link target, nlink, xattrs[, mtime])."""
    out: dict[str, tuple] = {}
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                content = h.hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            else:
                content = ""
            xa: tuple = ()
            if xattrs and not stat.S_ISLNK(st.st_mode):
                xa = tuple(sorted((n, os.getxattr(p, n)) for n in os.listxattr(p)))
            size = st.st_size if not stat.S_ISDIR(st.st_mode) else 0
            row = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                size,
                content,
                st.st_nlink,
                xa,
            )
            if times:
                row += (st.st_mtime_ns,)
            out[rel] = row
    return out


@pytest.fixture
def chanos_mount(tmp_path: Path):
    """A mounted fresh 256 MiB image; unmounted (and e2fsck-checked) at the end."""
    require_fuse()
    image = mkfs(tmp_path / "chanos.img")
    m = Mounted(image, tmp_path / "mnt")
    m.mount()
    try:
        yield m
    finally:
        if m.proc is not None:
            m.kill()
