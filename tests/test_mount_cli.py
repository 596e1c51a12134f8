"""Mounting the way users do: daemon mode, mount(8)/mount.fuse3/fstab, signals, options.

Each test ends with the image checked by ``e2fsck -fn``; where data was written, a
remount checks it came back intact.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

from mountlib import (
    CHANOS,
    Mounted,
    chanos,
    fsck,
    is_mounted,
    mkfs,
    require_fuse,
    run,
    tree_digest,
)

pytestmark = pytest.mark.mount


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def image(tmp_path):
    require_fuse()
    return mkfs(tmp_path / "disk.img", "128M")


def wait_unmounted_and_unlocked(image: Path, mnt: Path) -> None:
    """The daemon has exited once it no longer holds the image lock."""
    p = chanos("fsck", "--wait", "120", str(image))  # waits for the lock, then checks
    assert p.returncode == 0, p.stdout + p.stderr
    assert not is_mounted(mnt)


def test_daemon_mode_returns_when_ready_and_umount_writes_back(image, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = chanos("mount", str(image), str(mnt))
    assert p.returncode == 0, p.stderr
    assert is_mounted(mnt)  # ready as soon as the command returns
    assert p.stdout == "" and p.stderr == ""
    payload = os.urandom(3 << 20)
    (mnt / "f").write_bytes(payload)  # no fsync: umount must write it back
    (mnt / "d").mkdir()
    os.symlink("../f", mnt / "d" / "l")
    # a second mount of the same image is refused while the first runs
    other = tmp_path / "mnt2"
    other.mkdir()
    p2 = chanos("mount", str(image), str(other))
    assert p2.returncode == 32 and "in use by another chanos" in p2.stderr
    assert str(mnt) in p2.stderr
    p3 = chanos("mount", str(image), str(mnt))
    assert p3.returncode == 32 and "already a mount point" in p3.stderr
    # chanos umount returns only when the daemon has written everything back
    p = chanos("umount", str(mnt))
    assert p.returncode == 0, p.stderr
    assert fsck(image)[0] == 0
    with Mounted(image, mnt) as m:
        assert (m.mnt / "f").read_bytes() == payload
        assert os.readlink(m.mnt / "d" / "l") == "../f"


def test_mount_waits_for_a_chanos_daemon_still_writing_back(image, tmp_path):
    """``umount`` returns before the daemon has written the image back and exited. A
    mount right after it waits for that daemon (a chanos process holding the image,
    mounted nowhere) instead of refusing; any other holder is refused at once."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # Stands in for the finishing daemon: named like one, holding the image's lock until
    # its stdin closes.
    finishing = tmp_path / "chanos-finishing"
    finishing.write_text(
        "import fcntl, sys\n"
        "f = open(sys.argv[1], 'rb+')\n"
        "fcntl.flock(f, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, str(finishing), str(image)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    mount = subprocess.Popen(
        [CHANOS, "mount", str(image), str(mnt)], stderr=subprocess.PIPE, text=True
    )
    said = mount.stderr.readline()
    assert "waiting for the chanos daemon" in said
    assert mount.poll() is None  # still waiting while the holder lives
    holder.stdin.close()  # the daemon is done: it lets go of the image
    holder.wait()
    assert mount.wait(timeout=60) == 0, said
    mount.stderr.close()  # the daemon keeps its copy; nothing more is read from it
    assert is_mounted(mnt)
    (mnt / "f").write_bytes(b"after the wait")
    assert chanos("umount", str(mnt)).returncode == 0
    assert fsck(image)[0] == 0

    # The same lock held by a process that is not chanos: refused at once, as before.
    other = tmp_path / "holder"
    other.write_text(finishing.read_text())
    holder = subprocess.Popen(
        [sys.executable, str(other), str(image)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        p = chanos("mount", str(image), str(mnt))
        assert p.returncode == 32 and "in use by another chanos" in p.stderr
        assert "waiting" not in p.stderr
        assert holder.poll() is None  # refused while the holder still held the image
    finally:
        holder.kill()
        holder.wait()
    with Mounted(image, mnt) as m:
        assert (m.mnt / "f").read_bytes() == b"after the wait"


def test_plain_umount_then_chanos_fsck(image, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert chanos("mount", str(image), str(mnt)).returncode == 0
    (mnt / "a").write_text("x" * 100000)
    run(["umount", str(mnt)])
    # umount returns before the daemon has finished; chanos fsck waits for it
    wait_unmounted_and_unlocked(image, mnt)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_and_writes_back(image, tmp_path, sig):
    m = Mounted(image, tmp_path / "mnt")
    m.mount()
    data = os.urandom(5 << 20)
    (m.mnt / "dirty").write_bytes(data)  # still in the host page cache (writeback)
    for i in range(50):
        (m.mnt / f"small{i}").write_text(str(i))
    assert m.terminate(sig) == 0, m.log_tail()
    assert not is_mounted(m.mnt)
    m.check_clean()
    m.mount()
    assert (m.mnt / "dirty").read_bytes() == data
    assert all((m.mnt / f"small{i}").read_text() == str(i) for i in range(50))
    m.unmount()


def test_signal_while_busy_detaches_lazily(image, tmp_path):
    m = Mounted(image, tmp_path / "mnt")
    m.mount()
    f = open(m.mnt / "open-file", "w")  # keeps the mount busy  # noqa: SIM115
    try:
        f.write("kept open")
        m.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while is_mounted(m.mnt):  # detached from the tree, still served for open files
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert m.proc.poll() is None
        f.write(" and still writable")
    finally:
        f.close()
    code = m.proc.wait(timeout=60)
    m.proc = None
    assert code == 0, m.log_tail()
    m.check_clean()
    with Mounted(image, m.mnt) as m2:
        assert (m2.mnt / "open-file").read_text() == "kept open and still writable"


def test_second_signal_stops_serving_at_once(image, tmp_path):
    m = Mounted(image, tmp_path / "mnt")
    m.mount()
    (m.mnt / "kept").write_bytes(b"k" * 10000)
    f = open(m.mnt / "open-file", "w")  # keeps the mount busy: the first signal detaches  # noqa: SIM115
    try:
        f.write("written")
        f.flush()
        m.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while is_mounted(m.mnt):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1)  # idle: no worker is serving, one sleeps on the descriptor
        m.proc.send_signal(signal.SIGTERM)
        code = m.proc.wait(timeout=30)  # not waiting for the open file any more
        m.proc = None
        assert code == 0
    finally:
        with contextlib.suppress(OSError):
            f.close()  # the connection is gone
    m.check_clean()
    with Mounted(image, m.mnt) as m2:
        assert (m2.mnt / "kept").read_bytes() == b"k" * 10000
        assert (m2.mnt / "open-file").read_text() == "written"


def test_mount_fuse3_form(image, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    helper = shutil.which("mount.fuse3") or "/sbin/mount.fuse3"
    env = dict(os.environ, PATH=f"{Path(CHANOS).parent}:{os.environ.get('PATH', '')}")
    p = subprocess.run([helper, f"chanos#{image}", str(mnt), "-o", "rw,nosuid,nodev,noatime"],
                       capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert is_mounted(mnt)
    (mnt / "via-helper").write_text("ok")
    assert chanos("umount", str(mnt)).returncode == 0
    assert fsck(image)[0] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mount(8) with a helper needs root")
def test_mount_t_fuse_chanos_and_fstab(image, tmp_path):
    p = chanos("install-helper", "--dir", "/usr/sbin")
    assert p.returncode == 0, p.stderr
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run(["mount", "-t", "fuse.chanos", str(image), str(mnt), "-o", "noatime"])
    assert is_mounted(mnt)
    (mnt / "x").write_text("mount -t")
    assert chanos("umount", str(mnt)).returncode == 0
    # an fstab line (util-linux mount reads an alternative fstab with -T)
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{image} {mnt} fuse.chanos defaults,noatime,nofail 0 0\n")
    run(["mount", "-T", str(fstab), str(mnt)])
    assert (mnt / "x").read_text() == "mount -t"
    assert chanos("umount", str(mnt)).returncode == 0
    assert fsck(image)[0] == 0


def test_read_only_mount_changes_nothing(image, tmp_path):
    with Mounted(image, tmp_path / "mnt") as m:
        (m.mnt / "f").write_text("before")
    digest = sha(image)
    m = Mounted(image, tmp_path / "mnt", options="ro")
    m.mount()
    assert (m.mnt / "f").read_text() == "before"
    for attempt in (
        lambda: (m.mnt / "g").write_text("x"),
        lambda: (m.mnt / "f").write_text("x"),
        lambda: os.mkdir(m.mnt / "d"),
        lambda: os.chmod(m.mnt / "f", 0o600),
        lambda: os.unlink(m.mnt / "f"),
        lambda: os.setxattr(m.mnt / "f", "user.a", b"1"),
    ):
        with pytest.raises(OSError) as ei:
            attempt()
        assert ei.value.errno == errno.EROFS
    m.unmount()
    assert sha(image) == digest  # not one byte written


def test_uid_gid_umask_override_what_stat_shows(image, tmp_path):
    with Mounted(image, tmp_path / "mnt") as m:
        (m.mnt / "f").write_text("x")
        os.chmod(m.mnt / "f", 0o666)
        os.chown(m.mnt / "f", 0, 0)
    with Mounted(image, tmp_path / "mnt", options="uid=4321,gid=8765,umask=027") as m:
        st = os.stat(m.mnt / "f")
        assert (st.st_uid, st.st_gid) == (4321, 8765)
        assert st.st_mode & 0o777 == 0o640
    with Mounted(image, tmp_path / "mnt") as m:  # nothing stored changed
        st = os.stat(m.mnt / "f")
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o666)


def test_atime_mount_options_decide_whether_reads_move_atime(image, tmp_path):
    old = 1_000_000_000  # a time before the file's last change
    with Mounted(image, tmp_path / "mnt") as m:
        (m.mnt / "d").mkdir()
        (m.mnt / "d" / "f").write_bytes(b"data")
    # Each mount starts with an empty page cache, so the read below reaches chanos.
    for options, moves, dir_moves in (
        ("noatime", False, False),
        ("nodiratime", True, False),
        ("", True, True),  # relatime: older than the last change, so it moves
    ):
        with Mounted(image, tmp_path / "mnt", options=options) as m:
            d, f = m.mnt / "d", m.mnt / "d" / "f"
            for p in (d, f):
                os.utime(p, (old, old + 1))
            assert f.read_bytes() == b"data"
            os.listdir(d)
            assert (os.stat(f).st_atime > old + 1) is moves, options
            assert (os.stat(d).st_atime > old + 1) is dir_moves, options
        with Mounted(image, tmp_path / "mnt", options="noatime") as m:  # as it was stored
            assert (os.stat(m.mnt / "d" / "f").st_atime > old + 1) is moves, options


def test_a_mount_libfuse_refuses_leaves_the_image_clean(image, tmp_path, monkeypatch, capsys):
    import pyfuse3
    from chanos.compat import cli

    def refuse(*args, **kwargs):
        raise RuntimeError("refused")

    monkeypatch.setattr(pyfuse3, "init", refuse)
    (tmp_path / "mnt").mkdir()
    assert cli.main(["mount", "-f", str(image), str(tmp_path / "mnt")]) == 32
    assert "libfuse refused" in capsys.readouterr().err
    code, out = fsck(image)
    assert code == 0, out
    state = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True).stdout
    assert re.search(r"Filesystem state:\s+clean\n", state), state  # not left marked in use


def _cpu_latency_target() -> int:
    """The CPU wake-up latency the kernel's PM QoS now enforces (µs)."""
    with open("/dev/cpu_dma_latency", "rb") as f:
        return struct.unpack("=i", f.read(4))[0]


def _absent_xattr_requests(path: Path, n: int) -> None:
    for _ in range(n):  # the host kernel caches no xattr answer: n GETXATTRs
        with pytest.raises(OSError) as ei:
            os.getxattr(path, "user.absent")
        assert ei.value.errno == errno.ENODATA


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/cpu_dma_latency"),
    reason="the PM QoS device is root's",
)
def test_requests_back_to_back_hold_a_cpu_latency_request_until_quiet(image, tmp_path):
    before = _cpu_latency_target()
    if before == 0:
        pytest.skip("another process holds a 0 µs request already")
    with Mounted(image, tmp_path / "mnt") as m:
        f = m.mnt / "f"
        f.write_bytes(b"")
        time.sleep(0.2)
        assert _cpu_latency_target() == before  # quiet: nothing held
        _absent_xattr_requests(f, 300)
        assert _cpu_latency_target() == 0  # held through the burst and just after
        time.sleep(0.2)
        assert _cpu_latency_target() == before  # withdrawn once requests stopped
    with Mounted(image, tmp_path / "mnt", options="nocpu_latency") as m:
        _absent_xattr_requests(m.mnt / "f", 300)
        assert _cpu_latency_target() == before


def test_unsupported_features_refuse_the_mount(tmp_path):
    require_fuse()
    img = tmp_path / "inline.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^metadata_csum,inline_data", str(img), "64M"],
                   check=True, capture_output=True)  # fmt: skip
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = chanos("mount", str(img), str(mnt))
    assert p.returncode == 32
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "inline_data" in lines[0], p.stderr
    assert not is_mounted(mnt)


