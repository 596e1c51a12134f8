"""The mount's read-ahead window: finding the mount's device and setting it in sysfs."""

from __future__ import annotations

from chanos.compat.readahead import mount_device, set_read_ahead


def write_mountinfo(path, *lines: str) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_mount_device_takes_the_last_mount_on_the_path(tmp_path):
    mnt = tmp_path / "my mnt"
    mnt.mkdir()
    esc = str(mnt).replace(" ", "\\040")
    info = write_mountinfo(
        tmp_path / "mountinfo",
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw",
        f"40 22 0:41 / {esc} rw - fuse.chanos img rw",
        f"41 40 0:45 / {esc} rw - fuse.chanos img2 rw",
        f"42 22 0:46 / {esc}x rw - fuse.chanos img3 rw",
    )
    assert mount_device(str(mnt), info) == "0:45"
    assert mount_device(str(tmp_path), info) is None


def test_set_read_ahead_writes_the_mounts_bdi(tmp_path, monkeypatch):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    info = write_mountinfo(tmp_path / "mountinfo", f"40 22 0:41 / {mnt} rw - fuse.chanos i rw")
    bdi = tmp_path / "bdi"
    (bdi / "0:41").mkdir(parents=True)
    monkeypatch.setattr("chanos.compat.readahead.mount_device", lambda m: mount_device(m, info))
    assert set_read_ahead(str(mnt), 1024, sysfs=str(bdi))
    assert (bdi / "0:41" / "read_ahead_kb").read_text() == "1024\n"
    # No such device directory (or no permission): the mount goes on with the default.
    assert not set_read_ahead(str(mnt), 1024, sysfs=str(tmp_path / "nothing"))
