"""O_DIRECT on a real mount: direct-I/O handles, what their writes take away, and
readers with cached pages seeing them.

A file opened with O_DIRECT gets a direct-I/O handle (see ``chanos.compat.fuse_ops``), so
the host kernel no longer drops a written file's privileges itself; the file system does.
These tests hold it to what a write(2) does on ext4: the set-user-ID bit, and the
set-group-ID bit when group execute is set, go when the writer lacks CAP_FSETID (root
keeps them); set-group-ID without group execute (a mandatory-locking mark) stays; the
``security.capability`` attribute goes whoever writes. Ends with ``e2fsck -fn`` and a
remount that finds the data and modes as left.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

from mountlib import Mounted, mkfs, require_fuse

pytestmark = pytest.mark.mount

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

# A valid file-capability value (VFS_CAP_REVISION_2, effective): CAP_NET_RAW permitted.
CAPABILITY = struct.pack("<5I", 0x02000001, 1 << 13, 0, 0, 0)

WRITE = """
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 4096)
buf[:] = sys.argv[2].encode() * 4096
assert os.pwrite(fd, buf, 4096) == 4096
os.close(fd)
"""


def direct_write(path: Path, byte: str, who: list[str] | None = None) -> None:
    """One aligned 4 KiB O_DIRECT write of ``byte`` at offset 4096, run as ``who``."""
    subprocess.run([*(who or []), sys.executable, "-c", WRITE, str(path), byte], check=True)


def direct_read(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, 8192)
        n = os.preadv(fd, [buf], 0)
        return bytes(buf[:n])
    finally:
        os.close(fd)


def test_direct_writes_reach_readers_with_cached_pages(tmp_path):
    """A direct-I/O write is seen at once through a descriptor whose pages the host
    kernel caches (keep_cache), and through a new one."""
    require_fuse()
    image = mkfs(tmp_path / "disk.img", "64M")
    with Mounted(image, tmp_path / "mnt") as m:
        p = m.mnt / "shared"
        p.write_bytes(b"." * 8192)
        with open(p, "rb", buffering=0) as reader:
            assert reader.read() == b"." * 8192  # now in the page cache
            direct_write(p, "d")
            assert os.pread(reader.fileno(), 8192, 0) == b"." * 4096 + b"d" * 4096
        assert p.read_bytes() == b"." * 4096 + b"d" * 4096


def test_direct_writes_drop_privileges_as_ext4_does(tmp_path):
    require_fuse()
    if os.geteuid() != 0:
        pytest.skip("needs root to switch users and set file capabilities")
    image = mkfs(tmp_path / "disk.img", "64M")
    mnt = Path(tempfile.mkdtemp(prefix="chanos-direct-"))
    mnt.chmod(0o755)  # the other user must reach the mount point
    modes = {
        "setid": 0o6777,  # written by nobody: both bits go
        "lockmark": 0o2666,  # written by nobody: set-group-ID without group execute stays
        "root": 0o6777,  # written by root: both stay
        "plain": 0o666,
    }
    want = {"setid": 0o777, "lockmark": 0o2666, "root": 0o6777, "plain": 0o666}
    try:
        with Mounted(image, mnt, options="allow_other") as m:
            for name, mode in modes.items():
                p = m.mnt / name
                p.write_bytes(b"." * 8192)
                os.chmod(p, mode)
            os.setxattr(m.mnt / "plain", "security.capability", CAPABILITY)
            assert os.getxattr(m.mnt / "plain", "security.capability") == CAPABILITY
            os.setxattr(m.mnt / "plain", "user.kept", b"yes")

            direct_write(m.mnt / "setid", "n", NOBODY)
            direct_write(m.mnt / "lockmark", "n", NOBODY)
            direct_write(m.mnt / "root", "r")
            direct_write(m.mnt / "plain", "r")

            for name, mode in want.items():
                assert stat.S_IMODE(os.stat(m.mnt / name).st_mode) == mode, name
            with pytest.raises(OSError) as e:
                os.getxattr(m.mnt / "plain", "security.capability")
            assert e.value.errno == errno.ENODATA
            assert os.getxattr(m.mnt / "plain", "user.kept") == b"yes"
            assert direct_read(m.mnt / "setid") == b"." * 4096 + b"n" * 4096
            assert direct_read(m.mnt / "root") == b"." * 4096 + b"r" * 4096

            m.remount()  # unmounts, checks with e2fsck -fn, mounts again
            for name, mode in want.items():
                assert stat.S_IMODE(os.stat(m.mnt / name).st_mode) == mode, name
            assert (m.mnt / "lockmark").read_bytes() == b"." * 4096 + b"n" * 4096
            assert (m.mnt / "plain").read_bytes() == b"." * 4096 + b"r" * 4096
            assert os.listxattr(m.mnt / "plain") == ["user.kept"]
    finally:
        mnt.rmdir()
