"""The ``chanos`` command: mkfs, mount (daemon or foreground), umount, fsck.

    chanos mkfs IMAGE --size SIZE [--block-size 4096|1024] [-N INODES] [-L LABEL]
    chanos mount IMAGE MOUNTPOINT [-o OPTS] [-f]
    chanos IMAGE MOUNTPOINT [-o OPTS]          (the form mount.fuse3 runs)
    chanos umount MOUNTPOINT                   (unmount and wait until the image is clean)
    chanos fsck IMAGE
    chanos install-helper [--dir /usr/sbin]    (so `mount -t fuse.chanos` and fstab work)

Exit codes follow mount(8) for mount/umount (0 ok, 1 bad usage or options, 32 mount
failure) and e2fsck for fsck (0 clean, 4 errors found, 8 could not check).

The image file is locked (flock) for as long as a daemon serves it, so a second mount of
the same image fails at once, and ``chanos fsck``/``chanos umount``/``chanos mount`` can
wait for a daemon that is still writing back after the host kernel's unmount returned.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import logging
import logging.handlers
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from chanos.compat.mounts import mounts
from chanos.compat.options import MountConfig, OptionError, parse_options
from chanos.compat.readahead import set_read_ahead

PROG = "chanos"

EX_OK = 0
EX_USAGE = 1
EX_FAIL = 32  # mount(8): mount failure
FSCK_ERRORS = 4
FSCK_OPERATIONAL = 8
# How long ``chanos mount`` waits for a daemon still writing the same image back.
MOUNT_WAIT = 300.0

# The feature set chanos reads and writes (see docs/architecture.md): mke2fs's ext4
# defaults minus metadata_csum (and everything newer, e.g. orphan_file or
# metadata_csum_seed, that some mke2fs.conf files add). Named explicitly with "none,..."
# so the image does not depend on the host's /etc/mke2fs.conf.
MKFS_FEATURES = (
    "has_journal,ext_attr,resize_inode,dir_index,filetype,extent,64bit,flex_bg,"
    "sparse_super,large_file,huge_file,dir_nlink,extra_isize"
)

log = logging.getLogger("chanos.cli")


class Fail(Exception):
    """A user-facing failure: one line on stderr, then exit with ``code``."""

    def __init__(self, message: str, code: int = EX_FAIL) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------- helpers


def parse_size(text: str) -> int:
    """'512M', '1G', '64MiB', '1048576' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT]?)(?:i?B)?\s*", text)
    if not m:
        raise Fail(f"bad size {text!r} (examples: 512M, 2G, 1048576)", EX_USAGE)
    n = int(m.group(1))
    unit = m.group(2).upper()
    return n << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[unit]


def chanos_mounts_of(image: str) -> list[str]:
    """Mount points where chanos serves ``image``."""
    return [m.point for m in mounts() if m.fstype == "fuse.chanos" and m.source == image]


