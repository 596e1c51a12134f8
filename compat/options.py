"""Mount options of ``chanos mount``: parsing ``-o`` lists into one MountConfig.

Three kinds of options arrive in one comma-separated list (from the command line, from
mount(8)/mount.fuse3, or from an /etc/fstab line):

* chanos's own: ``uid=``, ``gid=``, ``umask=``, ``max_vnodes=``, ``max_workers=``,
  ``write_cache=``, ``read_ahead=``, ``io_size=``, ``busy_poll=``,
  ``cpu_latency=``/``nocpu_latency``, ``malloc_arenas=``,
  ``malloc_mmap_threshold=``,
  ``malloc_trim_threshold=`` (sizes take K/M/G suffixes), ``malloc_trim_interval=``,
  ``log_level=``,
  ``log=FILE``, ``trace=FILE``, ``writeback``/``nowriteback``, ``entry_timeout=``,
  ``attr_timeout=``, ``negative_timeout=``, ``keep_cache``/``nokeep_cache``,
  ``killpriv``/``nokillpriv``,
  ``default_permissions``/``nodefault_permissions``, ``acl``/``noacl``;
* FUSE mount options handed to libfuse: ``allow_other``, ``default_permissions`` and the
  generic VFS flags (``ro``, ``rw``, ``nosuid``, ``nodev``, ``noexec``, ``noatime``, ...);
  ``noatime``/``atime`` also set the file system's own atime policy (a FUSE file system
  keeps its atimes), and the atime flags libfuse does not take (``relatime``,
  ``strictatime``, ``nodiratime``, ``lazytime`` and their opposites) set only that;
* options that only mean something to mount(8)/fstab (``defaults``, ``auto``, ``noauto``,
  ``user``, ``nofail``, ``_netdev``, ``x-*``, ``comment=``): accepted and dropped.

Anything else is refused with a one-line error naming the option.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

# Generic mount flags libfuse passes to mount(2) (lib/mount.c's mount_flags table; libfuse
# 3.14 refuses the rest, hence OWN_VFS_FLAGS).
VFS_FLAGS = frozenset(
    [
        "rw",
        "ro",
        "suid",
        "nosuid",
        "dev",
        "nodev",
        "exec",
        "noexec",
        "async",
        "sync",
        "dirsync",
        "atime",
        "noatime",
    ]
)
_OPPOSITE = {"sync": "async", "async": "sync"}
# The other atime flags mount(8) and fstab lines use. A FUSE file system keeps its own
# atimes, so these are chanos's alone: they set its atime policy and do not go to
# libfuse. lazytime is accepted as a hint: times are written through, as without it.
OWN_VFS_FLAGS = frozenset(
    [
        "diratime",
        "nodiratime",
        "relatime",
        "norelatime",
        "strictatime",
        "nostrictatime",
        "lazytime",
        "nolazytime",
    ]
)
# The atime flags: which MountConfig bit each one sets or clears (relatime and
# norelatime set none: the host kernel applies relatime unless noatime or strictatime).
_ATIME_BITS = {
    "noatime": ("noatime", True),
    "atime": ("noatime", False),
    "strictatime": ("strictatime", True),
    "nostrictatime": ("strictatime", False),
    "nodiratime": ("nodiratime", True),
    "diratime": ("nodiratime", False),
}
# Meaningful to mount(8), mount.fuse3 or fstab only.
IGNORED = frozenset(
    ["defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "nofail", "_netdev"]
)
IGNORED_PREFIXES = ("x-", "comment=")

LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


FLAG_OPTIONS = frozenset(
    [
        "allow_other",
        "default_permissions",
        "nodefault_permissions",
        "no_default_permissions",
        "debug",
        "writeback",
        "writeback_cache",
        "nowriteback",
        "nowriteback_cache",
        "keep_cache",
        "nokeep_cache",
        "killpriv",
        "nokillpriv",
        "acl",
        "noacl",
        "nocpu_latency",
    ]
)


class OptionError(ValueError):
    """A bad ``-o`` option; the message is the one-line error to print."""


@dataclass
class MountConfig:
    """Everything ``-o`` can say, with the defaults chanos mounts with."""

    read_only: bool = False
    allow_other: bool = False
    default_permissions: bool = True
    # POSIX ACLs, as ext4's acl/noacl: enforced by the host kernel (with
    # default_permissions) and inherited from default ACLs by new inodes.
    acl: bool = True
    uid: int | None = None
    gid: int | None = None
    umask: int | None = None
    # Live vnode actors (~2.2 KiB each): 2048 covers a working set of thousands of files
    # and keeps them to ~4.5 MiB (the kernel's own default, 10,000, is for embedders).
    # Vnodes the host kernel has forgotten stay live until room is needed, so the bound is
    # usually full: 4096 took fs_compare's peak to 70.5 MiB, 2048 to 64.1, at the same
    # rates.
    max_vnodes: int | None = 2048
    log_level: int = logging.WARNING
    log_file: str | None = None
    trace_file: str | None = None
    writeback_cache: bool = False
    keep_cache: bool = True
    # Ask the host kernel for FUSE_HANDLE_KILLPRIV_V2 (see chanos.compat.init_reply): the
    # file system takes set-ID bits and capabilities away itself, and a buffered write(2)
    # is one request instead of two.
    killpriv: bool = True
    entry_timeout: float = 10.0
    attr_timeout: float = 10.0
    negative_timeout: float = 10.0
    # pyfuse3 worker tasks (requests in service at once). Each holds a receive buffer of
    # max_write + a page (~1 MiB), and a WRITE in service a copy of its payload (plus one
    # more when libfuse splices), so this bounds the front end's memory: under a
    # sequential write the host kernel keeps up to 12 background WRITEs coming, and 8
    # workers took the peak from 72 to 64 MiB at the same throughput (one file's writes
    # are applied one at a time by its vnode anyway).
    max_workers: int = 8
    # Image driver write cache (bytes queued before a write-out; None = the kernel's
    # default). Up to three times this is held while write-outs are in flight; 1 MiB
    # still writes every 1 MiB WRITE as one pwritev and cut a sequential write's peak by
    # 6-8 MiB.
    write_cache: int | None = 1 << 20
    # The host kernel's read-ahead window for the mount (see chanos.compat.readahead):
    # 1 MiB, its largest READ, so a sequential read costs one request per MiB; 0 leaves
    # the host kernel's default (128 KiB).
    read_ahead: int = 1 << 20
    # The preferred I/O size stat reports (see FrontEndConfig.io_size); 0: the block size.
    io_size: int = 1 << 20
    # How long (seconds) the front end polls /dev/fuse for the next request before it
    # sleeps (see chanos.compat.request_wait); 0 never polls.
    busy_poll: float = 50e-6
    # The CPU wake-up latency (µs) requested from the kernel's PM QoS while requests come
    # back to back (see chanos.compat.wake_latency); None never asks. Root only.
    cpu_latency: int | None = 0
    # glibc malloc (see chanos.compat.memory): arenas, and the fixed thresholds above which
    # blocks are mmapped / free heap top is given back. Fixed thresholds keep 1 MiB
    # request payloads out of the heap, where freed holes would keep the RSS up.
    malloc_arenas: int = 2
    malloc_mmap_threshold: int = 256 << 10
    malloc_trim_threshold: int = 1 << 20
    malloc_trim_interval: float = 5.0  # seconds between malloc_trim passes (0: never)
    vfs_flags: list[str] = field(default_factory=list)
    # The atime flags among them, as the host kernel combines them: independent bits,
    # strictatime over noatime, relatime whatever else is said (see ``atime_policy``).
    noatime: bool = False
    strictatime: bool = False
    nodiratime: bool = False

    @property
    def atime_policy(self) -> str:
        """The file system's atime policy (``MountOptions.atime``) for these flags."""
        if self.strictatime:
            return "strictatime"
        return "noatime" if self.noatime else "relatime"

    def fuse_options(self, fsname: str) -> set[str]:
        """The option set for ``pyfuse3.init``."""
        opts = {f"fsname={fsname}", "subtype=chanos", *self.vfs_flags}
        opts.discard("rw")
        opts.discard("ro")
        opts.add("ro" if self.read_only else "rw")
        if self.strictatime:
            opts.discard("noatime")  # as the kernel takes them: strictatime clears it
        if self.default_permissions:
            opts.add("default_permissions")
        if self.allow_other:
            opts.add("allow_other")
        return opts


