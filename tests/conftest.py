"""Shared test fixtures: fresh ext4 images made by e2fsprogs, and the e2fsck oracle.

Fixtures
  ``ext4_image``        factory: ``ext4_image(size="64M", block_size=4096, ...) -> Path``,
                        a fresh ``mkfs.ext4 -O ^metadata_csum`` image in the test's tmp dir.
  ``fsck_clean``        the helper ``assert_fsck_clean`` as a fixture.
  ``image``             a fresh image, once with 4 KiB and once with 1 KiB blocks (the
                        test runs twice); size ``IMAGE_SIZE`` of the test module, if it
                        sets one, else 64M.
Helpers (importable from tests as ``from conftest import ...``)
  ``make_ext4_image``   the factory behind ``ext4_image``.
  ``assert_fsck_clean`` runs ``e2fsck -fn IMAGE`` and fails the test, showing e2fsck's
                        whole output, unless it exits 0.
  ``debugfs``           runs debugfs requests against an image and returns stdout bytes.
  ``last_orphan``       s_last_orphan as it is on an image file.
  ``Errno``, ``errno_of``, ``k_resolve``, ``k_write_file``, ``k_read_file``, ``k_listdir``:
                        driving a booted kernel through system-call messages (below).

e2fsprogs is the independent oracle here: nothing in chanos checks chanos's own output.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

MKFS = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
E2FSCK = shutil.which("e2fsck") or "/sbin/e2fsck"
DEBUGFS = shutil.which("debugfs") or "/sbin/debugfs"

# The feature set chanos mounts read-write: mke2fs's ext4 defaults without checksums.
DEFAULT_FEATURES = ("^metadata_csum",)


def make_ext4_image(
    directory: Path,
    size: str | int = "64M",
    block_size: int = 4096,
    *,
    name: str | None = None,
    features: Iterable[str] = DEFAULT_FEATURES,
    extra_args: Iterable[str] = (),
) -> Path:
    """Make a fresh ext4 image file with ``mkfs.ext4`` and return its path.

    ``size`` is anything mke2fs accepts ("64M", "1G") or a byte count; ``features`` are
    ``-O`` items (a leading ``^`` clears one); ``extra_args`` go to mke2fs as they are
    (e.g. ``["-N", "64"]`` for an image with few inodes).
    """
    if isinstance(size, int):
        size = f"{size // 1024}k"
    if name is None:
        n = 0
        while (directory / f"ext4-{n}.img").exists():
            n += 1
        name = f"ext4-{n}.img"
    path = directory / name
    cmd = [MKFS, "-q", "-F", "-b", str(block_size)]
    feats = ",".join(features)
    if feats:
        cmd += ["-O", feats]
    cmd += [*extra_args, str(path), str(size)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"mkfs.ext4 failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return path


def fsck(image: Path | str) -> tuple[int, str]:
    """Run ``e2fsck -fn`` (force, read-only, answer no) and return (exit code, output)."""
    proc = subprocess.run(
        [E2FSCK, "-fn", str(image)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc.returncode, proc.stdout


def assert_fsck_clean(image: Path | str) -> None:
    """Fail unless ``e2fsck -fn IMAGE`` exits 0; the failure message is e2fsck's output."""
    code, out = fsck(image)
    if code != 0:
        pytest.fail(f"e2fsck -fn {image} exited {code}:\n{out}", pytrace=False)


def debugfs(image: Path | str, *requests: str, write: bool = False) -> bytes:
    """Run debugfs requests (``-R`` for one, ``-f`` script for several); return stdout.

    With ``write=True`` the image is opened read-write (``-w``). Raises on a non-zero exit;
    debugfs reports most request errors on stderr with exit 0, so callers check output.
    """
    cmd = [DEBUGFS]
    if write:
        cmd.append("-w")
    if len(requests) == 1:
        cmd += ["-R", requests[0], str(image)]
        proc = subprocess.run(cmd, capture_output=True)
    else:
        cmd += ["-f", "-", str(image)]
        script = "".join(r + "\n" for r in requests).encode()
        proc = subprocess.run(cmd, input=script, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"debugfs failed ({proc.returncode}): {proc.stderr.decode()}")
    return proc.stdout


@pytest.fixture
def ext4_image(tmp_path: Path) -> Callable[..., Path]:
    """Factory of fresh ext4 images in the test's tmp dir (see ``make_ext4_image``)."""

    def make(size: str | int = "64M", block_size: int = 4096, **kwargs) -> Path:
        return make_ext4_image(tmp_path, size, block_size, **kwargs)

    return make


