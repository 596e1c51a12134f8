"""What the front end's answer to INIT asks of the host kernel, on a real mount.

Symlinks: their targets are cached (FUSE_CACHE_SYMLINKS), so resolving one again costs
no READLINK; one replaced by another name's symlink resolves to the new target.

The umask (FUSE_DONT_MASK): chanos applies it, so a default ACL takes its place as on
ext4, where the host kernel's own masking would not let it.

Set-ID bits and file capabilities, whoever takes them away. By default the host kernel
is granted FUSE_HANDLE_KILLPRIV_V2 (``chanos.compat.init_reply``) and leaves taking them
away to chanos; under ``nokillpriv`` it does that itself. Either way the result must be
ext4's: a write(2) or truncate by a user without CAP_FSETID takes
the set-user-ID bit, and the set-group-ID bit when group execute is set (without it the
bit marks mandatory locking and stays); root keeps both; a chown takes them whoever
makes it; any write takes ``security.capability``. An open with O_TRUNC by such a user
takes them too (checked with the flag only: without it the host kernel leaves the mode
alone, as it answers the truncate from the OPEN). And with the flag a buffered write(2)
is one request: the host kernel stops asking for ``security.capability`` before each.
Each run ends with ``e2fsck -fn`` and a remount that finds the modes as left.
"""

from __future__ import annotations

