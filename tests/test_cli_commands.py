"""The chanos command without a running mount: mkfs, fsck, and mount's refusals.

Mount refusals are checked before anything is mounted, so they need no FUSE; each must
be one clear line on stderr with mount(8)'s exit code (1 bad usage, 32 mount failure).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

from mountlib import CHANOS, chanos, fsck


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("chanos: ")
    return lines[0]


def features(image: Path) -> set[str]:
    out = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("Filesystem features:"))
    return set(line.split(":", 1)[1].split())


SUPPORTED = {
    *("has_journal", "ext_attr", "resize_inode", "dir_index", "filetype", "extent", "64bit"),
    *("flex_bg", "sparse_super", "large_file", "huge_file", "dir_nlink", "extra_isize"),
}


@pytest.mark.parametrize("bs", [4096, 1024])
def test_mkfs_makes_the_supported_feature_set(tmp_path, bs):
    img = tmp_path / "a.img"
    p = chanos("mkfs", str(img), "--size", "64M", "--block-size", str(bs))
    assert p.returncode == 0, p.stderr
    assert features(img) == SUPPORTED
    assert img.stat().st_size == 64 << 20
    out = subprocess.run(["dumpe2fs", "-h", str(img)], capture_output=True, text=True).stdout
    assert f"Block size:               {bs}" in out
    assert "Inode size:\t          256" in out
    assert fsck(img)[0] == 0


def test_mkfs_refuses_bad_sizes(tmp_path):
    p = chanos("mkfs", str(tmp_path / "a.img"), "--size", "lots")
    assert p.returncode == 1 and "bad size" in one_line_error(p)
    p = chanos("mkfs", str(tmp_path / "a.img"), "--size", "64k")
    assert p.returncode == 1 and "too small" in one_line_error(p)
    p = chanos("mkfs", str(tmp_path / "a.img"), "--size", "64M", "--block-size", "2048")
    assert p.returncode == 1


def test_mkfs_refuses_an_image_in_use(tmp_path):
    img = tmp_path / "a.img"
    assert chanos("mkfs", str(img), "--size", "64M").returncode == 0
    with open(img, "rb+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        p = chanos("mkfs", str(img), "--size", "64M")
    assert p.returncode == 32 and "in use" in one_line_error(p)


def test_fsck_says_clean_or_not(tmp_path):
    img = tmp_path / "a.img"
    assert chanos("mkfs", str(img), "--size", "64M").returncode == 0
    p = chanos("fsck", str(img))
    assert p.returncode == 0 and p.stdout.strip().endswith(": clean")
    # break it: a wrong link count on the root directory
    subprocess.run(["debugfs", "-w", "-R", "sif <2> links_count 7", str(img)],
                   check=True, capture_output=True)  # fmt: skip
    p = chanos("fsck", str(img))
    assert p.returncode == 4
    assert "NOT clean" in p.stdout
    assert "Inode 2 ref count is 7, should be 3" in p.stdout  # e2fsck's report is shown
    p = chanos("fsck", str(tmp_path / "missing.img"))
    assert p.returncode == 8 and "no such file" in one_line_error(p)


def test_fsck_waits_for_a_daemon_finishing_write_back(tmp_path):
    img = tmp_path / "a.img"
    assert chanos("mkfs", str(img), "--size", "64M").returncode == 0
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl,sys,time; f=open(sys.argv[1],'rb+'); fcntl.flock(f, fcntl.LOCK_EX);"
         "print('locked', flush=True); time.sleep(1.5)", str(img)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    p = chanos("fsck", str(img))
    holder.wait()
    assert p.returncode == 0
    assert "waiting" in p.stderr
    p = chanos("fsck", "--wait", "0.2", str(img))
    assert p.returncode == 0  # not locked any more


def test_mount_refusals(tmp_path):
    img = tmp_path / "a.img"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert chanos("mkfs", str(img), "--size", "64M").returncode == 0

    p = chanos("mount", str(tmp_path / "missing.img"), str(mnt))
    assert p.returncode == 32 and "no such file" in one_line_error(p)
    p = chanos("mount", str(img), str(tmp_path / "nodir"))
    assert p.returncode == 32 and "does not exist" in one_line_error(p)
    p = chanos("mount", str(img), str(img))
    assert p.returncode == 32 and "not a directory" in one_line_error(p)
    p = chanos("mount", str(img), "/proc")
    assert p.returncode == 32 and "already a mount point" in one_line_error(p)
    p = chanos("mount", str(img), str(mnt), "-o", "frobnicate")
    assert p.returncode == 1 and "unknown mount option 'frobnicate'" in one_line_error(p)
    p = chanos("mount", str(img))
    assert p.returncode == 1 and "mountpoint" in one_line_error(p)
    p = chanos("mount", str(img), str(mnt), "-t", "ext4")
    assert p.returncode == 1
    with open(img, "rb+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        p = chanos("mount", str(img), str(mnt))
    assert p.returncode == 32 and "in use by another chanos" in one_line_error(p)
    os.chmod(img, 0o444)
    if os.geteuid() != 0:  # root may write anyway
        p = chanos("mount", str(img), str(mnt))
        assert p.returncode == 32 and "-o ro" in one_line_error(p)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root")
def test_mount_without_dev_fuse_says_so(tmp_path):
    img = tmp_path / "a.img"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert chanos("mkfs", str(img), "--size", "64M").returncode == 0
    # a private mount namespace whose /dev has no fuse device
    p = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         f"mount -t tmpfs none /dev && exec {CHANOS} mount {img} {mnt}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 32
    assert "/dev/fuse does not exist" in one_line_error(p)


def test_umount_of_something_not_mounted(tmp_path):
    p = chanos("umount", str(tmp_path))
    assert p.returncode == 32 and "not mounted" in one_line_error(p)
    p = chanos("umount", "/proc")
    assert p.returncode == 32 and "not a chanos mount" in one_line_error(p)