@pytest.fixture
def fsck_clean() -> Callable[[Path | str], None]:
    """``assert_fsck_clean`` as a fixture, for tests that prefer injection to import."""
    return assert_fsck_clean


@pytest.fixture(params=[4096, 1024], ids=["4k", "1k"])
def image(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A fresh image with 4 KiB, then 1 KiB blocks; the module's ``IMAGE_SIZE`` or 64M."""
    return make_ext4_image(tmp_path, getattr(request.module, "IMAGE_SIZE", "64M"), request.param)


def last_orphan(image: Path | str) -> int:
    """s_last_orphan (the head of the on-disk orphan list) as it is in the image file."""
    import struct

    with open(image, "rb") as f:
        f.seek(1024 + 0xE8)
        return struct.unpack("<I", f.read(4))[0]


# ---------------------------------------------------------------------------------------
# Driving a booted kernel (chanos.personality.boot) through system-call messages
# ---------------------------------------------------------------------------------------


class Errno:
    """``with Errno(errno.ENOENT): ...`` / ``await Errno.of(code, coro)``: the block must
    raise OSError with exactly that errno."""

    def __init__(self, code: int) -> None:
        self.code = code

    def __enter__(self) -> Errno:
        return self

    def __exit__(self, et, ev, tb) -> bool:
        import errno as _errno

        want = _errno.errorcode.get(self.code, self.code)
        if et is None:
            pytest.fail(f"expected OSError {want}, nothing raised", pytrace=False)
        if not issubclass(et, OSError):
            return False
        got = _errno.errorcode.get(ev.errno, ev.errno)
        assert ev.errno == self.code, f"expected {want}, got {got}: {ev}"
        return True


async def errno_of(coro) -> int:
    """The errno of the OSError ``coro`` raises; fails the test if it raises none."""
    try:
        await coro
    except OSError as e:
        return e.errno
    raise AssertionError("no error")


async def k_resolve(kernel, path: str | bytes) -> int:
    """Inode number of an absolute path, walking Lookup from the root."""
    from chanos.personality.syscalls import ROOT_INO, Lookup

    if isinstance(path, str):
        path = path.encode()
    ino = ROOT_INO
    for part in path.split(b"/"):
        if part:
            ino = (await kernel.syscall(Lookup(ino, part))).inode
    return ino


async def k_write_file(
    kernel, parent: int, name: bytes, data: bytes, mode: int = 0o644, chunk: int = 1 << 20
) -> int:
    """Create (or truncate) ``parent/name``, write ``data``, release -> inode number."""
    import os as _os

    from chanos.personality.syscalls import Create, Release, Write

    handle, entry = await kernel.syscall(
        Create(parent, name, mode, _os.O_WRONLY | _os.O_CREAT | _os.O_TRUNC)
    )
    view = memoryview(data)
    for off in range(0, len(data), chunk):
        n = await kernel.syscall(Write(handle, off, bytes(view[off : off + chunk])))
        assert n == min(chunk, len(data) - off)
    await kernel.syscall(Release(handle))
    return entry.inode


async def k_read_file(kernel, ino: int, chunk: int = 1 << 20) -> bytes:
    """The whole content of inode ``ino`` (opened read-only, read to the first short read)."""
    import os as _os

    from chanos.personality.syscalls import Open, Read, Release

    handle = await kernel.syscall(Open(ino, _os.O_RDONLY))
    parts = []
    off = 0
    try:
        while True:
            data = await kernel.syscall(Read(handle, off, chunk))
            parts.append(bytes(data))
            off += len(data)
            if len(data) < chunk:
                break
    finally:
        await kernel.syscall(Release(handle))
    return b"".join(parts)


async def k_listdir(kernel, ino: int, *, with_dots: bool = False) -> dict[bytes, int]:
    """Entries of directory ``ino`` -> {name: inode}; asserts no name comes twice."""
    from chanos.personality.syscalls import OpenDir, ReadDir, ReleaseDir

    handle = await kernel.syscall(OpenDir(ino))
    out: dict[bytes, int] = {}
    off = 0
    try:
        while True:
            batch = await kernel.syscall(ReadDir(handle, off))
            if not batch:
                break
            for d in batch:
                assert d.name not in out, f"readdir returned {d.name!r} twice"
                out[d.name] = d.inode
                off = d.next_offset
    finally:
        await kernel.syscall(ReleaseDir(handle))
    if not with_dots:
        out.pop(b".", None)
        out.pop(b"..", None)
    return out
