"""Mount option parsing and size parsing of the chanos command (no mount needed)."""

from __future__ import annotations

import logging

import pytest
from chanos.compat.cli import Fail, parse_size
from chanos.compat.options import OWN_VFS_FLAGS, MountConfig, OptionError, parse_options


def test_defaults():
    c = parse_options([])
    assert c == MountConfig()
    opts = c.fuse_options("/img")
    assert "default_permissions" in opts
    assert "rw" in opts and "ro" not in opts
    assert "allow_other" not in opts
    assert {"fsname=/img", "subtype=chanos"} <= opts


def test_chanos_options():
    c = parse_options(["ro,allow_other,uid=1000,gid=100", "umask=027,max_vnodes=5000"])
    assert c.read_only and c.allow_other
    assert (c.uid, c.gid, c.umask, c.max_vnodes) == (1000, 100, 0o027, 5000)
    opts = c.fuse_options("/img")
    assert "ro" in opts and "rw" not in opts and "allow_other" in opts
    c = parse_options(["log_level=debug,log=/tmp/l,trace=/tmp/t.json,nowriteback"])
    assert c.log_level == logging.DEBUG and c.log_file == "/tmp/l"
    assert c.trace_file == "/tmp/t.json" and not c.writeback_cache
    assert parse_options(["max_workers=4"]).max_workers == 4
    assert not parse_options([]).writeback_cache and parse_options(["writeback"]).writeback_cache
    assert parse_options([]).read_ahead == 1 << 20
    assert parse_options(["read_ahead=4M"]).read_ahead == 4 << 20
    assert parse_options(["read_ahead=0"]).read_ahead == 0
    assert parse_options([]).io_size == 1 << 20
    assert parse_options(["io_size=256K"]).io_size == 256 << 10
    assert parse_options(["io_size=0"]).io_size == 0
    assert parse_options([]).busy_poll == 50e-6
    assert parse_options(["busy_poll=200"]).busy_poll == 200e-6
    assert parse_options(["busy_poll=0"]).busy_poll == 0
    assert parse_options([]).cpu_latency == 0
    assert parse_options(["cpu_latency=20"]).cpu_latency == 20
    assert parse_options(["nocpu_latency"]).cpu_latency is None
    c = parse_options(["entry_timeout=0.5,attr_timeout=0,negative_timeout=2,nokeep_cache"])
    assert (c.entry_timeout, c.attr_timeout, c.negative_timeout) == (0.5, 0.0, 2.0)
    assert not c.keep_cache
    assert parse_options([]).killpriv
    assert not parse_options(["nokillpriv"]).killpriv
    assert parse_options(["nokillpriv,killpriv"]).killpriv
    assert "nokillpriv" not in parse_options(["nokillpriv"]).fuse_options("/i")


def test_default_permissions_can_be_turned_off():
    c = parse_options(["nodefault_permissions"])
    assert "default_permissions" not in c.fuse_options("/i")


def test_vfs_flags_pass_through_and_fstab_words_are_dropped():
    c = parse_options(["rw,nosuid,nodev,noatime,defaults,auto,nofail,_netdev,x-systemd.automount"])
    opts = c.fuse_options("/i")
    assert {"nosuid", "nodev", "noatime", "rw"} <= opts
    assert not {"defaults", "auto", "nofail", "_netdev"} & opts
    assert not any(o.startswith("x-") for o in opts)


@pytest.mark.parametrize(
    ("spec", "policy", "diratime"),
    [
        ("", "relatime", True),
        ("noatime", "noatime", True),
        ("noatime,atime", "relatime", True),
        ("strictatime", "strictatime", True),
        ("noatime,strictatime", "strictatime", True),  # strictatime wins, as in the kernel
        ("strictatime,nostrictatime,noatime", "noatime", True),
        ("relatime,nodiratime", "relatime", False),
        ("norelatime", "relatime", True),  # the kernel's default stays relatime
        ("nodiratime,diratime", "relatime", True),
    ],
)
def test_atime_flags_set_the_file_systems_atime_policy(spec, policy, diratime):
    from chanos.compat.cli import mount_options_for

    c = parse_options([spec])
    opts = mount_options_for(c)
    assert (opts.atime, opts.diratime) == (policy, diratime)
    # mount(2) is told the same: of two opposite flags only the last one goes, and
    # libfuse gets none of the flags it would refuse.
    flags = c.fuse_options("/i")
    assert not {"noatime", "atime"} <= flags and not flags & OWN_VFS_FLAGS
    assert ("noatime" in flags) == (policy == "noatime")


def test_opposite_vfs_flags_leave_the_last_one():
    flags = parse_options(["nosuid,suid,sync,async,noexec"]).fuse_options("/i")
    assert {"suid", "async", "noexec"} <= flags and not {"nosuid", "sync"} & flags


def test_last_of_ro_rw_wins():
    assert parse_options(["ro,rw"]).read_only is False
    assert parse_options(["rw", "ro"]).read_only is True


@pytest.mark.parametrize(
    "bad",
    ["bogus", "uid=abc", "uid=-1", "umask=9", "max_vnodes=3", "log_level=loud",
     "attr_timeout=x", "uid=", "allow_other=1", "max_workers=0", "read_ahead=1G", "io_size=3000",
     "busy_poll=20000", "busy_poll=fast", "malloc_arenas=65", "cpu_latency=-1",
     "nocpu_latency=1"],
)  # fmt: skip
def test_bad_options_are_refused_with_a_message(bad):
    with pytest.raises(OptionError) as ei:
        parse_options([bad])
    assert str(ei.value)
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize(
    ("text", "value"),
    [("512M", 512 << 20), ("1G", 1 << 30), ("64MiB", 64 << 20), ("1048576", 1 << 20),
     ("4k", 4096), ("2T", 2 << 40)],
)  # fmt: skip
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "12X", "M", "1.5G", "-1G"])
def test_parse_size_rejects(text):
    with pytest.raises(Fail):
        parse_size(text)