def _int(name: str, value: str, base: int = 10) -> int:
    try:
        n = int(value, base)
    except ValueError:
        raise OptionError(f"option {name}= needs a number, not {value!r}") from None
    if n < 0:
        raise OptionError(f"option {name}= must not be negative")
    return n


def _int_between(name: str, value: str, lo: int, hi: int, unit: str = "") -> int:
    n = _int(name, value)
    if not lo <= n <= hi:
        raise OptionError(f"option {name}= must be between {lo} and {hi}{unit}")
    return n


def _size(name: str, value: str) -> int:
    """Bytes, with an optional K/M/G suffix (powers of 1024)."""
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(value[-1:].lower(), 1)
    return _int(name, value[:-1] if scale > 1 else value) * scale


def _seconds(name: str, value: str) -> float:
    try:
        s = float(value)
    except ValueError:
        raise OptionError(f"option {name}= needs seconds, not {value!r}") from None
    if s < 0:
        raise OptionError(f"option {name}= must not be negative")
    return s


def parse_options(specs: list[str], config: MountConfig | None = None) -> MountConfig:
    """Parse ``-o`` arguments (each a comma-separated list) into a MountConfig."""
    c = config or MountConfig()
    for spec in specs:
        for opt in spec.split(","):
            opt = opt.strip()
            if opt:
                _apply(c, opt)
    return c