def test_options_reach_the_kernel_and_trace_is_written(image, tmp_path):
    trace = tmp_path / "trace.json"
    log = tmp_path / "daemon.log"
    with Mounted(image, tmp_path / "mnt", options=f"max_vnodes=64,trace={trace},log={log}") as m:
        for i in range(300):  # more files than live vnodes allowed
            (m.mnt / f"f{i}").write_text(str(i))
        assert sorted(os.listdir(m.mnt)) == sorted(["lost+found", *(f"f{i}" for i in range(300))])
        assert all((m.mnt / f"f{i}").read_text() == str(i) for i in range(300))
    assert trace.exists() and trace.stat().st_size > 0
    assert b"traceEvents" in trace.read_bytes()[:200]


def test_allow_other_lets_another_user_in(image, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to switch users")
    # the other user must be able to reach the mount point (pytest's tmp dirs are 0700)
    mnt = Path(tempfile.mkdtemp(prefix="chanos-allow-other-"))
    mnt.chmod(0o755)
    with Mounted(image, mnt, options="allow_other") as m:
        (m.mnt / "pub").write_text("for everyone")
        os.chmod(m.mnt / "pub", 0o644)
        (m.mnt / "priv").write_text("secret")
        os.chmod(m.mnt / "priv", 0o600)
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat"]
        assert run([*as_nobody, str(m.mnt / "pub")]) == "for everyone"
        p = subprocess.run([*as_nobody, str(m.mnt / "priv")], capture_output=True, text=True)
        assert p.returncode != 0 and "Permission denied" in p.stderr  # default_permissions
    mnt.rmdir()


def test_posix_acls_are_checked_and_inherited(image, tmp_path):
    """setfacl/getfacl on the mount, then another user's access judged by the ACLs as
    ext4 judges it: a named-user entry lets in a user the mode bits keep out, and the
    mask limits the owning group even where the mode's group bits (the mask) allow more.
    A default ACL is inherited by new files and directories. With noacl only the mode
    bits count. The ACLs survive a remount and e2fsck."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch users")
    if not shutil.which("setfacl"):
        pytest.skip("setfacl not installed (Debian package acl)")
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    in_group = ["setpriv", "--reuid=4243", "--regid=4242", "--clear-groups"]  # no entry of its own

    def can_read(who: list[str], path: Path) -> bool:
        p = subprocess.run([*who, "cat", str(path)], capture_output=True, text=True)
        assert p.returncode == 0 or "Permission denied" in p.stderr, p.stderr
        return p.returncode == 0

    mnt = Path(tempfile.mkdtemp(prefix="chanos-acl-"))
    mnt.chmod(0o755)
    try:
        with Mounted(image, mnt, options="allow_other") as m:
            named = m.mnt / "named"
            named.write_text("for nobody")
            os.chmod(named, 0o600)
            assert not can_read(nobody, named)
            run(["setfacl", "-m", "u:nobody:r", str(named)])
            assert can_read(nobody, named)
            assert "user:nobody:r--" in run(["getfacl", "-c", str(named)])

            masked = m.mnt / "masked"
            masked.write_text("not for the group")
            os.chown(masked, 0, 4242)
            # group entry ---, mask r--: the mode's group bits read r--, yet the owning
            # group may not read
            run(["setfacl", "-m", "g::-,u:nobody:r,o::-", str(masked)])
            assert stat.S_IMODE(os.stat(masked).st_mode) == 0o640
            assert not can_read(in_group, masked)

            # chmod rewrites the mask; an ACL of mode bits only is not kept
            chmodded = m.mnt / "chmodded"
            chmodded.write_text("x")
            run(["setfacl", "-m", "u:nobody:rw", str(chmodded)])
            os.chmod(chmodded, 0o640)
            assert "mask::r--" in run(["getfacl", "-c", str(chmodded)])
            assert can_read(nobody, chmodded)
            run(["setfacl", "-b", str(chmodded)])
            assert "system.posix_acl_access" not in os.listxattr(chmodded)
            assert not can_read(nobody, chmodded)

            shared = m.mnt / "shared"
            shared.mkdir()
            run(["setfacl", "-d", "-m", "u:nobody:rx", str(shared)])
            (shared / "new").write_text("inherited")
            (shared / "sub").mkdir()
            acl_text = run(["getfacl", "-c", str(shared / "new")])
            assert "user:nobody:r-x" in acl_text and "mask::r--" in acl_text
            assert can_read(nobody, shared / "new")
            assert "default:user:nobody:r-x" in run(["getfacl", "-c", str(shared / "sub")])
        assert fsck(image)[0] == 0

        with Mounted(image, mnt, options="allow_other") as m:
            assert can_read(nobody, m.mnt / "named")
            assert "user:nobody:r-x" in run(["getfacl", "-c", str(m.mnt / "shared" / "new")])
        with Mounted(image, mnt, options="allow_other,noacl") as m:
            assert not can_read(nobody, m.mnt / "named")  # mode 0600 only
            (m.mnt / "shared" / "plain").write_text("x")
            assert "nobody" not in run(["getfacl", "-c", str(m.mnt / "shared" / "plain")])
        assert fsck(image)[0] == 0
    finally:
        mnt.rmdir()


def test_read_ahead_window_is_set_for_the_mount(image, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("only root may set a mount's read-ahead")
    from chanos.compat.readahead import mount_device

    def window(m: Mounted, expected: int) -> int:
        path = Path(f"/sys/class/bdi/{mount_device(str(m.mnt))}/read_ahead_kb")
        # The daemon sets it once it has answered INIT, which the mount point showing up
        # in the mount table does not wait for.
        deadline = time.monotonic() + 10
        while (kib := int(path.read_text())) != expected and time.monotonic() < deadline:
            time.sleep(0.01)
        return kib

    with Mounted(image, tmp_path / "mnt") as m:
        assert window(m, 1024) == 1024
    with Mounted(image, tmp_path / "mnt", options="read_ahead=256K") as m:
        assert window(m, 256) == 256
        data = os.urandom(3 << 20)
        (m.mnt / "f").write_bytes(data)
        m.remount()
        assert (m.mnt / "f").read_bytes() == data


def test_preferred_io_size_is_one_request(image, tmp_path):
    data = os.urandom(3 << 20)
    with Mounted(image, tmp_path / "mnt") as m:
        (m.mnt / "f").write_bytes(data)
        assert os.stat(m.mnt / "f").st_blksize == 1 << 20  # what cp and cat size buffers by
    with Mounted(image, tmp_path / "mnt", options="io_size=0") as m:
        assert os.stat(m.mnt / "f").st_blksize == 4096  # the file system's block size
        assert (m.mnt / "f").read_bytes() == data


def test_digest_survives_remount_with_writeback_cache(image, tmp_path):
    with Mounted(image, tmp_path / "mnt", options="writeback,attr_timeout=0") as m:
        shutil.copytree(Path(os.__file__).parent / "json", m.mnt / "json")
        with open(m.mnt / "app", "a") as f:
            f.write("1")
        with open(m.mnt / "app", "a") as f:
            f.write("2")
        before = tree_digest(m.mnt)
        m.remount()
        assert tree_digest(m.mnt) == before
        assert (m.mnt / "app").read_text() == "12"