def lock_image(image: str, read_only: bool, shared: bool = False, wait: float = 0.0) -> int:
    """Open and flock the image; raise Fail if another chanos holds it. Returns the fd.

    ``wait``: seconds to wait for a chanos daemon that holds the image without serving
    it on any mount point: one still writing back after ``umount`` returned (the host
    kernel does not wait for it), or one starting (then it mounts, and this fails).
    """
    try:
        fd = os.open(image, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
    except OSError as exc:
        raise Fail(f"cannot open {image}: {exc.strerror}") from None
    mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            fcntl.flock(fd, mode)
            return fd
        except BlockingIOError:
            where = chanos_mounts_of(image)
            if where or time.monotonic() >= deadline or not _held_by_chanos(fd):
                os.close(fd)
                on = f" (mounted on {where[0]})" if where else ""
                raise Fail(f"{image} is in use by another chanos{on}") from None
            if not told:
                told = True
                print(f"{PROG}: waiting for the chanos daemon to finish writing {image} back",
                      file=sys.stderr)  # fmt: skip
            time.sleep(0.05)


def _held_by_chanos(fd: int) -> bool:
    """Whether the flock on the file open as ``fd`` is held by a chanos process.

    /proc/locks names the process that took the lock. For a daemon that is the
    ``chanos mount`` that forked it, which has exited: then the lock is the daemon's if a
    chanos process has the file open (a waiting mount like this one has it open too,
    but never holds a lock there).
    """
    st = os.fstat(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        locks = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return False
    for line in locks:
        f = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF" (a waiter has "->" after "1:")
        if len(f) >= 6 and f[1] == "FLOCK" and f[5] == key and f[4].isdigit():
            if os.path.exists(f"/proc/{f[4]}"):
                return _is_chanos(f[4])
            return any(_is_chanos(pid) and _has_open(pid, st) for pid in _other_pids())
    return False


def _other_pids() -> list[str]:
    me = str(os.getpid())
    return [p for p in os.listdir("/proc") if p.isdigit() and p != me]


def _is_chanos(pid: str) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(os.path.basename(a).startswith(b"chanos") for a in argv[:3])


def _has_open(pid: str, st: os.stat_result) -> bool:
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            other = os.stat(f"/proc/{pid}/fd/{name}")
            if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                return True
    except OSError:
        pass  # gone, or not ours to look at
    return False


def wait_unlocked(image: str, timeout: float) -> bool:
    """Wait until no chanos daemon holds ``image``; False on timeout."""
    try:
        fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
    finally:
        os.close(fd)


def _fsname(image: str) -> str:
    # libfuse splits -o on unescaped commas.
    return image.replace("\\", "\\\\").replace(",", "\\,")


# ---------------------------------------------------------------------------- mkfs


def cmd_mkfs(a: argparse.Namespace) -> int:
    image = os.path.abspath(a.image)
    size = parse_size(a.size)
    if a.block_size not in (1024, 4096):
        raise Fail("--block-size must be 1024 or 4096", EX_USAGE)
    if size < 64 * a.block_size * 16:
        raise Fail(
            f"--size {a.size} is too small (at least {64 * a.block_size * 16 >> 10}K)", EX_USAGE
        )
    mkfs = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
    if not os.path.exists(mkfs):
        raise Fail("mkfs.ext4 not found: install e2fsprogs")
    if os.path.exists(image):
        if chanos_mounts_of(image):
            raise Fail(f"{image} is mounted: unmount it first")
        os.close(lock_image(image, read_only=False))  # refuse while a daemon holds it
    cmd = [mkfs, "-F", "-q", "-b", str(a.block_size), "-I", "256", "-O", f"none,{MKFS_FEATURES}"]
    if a.inodes:
        cmd += ["-N", str(a.inodes)]
    if a.label:
        cmd += ["-L", a.label]
    cmd += [image, f"{size >> 10}k"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise Fail(f"mkfs.ext4 failed: {msg[-1] if msg else proc.returncode}", EX_USAGE)
    print(f"{image}: ext4, {size >> 20} MiB, {a.block_size}-byte blocks, features {MKFS_FEATURES}")
    return EX_OK


# ---------------------------------------------------------------------------- fsck


def cmd_fsck(a: argparse.Namespace) -> int:
    image = os.path.abspath(a.image)
    if not os.path.exists(image):
        raise Fail(f"{image}: no such file", FSCK_OPERATIONAL)
    where = chanos_mounts_of(image)
    if where:
        raise Fail(f"{image} is mounted on {where[0]}: unmount it first", FSCK_OPERATIONAL)
    if not wait_unlocked(image, 0):
        print(
            f"{PROG}: waiting for the chanos daemon to finish writing {image} back", file=sys.stderr
        )
        if not wait_unlocked(image, a.wait):
            raise Fail(f"{image} is still in use after {a.wait:g}s", FSCK_OPERATIONAL)
    fd = lock_image(image, read_only=True, shared=True)  # no mount while we check
    try:
        e2fsck = shutil.which("e2fsck") or "/sbin/e2fsck"
        proc = subprocess.run([e2fsck, "-fn", image], capture_output=True, text=True)
    finally:
        os.close(fd)
    if a.verbose or proc.returncode != 0:
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
    if proc.returncode == 0:
        print(f"{image}: clean")
        return EX_OK
    if proc.returncode & FSCK_OPERATIONAL:
        print(f"{image}: could not be checked (e2fsck exit {proc.returncode})")
        return FSCK_OPERATIONAL
    print(f"{image}: NOT clean (e2fsck -fn found errors, exit {proc.returncode})")
    return FSCK_ERRORS


# ---------------------------------------------------------------------------- mount


def _check_mount_args(image: str, mountpoint: str) -> None:
    if not os.path.exists(image):
        raise Fail(f"{image}: no such file")
    st = os.stat(image)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise Fail(f"{image}: not an image file or block device")
    if not os.path.exists(mountpoint):
        raise Fail(f"mount point {mountpoint} does not exist")
    if not os.path.isdir(mountpoint):
        raise Fail(f"mount point {mountpoint} is not a directory")
    if any(m.point == mountpoint for m in mounts()) or os.path.ismount(mountpoint):
        raise Fail(f"{mountpoint} is already a mount point")
    if not os.path.exists("/dev/fuse"):
        raise Fail("/dev/fuse does not exist: the fuse kernel module is not loaded (modprobe fuse)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise Fail("no access to /dev/fuse")
    if os.geteuid() != 0 and not shutil.which("fusermount3"):
        raise Fail("fusermount3 not found: install the fuse3 package")


def cmd_mount(a: argparse.Namespace) -> int:
    try:
        config = parse_options(a.options or [])
    except OptionError as exc:
        raise Fail(str(exc), EX_USAGE) from None
    if a.type and a.type not in ("fuse.chanos", "chanos"):
        raise Fail(f"unsupported file system type {a.type!r} (fuse.chanos)", EX_USAGE)
    image = os.path.abspath(a.image)
    mountpoint = os.path.realpath(a.mountpoint)
    _check_mount_args(image, mountpoint)
    if config.read_only:
        pass
    elif not os.access(image, os.W_OK):
        raise Fail(f"{image} is not writable (mount it with -o ro)")
    lock_fd = lock_image(image, config.read_only, wait=MOUNT_WAIT)
    if a.foreground:
        return serve(image, mountpoint, config, notify_fd=None, foreground=True)
    # Daemon: the child mounts and serves; the parent returns once the child reports
    # that the mount is ready (or why it failed), like sshfs and fuse2fs do.
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(rfd)
        os.setsid()
        code = EX_FAIL
        try:
            code = serve(image, mountpoint, config, notify_fd=wfd, foreground=False)
        except BaseException as exc:  # last resort: never fall back into the parent's code
            with contextlib.suppress(Exception):
                log.exception("daemon failed: %r", exc)
        finally:
            os._exit(code)
    os.close(wfd)
    os.close(lock_fd)  # the child holds the lock (same open file description)
    chunks = []
    while chunk := os.read(rfd, 4096):
        chunks.append(chunk)
    os.close(rfd)
    reply = b"".join(chunks).decode(errors="replace")
    if reply.startswith("ready"):
        return EX_OK
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    raise Fail(reply.strip() or "the daemon exited before the mount was ready")


def _setup_logging(config: MountConfig, foreground: bool) -> None:
    root = logging.getLogger()
    root.setLevel(config.log_level)
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = "%(asctime)s chanos[%(process)d] %(levelname)s %(name)s: %(message)s"
    if config.log_file:
        h: logging.Handler = logging.FileHandler(config.log_file)
    elif foreground:
        h = logging.StreamHandler(sys.stderr)
    elif os.path.exists("/dev/log"):
        h = logging.handlers.SysLogHandler(address="/dev/log")
        fmt = "chanos[%(process)d]: %(levelname)s %(name)s: %(message)s"
    else:
        h = logging.NullHandler()
    h.setFormatter(logging.Formatter(fmt))
    root.addHandler(h)


def serve(
    image: str,
    mountpoint: str,
    config: MountConfig,
    *,
    notify_fd: int | None,
    foreground: bool,
) -> int:
    """Boot the kernel on ``image``, mount it and serve until unmounted. -> exit code."""
    import trio

    if not foreground:
        # Until the mount is ready, errors go to the terminal through the parent.
        logging.basicConfig(level=config.log_level, stream=sys.stderr)
    else:
        _setup_logging(config, foreground=True)

    def ready() -> None:
        if notify_fd is not None:
            os.write(notify_fd, b"ready\n")
            os.close(notify_fd)
            _setup_logging(config, foreground=False)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.close(devnull)

    def failed(message: str) -> None:
        if notify_fd is not None:
            os.write(notify_fd, message.encode() + b"\n")
            os.close(notify_fd)
        else:
            print(f"{PROG}: {message}", file=sys.stderr)

    from chanos.compat import memory

    memory.configure_malloc(
        arena_max=config.malloc_arenas,
        mmap_threshold=config.malloc_mmap_threshold,
        trim_threshold=config.malloc_trim_threshold,
    )
    state: dict = {"mounted": False, "memtrace": memory.MemTrace.from_env()}
    try:
        trio.run(_serve, image, mountpoint, config, ready, state)
    except Fail as exc:
        if state["mounted"]:
            log.error("%s", exc)
        else:
            failed(str(exc))
        return exc.code
    except OSError as exc:
        msg = f"cannot mount {image}: {exc.strerror or exc}"
        if state["mounted"]:
            log.error("%s", msg, exc_info=exc)
        else:
            failed(msg)
        return EX_FAIL
    except KeyboardInterrupt:
        return EX_FAIL
    except Exception as exc:
        if state["mounted"]:
            log.exception("chanos daemon failed")
        else:
            log.debug("mount failed", exc_info=exc)
            failed(f"cannot mount {image}: {type(exc).__name__}: {exc}")
        return EX_FAIL
    return EX_OK


def mount_options_for(config: MountConfig):  # -> MountOptions
    """The kernel's MountOptions for this configuration (fields it knows only)."""
    from chanos.personality.boot import MountOptions

    wanted = {
        "read_only": config.read_only,
        "max_vnodes": config.max_vnodes,
        "write_behind": config.write_cache,
        "acl": config.acl,
        "atime": config.atime_policy,
        "diratime": not config.nodiratime,
    }
    names = {f.name for f in dataclasses.fields(MountOptions)}
    return MountOptions(**{k: v for k, v in wanted.items() if k in names and v is not None})


async def _serve(image, mountpoint, config: MountConfig, ready, state) -> None:
    import pyfuse3
    from chanos.compat import request_wait
    from chanos.compat.fuse_ops import ChanosOperations, FrontEndConfig
    from chanos.personality.boot import boot

    tracing = _start_trace(config.trace_file)
    refused = False
    try:
        async with boot(image, mount_options_for(config)) as kernel:
            ops = ChanosOperations(
                kernel,
                FrontEndConfig(
                    entry_timeout=config.entry_timeout,
                    attr_timeout=config.attr_timeout,
                    negative_timeout=config.negative_timeout,
                    writeback_cache=config.writeback_cache and not config.read_only,
                    keep_cache=config.keep_cache,
                    read_only=config.read_only,
                    uid=config.uid,
                    gid=config.gid,
                    umask=config.umask,
                    io_size=config.io_size,
                    # The host kernel checks ACLs only along with default_permissions
                    # (asking for them turns it on).
                    acl=config.acl and config.default_permissions,
                ),
            )
            canonical = os.path.realpath(mountpoint)  # resolved while nothing is mounted
            fds_before = request_wait.fuse_fds()
            try:
                pyfuse3.init(ops, mountpoint, config.fuse_options(_fsname(image)))
            except RuntimeError:
                refused = True  # nothing was served: the kernel stops as at an unmount
            else:
                await _serve_session(
                    ops, config, image, mountpoint, canonical, fds_before, ready, state
                )
                log.info("unmounted; writing %s back", image)
        if refused:
            raise Fail(f"cannot mount on {mountpoint} (libfuse refused; see above)")
        log.info("%s written back and clean", image)
    finally:
        if tracing:
            _stop_trace(config.trace_file)


async def _serve_session(
    ops, config: MountConfig, image, mountpoint, canonical: str, fds_before, ready, state
) -> None:
    """Serve the FUSE session ``pyfuse3.init`` opened until it ends, then close it."""
    import pyfuse3
    import trio
    from chanos.compat import memory, request_wait
    from chanos.compat.init_reply import (
        FUSE_CACHE_SYMLINKS,
        FUSE_DONT_MASK,
        FUSE_HANDLE_KILLPRIV_V2,
        InitReply,
    )
    from chanos.compat.wake_latency import WakeLatency

    fd = request_wait.fuse_fd(fds_before)
    latency = None
    if fd is not None and config.cpu_latency is not None:
        latency = WakeLatency.open(config.cpu_latency)
    waiting = (
        request_wait.installed(fd, config.busy_poll, ops.idle_work, latency)
        if fd is not None
        else contextlib.nullcontext()
    )
    state["mounted"] = True
    log.info("serving %s on %s", image, mountpoint)
    ready()
    try:
        with waiting as wait:
            ops.defer_forgets = wait is not None  # its workers call idle_work
            if wait is not None:
                # Before the request loop starts: libfuse must not read INIT first.
                extra = FUSE_CACHE_SYMLINKS | FUSE_DONT_MASK
                if config.killpriv and not config.read_only:
                    extra |= FUSE_HANDLE_KILLPRIV_V2
                reply = InitReply(fd, extra)
                if reply.intercept():
                    wait.init_reply = reply
                    ops.init_reply = reply

            def stop_serving() -> None:
                pyfuse3.terminate()
                if wait is not None:
                    wait.end()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(_unmount_on_signal, mountpoint, stop_serving)
                if config.read_ahead:
                    kib = max(4, config.read_ahead >> 10)
                    nursery.start_soon(_set_read_ahead_after_init, ops, canonical, kib)
                if latency is not None:
                    nursery.start_soon(latency.run)
                if config.malloc_trim_interval > 0:
                    nursery.start_soon(memory.trim_periodically, config.malloc_trim_interval)
                try:
                    await pyfuse3.main(min_tasks=1, max_tasks=config.max_workers)
                except ConnectionAbortedError as exc:
                    # A read after the end of the session. The request wait lets
                    # one worker read once the descriptor reports the end, but a
                    # worker that saw a request just before the host kernel tore
                    # the connection down reads the end first, unseen by the wait
                    # (a lazily detached mount whose last file closed). libfuse
                    # 3.14 takes only ENODEV for the end; the session is over.
                    log.info("FUSE session ended: %s", exc)
                await ops.run_deferred()  # forgets not sent yet: held inodes go
                nursery.cancel_scope.cancel()
    finally:
        if latency is not None:
            latency.close()  # write-back at unmount is no burst of requests
        # After umount(8) the session has already ended and this only frees it;
        # after an error it makes sure no dead mount is left behind.
        pyfuse3.close(unmount=True)
        if state.get("memtrace") is not None:
            state["memtrace"].close()  # before write-back: what the caches hold
        if ops.unexpected_errors:
            log.error("%d requests failed unexpectedly (answered EIO)", ops.unexpected_errors)


async def _set_read_ahead_after_init(ops, mountpoint: str, kib: int) -> None:
    # The host kernel sets the window while it takes the INIT answer: set it after that.
    await ops.initialized.wait()
    set_read_ahead(mountpoint, kib)


async def _unmount_on_signal(mountpoint: str, stop_serving: Callable[[], None]) -> None:
    """SIGTERM/SIGINT/SIGHUP: unmount through the host kernel while still serving.

    The unmount makes the host kernel write back its dirty pages, which needs this daemon
    to answer the WRITEs; so the loop keeps running and ends when the kernel closes the
    session. If the mount is busy, it is detached lazily (it goes once the last open file
    is closed). A second signal stops serving at once (dirty kernel pages are lost, what
    the file system already has is still written back).
    """
    import trio

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
        n = 0
        async for signum in sigs:
            n += 1
            if n > 1:
                log.warning("signal %d again: stopping without waiting", signum)
                stop_serving()
                return
            log.info("signal %d: unmounting %s", signum, mountpoint)
            tool = shutil.which("fusermount3") or "fusermount3"
            proc = await trio.run_process(
                [tool, "-u", "-q", mountpoint], check=False, capture_stderr=True
            )
            if proc.returncode != 0:
                log.warning(
                    "unmount busy (%s); detaching lazily",
                    proc.stderr.decode(errors="replace").strip(),
                )
                await trio.run_process([tool, "-u", "-z", "-q", mountpoint], check=False)


def _start_trace(path: str | None) -> bool:
    if not path:
        return False
    from chanos.personality.tracing import trace

    # Bounded: a long mount keeps the first million events and drops the rest.
    trace.enable(limit=1_000_000)
    return True


def _stop_trace(path: str | None) -> None:
    from chanos.personality.tracing import trace

    trace.disable()
    try:
        trace.write_chrome(path)
    except OSError as exc:
        log.error("cannot write the trace to %s: %s", path, exc)


# ---------------------------------------------------------------------------- umount


def cmd_umount(a: argparse.Namespace) -> int:
    mountpoint = os.path.realpath(a.mountpoint)
    found = [(m.fstype, m.source) for m in mounts() if m.point == mountpoint]
    if not found:
        raise Fail(f"{mountpoint}: not mounted")
    fstype, image = found[-1]
    if fstype != "fuse.chanos":
        raise Fail(f"{mountpoint} is not a chanos mount ({fstype})")
    tool = shutil.which("fusermount3")
    cmd = [tool, "-u", mountpoint] if tool else ["umount", mountpoint]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise Fail(f"cannot unmount {mountpoint}: {proc.stderr.strip()}")
    if not wait_unlocked(image, a.wait):
        raise Fail(f"the daemon of {image} has not finished after {a.wait:g}s")
    return EX_OK


# ---------------------------------------------------------------------------- helper


def cmd_install_helper(a: argparse.Namespace) -> int:
    exe = shutil.which(PROG) or os.path.join(os.path.dirname(sys.executable), PROG)
    target = Path(a.dir) / "mount.fuse.chanos"
    target.write_text(
        "#!/bin/sh\n"
        "# mount(8) helper for file systems of type fuse.chanos (`chanos install-helper`)\n"
        f'exec "{exe}" mount "$@"\n'
    )
    target.chmod(0o755)
    print(f"installed {target} -> {exe}")
    return EX_OK


# ---------------------------------------------------------------------------- main


class _Parser(argparse.ArgumentParser):
    """argparse with mount(8)'s exit code for bad usage (1, not 2)."""

    def error(self, message: str):  # type: ignore[override]
        raise Fail(f"{message} (see {PROG} --help)", EX_USAGE)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="chanos: an ext4-compatible file system of actors, mounted through FUSE.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser(
        "mkfs",
        help="make an ext4 image with the features chanos supports",
        description="Make an ext4 image with mkfs.ext4 -O none,"
        + MKFS_FEATURES
        + " -I 256: the ext4 defaults without metadata_csum (chanos does not compute "
        "checksums, so it must not be asked to keep them) and without newer features "
        "such as orphan_file; listed explicitly so /etc/mke2fs.conf cannot change them.",
    )
    m.add_argument("image")
    m.add_argument("--size", required=True, help="e.g. 512M, 2G")
    m.add_argument("--block-size", "-b", type=int, default=4096, help="4096 (default) or 1024")
    m.add_argument("-N", "--inodes", type=int, help="number of inodes")
    m.add_argument("-L", "--label")
    m.set_defaults(func=cmd_mkfs)

    mo = sub.add_parser(
        "mount",
        help="mount an image (returns once mounted; -f stays in the foreground)",
        description="Options (-o, comma-separated): ro, allow_other, default_permissions "
        "(default) / nodefault_permissions, acl (default: POSIX ACLs checked and inherited) "
        "/ noacl, uid=N, gid=N, umask=OCTAL (override what stat "
        "shows), max_vnodes=N (live vnode actors), log_level=debug|info|warning|error, "
        "log=FILE, trace=FILE (Chrome trace JSON of the messages), writeback (the host "
        "kernel's writeback cache; off by default), read_ahead=SIZE (1M; 0 = the host "
        "kernel's 128K), io_size=SIZE (st_blksize, 1M; 0 = the block size), "
        "entry_timeout=S, attr_timeout=S, negative_timeout=S, nokeep_cache, "
        "nokillpriv (the host kernel, not chanos, takes set-ID bits and capabilities "
        "away; a buffered write then costs two requests), "
        "cpu_latency=USEC (the CPU wake-up latency asked of the kernel while requests come "
        "back to back, as root; 0 by default) / nocpu_latency, "
        "and the usual "
        "nosuid, nodev, noexec, noatime, ...",
    )
    mo.add_argument("image")
    mo.add_argument("mountpoint")
    mo.add_argument("-o", dest="options", action="append", metavar="OPTS")
    mo.add_argument("-f", "--foreground", action="store_true")
    # Flags mount(8) passes to helpers: -n (no mtab), -s (sloppy), -v (verbose), -t TYPE.
    mo.add_argument("-n", action="store_true", help=argparse.SUPPRESS)
    mo.add_argument("-s", action="store_true", help=argparse.SUPPRESS)
    mo.add_argument("-v", action="store_true", help=argparse.SUPPRESS)
    mo.add_argument("-t", dest="type", help=argparse.SUPPRESS)
    mo.set_defaults(func=cmd_mount)

    u = sub.add_parser("umount", help="unmount and wait until the image is written back")
    u.add_argument("mountpoint")
    u.add_argument("--wait", type=float, default=300.0, help="seconds to wait (300)")
    u.set_defaults(func=cmd_umount)

    f = sub.add_parser("fsck", help="check an image with e2fsck -fn; says whether it is clean")
    f.add_argument("image")
    f.add_argument("-v", "--verbose", action="store_true", help="show e2fsck's output")
    f.add_argument(
        "--wait",
        type=float,
        default=300.0,
        help="seconds to wait for a daemon still writing the image back (300)",
    )
    f.set_defaults(func=cmd_fsck)

    h = sub.add_parser("install-helper", help="install mount.fuse.chanos for mount(8)/fstab")
    h.add_argument("--dir", default="/usr/sbin")
    h.set_defaults(func=cmd_install_helper)
    return p


COMMANDS = ("mkfs", "mount", "umount", "fsck", "install-helper")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # mount.fuse3 runs "chanos SOURCE MOUNTPOINT -o OPTS": no subcommand word.
    if args and args[0] not in COMMANDS and not args[0].startswith("-"):
        args = ["mount", *args]
    parser = _parser()
    try:
        a = parser.parse_args(args)
        return a.func(a)
    except Fail as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.code
    except OSError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EX_FAIL if exc.errno != errno.EINVAL else EX_USAGE


if __name__ == "__main__":
    sys.exit(main())