def _apply(c: MountConfig, opt: str) -> None:
    name, eq, value = opt.partition("=")
    if eq and not value:
        raise OptionError(f"option {name}= needs a value")
    if eq and (
        name in FLAG_OPTIONS or name in VFS_FLAGS or name in OWN_VFS_FLAGS or name in IGNORED
    ):
        raise OptionError(f"option {name} takes no value")
    match name:
        case "ro":
            c.read_only = True
        case "rw":
            c.read_only = False
        case "allow_other":
            c.allow_other = True
        case "default_permissions":
            c.default_permissions = True
        case "nodefault_permissions" | "no_default_permissions":
            c.default_permissions = False
        case "acl":
            c.acl = True
        case "noacl":
            c.acl = False
        case "uid":
            c.uid = _int(name, value)
        case "gid":
            c.gid = _int(name, value)
        case "umask":
            c.umask = _int(name, value, 8) & 0o7777
        case "max_vnodes":
            n = _int(name, value)
            if n < 16:
                raise OptionError("option max_vnodes= must be at least 16")
            c.max_vnodes = n
        case "max_workers":
            c.max_workers = _int_between(name, value, 1, 1000)
        case "write_cache":
            c.write_cache = _size(name, value)
        case "io_size":
            n = _size(name, value)
            if n and (n & (n - 1) or not 512 <= n <= 64 << 20):
                raise OptionError("option io_size= must be 0 or a power of two, 512 to 64M")
            c.io_size = n
        case "busy_poll":
            c.busy_poll = _int_between(name, value, 0, 10_000, " (microseconds)") / 1e6
        case "cpu_latency":
            c.cpu_latency = _int_between(name, value, 0, 1_000_000, " (microseconds)")
        case "nocpu_latency":
            c.cpu_latency = None
        case "read_ahead":
            n = _size(name, value)
            if n > 64 << 20:
                raise OptionError("option read_ahead= must be at most 64M")
            c.read_ahead = n
        case "malloc_arenas":
            c.malloc_arenas = _int_between(name, value, 1, 64)
        case "malloc_mmap_threshold":
            n = _size(name, value)
            if not 4096 <= n <= 32 << 20:
                raise OptionError("option malloc_mmap_threshold= must be between 4K and 32M")
            c.malloc_mmap_threshold = n
        case "malloc_trim_threshold":
            c.malloc_trim_threshold = max(_size(name, value), 4096)
        case "malloc_trim_interval":
            c.malloc_trim_interval = _seconds(name, value)
        case "log_level" | "loglevel":
            try:
                c.log_level = LOG_LEVELS[value.lower()]
            except KeyError:
                raise OptionError(
                    f"option log_level= must be one of {', '.join(LOG_LEVELS)}"
                ) from None
        case "debug":
            c.log_level = logging.DEBUG
        case "log":
            c.log_file = value
        case "trace":
            c.trace_file = value
        case "writeback" | "writeback_cache":
            c.writeback_cache = True
        case "nowriteback" | "nowriteback_cache":
            c.writeback_cache = False
        case "keep_cache":
            c.keep_cache = True
        case "nokeep_cache":
            c.keep_cache = False
        case "killpriv":
            c.killpriv = True
        case "nokillpriv":
            c.killpriv = False
        case "entry_timeout":
            c.entry_timeout = _seconds(name, value)
        case "attr_timeout":
            c.attr_timeout = _seconds(name, value)
        case "negative_timeout":
            c.negative_timeout = _seconds(name, value)
        case _ if not eq and (name in VFS_FLAGS or name in OWN_VFS_FLAGS):
            if name in _ATIME_BITS:
                attr, bit = _ATIME_BITS[name]
                setattr(c, attr, bit)
            if name in VFS_FLAGS:
                # The last mention decides (libfuse gets a set, in no order): "atime"
                # takes "noatime" back, "suid" takes "nosuid", and so on.
                opposite = _OPPOSITE.get(name) or (name[2:] if name[:2] == "no" else "no" + name)
                c.vfs_flags = [f for f in c.vfs_flags if f not in (name, opposite)]
                c.vfs_flags.append(name)
        case _ if (not eq and name in IGNORED) or opt.startswith(IGNORED_PREFIXES):
            pass
        case _:
            raise OptionError(f"unknown mount option {opt!r}")