import errno
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
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
assert os.pwrite(fd, b"w" * 10, 0) == 10
os.close(fd)
"""
TRUNCATE = "import os, sys; os.truncate(sys.argv[1], 3)"
OPEN_TRUNC = "import os, sys; os.close(os.open(sys.argv[1], os.O_WRONLY | os.O_TRUNC))"


def run(code: str, path: Path, who: list[str] | None = None) -> None:
    subprocess.run([*(who or []), sys.executable, "-c", code, str(path)], check=True)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("options", ["", "nokillpriv"])
def test_writes_truncates_and_chown_take_what_ext4_takes(tmp_path, options):
    require_fuse()
    if os.geteuid() != 0:
        pytest.skip("needs root to switch users and set file capabilities")
    killpriv = options != "nokillpriv"
    image = mkfs(tmp_path / "disk.img", "64M")
    mnt = Path(tempfile.mkdtemp(prefix="chanos-killpriv-"))
    mnt.chmod(0o755)  # the other user must reach the mount point
    cases = {
        # name: (mode, what is done to it, as whom, mode afterwards)
        "written": (0o6777, WRITE, NOBODY, 0o777),
        "lockmark": (0o2666, WRITE, NOBODY, 0o2666),
        "by-root": (0o6777, WRITE, None, 0o6777),
        "truncated": (0o6777, TRUNCATE, NOBODY, 0o777),
        "truncated-by-root": (0o6777, TRUNCATE, None, 0o6777),
        "capable": (0o644, WRITE, None, 0o644),
    }
    if killpriv:
        cases["opened-o-trunc"] = (0o6777, OPEN_TRUNC, NOBODY, 0o777)
        cases["opened-o-trunc-by-root"] = (0o6777, OPEN_TRUNC, None, 0o6777)
    try:
        with Mounted(image, mnt, options=",".join(o for o in ("allow_other", options) if o)) as m:
            for name, (mode, _, _, _) in cases.items():
                p = m.mnt / name
                p.write_bytes(b"." * 100)
                os.chmod(p, mode)
            chowned = m.mnt / "chowned"
            chowned.write_bytes(b"x")
            os.chmod(chowned, 0o6755)
            capable = m.mnt / "capable"
            os.setxattr(capable, "security.capability", CAPABILITY)
            os.setxattr(capable, "user.kept", b"yes")
            assert os.getxattr(capable, "security.capability") == CAPABILITY

            for name, (_, code, who, _) in cases.items():
                run(code, m.mnt / name, who)
            os.chown(chowned, 65534, 65534)  # root: the bits go all the same

            want = {name: after for name, (_, _, _, after) in cases.items()}
            want["chowned"] = 0o755
            for name, mode in want.items():
                assert mode_of(m.mnt / name) == mode, name
            with pytest.raises(OSError) as e:
                os.getxattr(capable, "security.capability")
            assert e.value.errno == errno.ENODATA
            assert os.getxattr(capable, "user.kept") == b"yes"
            assert (m.mnt / "written").read_bytes() == b"w" * 10 + b"." * 90
            assert (m.mnt / "truncated").read_bytes() == b"..."
            assert os.stat(chowned).st_uid == 65534

            m.remount()  # unmounts, checks with e2fsck -fn, mounts again
            for name, mode in want.items():
                assert mode_of(m.mnt / name) == mode, name
            assert os.listxattr(capable) == ["user.kept"]
    finally:
        mnt.rmdir()


@pytest.mark.parametrize("options", ["", "nokillpriv"])
def test_buffered_writes_ask_for_capabilities_once_with_the_flag(tmp_path, options):
    """20 write(2)s through one descriptor: one GETXATTR of security.capability in all
    when the host kernel leaves dropping it to chanos, one before each write otherwise."""
    from chanos.compat.fuse_ops import _linux_release

    if options == "" and _linux_release() < (5, 11):
        pytest.skip("FUSE_HANDLE_KILLPRIV_V2 came with Linux 5.11")
    image = mkfs(tmp_path / "disk.img", "64M")
    log = tmp_path / "daemon.log"
    opts = ",".join(o for o in ("log_level=debug", options) if o)
    with Mounted(image, tmp_path / "mnt", options=opts, log=log) as m:
        with open(m.mnt / "f", "wb", buffering=0) as f:
            before = log.read_text(errors="replace").count("getxattr(")
            for _ in range(20):
                f.write(b"a" * 100)
        asked = log.read_text(errors="replace").count("getxattr(") - before
        assert (m.mnt / "f").read_bytes() == b"a" * 2000
    assert asked == (20 if options else 1)


def test_symlink_targets_are_read_once(tmp_path):
    image = mkfs(tmp_path / "disk.img", "64M")
    log = tmp_path / "daemon.log"
    with Mounted(image, tmp_path / "mnt", options="log_level=debug", log=log) as m:
        (m.mnt / "target").write_text("here")
        os.symlink("target", m.mnt / "link")
        before = log.read_text(errors="replace").count("readlink(")
        for _ in range(10):
            assert os.readlink(m.mnt / "link") == "target"
            assert (m.mnt / "link").read_text() == "here"
        asked = log.read_text(errors="replace").count("readlink(") - before
        # A new symlink under the old name is a new inode: its own target, not the cached one.
        (m.mnt / "other").write_text("there")
        os.symlink("other", m.mnt / "link.new")
        os.rename(m.mnt / "link.new", m.mnt / "link")
        assert os.readlink(m.mnt / "link") == "other"
        assert (m.mnt / "link").read_text() == "there"
    assert asked <= 1


UMASKED = """
import os, sys
os.umask(0o077)
for d in sys.argv[1:]:
    os.close(os.open(os.path.join(d, "f"), os.O_CREAT | os.O_WRONLY, 0o666))
    os.mkdir(os.path.join(d, "sub"), 0o777)
    os.mkfifo(os.path.join(d, "fifo"), 0o666)
"""


def test_a_default_acl_takes_the_umasks_place(tmp_path):
    image = mkfs(tmp_path / "disk.img", "64M")
    u = 0xFFFFFFFF
    everyone = struct.pack("<I", 2) + b"".join(  # rwx for owner, group and other
        struct.pack("<HHI", tag, 7, u) for tag in (1, 4, 0x20)
    )
    with Mounted(image, tmp_path / "mnt") as m:
        plain, shared = m.mnt / "plain", m.mnt / "shared"
        plain.mkdir()
        shared.mkdir()
        os.setxattr(shared, "system.posix_acl_default", everyone)
        subprocess.run([sys.executable, "-c", UMASKED, str(plain), str(shared)], check=True)
        want = {plain: (0o600, 0o700, 0o600), shared: (0o666, 0o777, 0o666)}
        for d, modes in want.items():
            for name, mode in zip(("f", "sub", "fifo"), modes, strict=True):
                assert mode_of(d / name) == mode, (d.name, name)
        m.remount()
        for d, modes in want.items():
            for name, mode in zip(("f", "sub", "fifo"), modes, strict=True):
                assert mode_of(m.mnt / d.name / name) == mode, (d.name, name)
