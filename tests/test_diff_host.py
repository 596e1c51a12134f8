"""Differential test: random operation sequences on chanos and on the host's file system.

hypothesis draws a sequence of operations over a tiny namespace (names a, b, c; paths up
to three deep, so collisions, renames into subtrees and non-empty directories are
frequent). Each operation runs on a host temp dir (through the host kernel) and on chanos
(through ``kernel.syscall``, with the live-vnode bound at 3); the errno or success of each
must match. After the sequence the two trees must match: names, types, sizes, contents,
symlink targets, link counts and which names share an inode. Then chanos unmounts,
e2fsck must find the image clean, and the remounted tree must still match.

Symlink targets all dangle (they name nothing in either tree), so following one anywhere
gives ENOENT on the host; the chanos path walk below does the same.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import trio
from chanos.personality.boot import MountOptions, boot
from chanos.personality.syscalls import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INO,
    Create,
    GetAttr,
    Link,
    Lookup,
    MkDir,
    ReadLink,
    Release,
    Rename,
    RmDir,
    SetAttr,
    Symlink,
    Unlink,
    Write,
)
from conftest import E2FSCK, make_ext4_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

DANGLING = b"/nonexistent-chanos-diff/target"
_libc = ctypes.CDLL(None, use_errno=True)


def host_renameat2(old: str, new: str, flags: int) -> None:
    if _libc.renameat2(-100, old.encode(), -100, new.encode(), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


# ---------------------------------------------------------------------------------------
# operations
# ---------------------------------------------------------------------------------------

names = st.sampled_from([b"a", b"b", b"c"])
# Short paths more often than deep ones, so most operations find their parent.
paths = st.sampled_from([1, 1, 1, 2, 2, 3]).flatmap(lambda n: st.tuples(*[names] * n))
ops = st.one_of(
    st.tuples(st.just("mkdir"), paths),
    st.tuples(
        st.just("write"),
        paths,
        st.integers(0, 9000),
        st.binary(min_size=1, max_size=3000),
    ),
    st.tuples(st.just("truncate"), paths, st.integers(0, 12000)),
    st.tuples(st.just("unlink"), paths),
    st.tuples(st.just("rmdir"), paths),
    st.tuples(
        st.just("rename"),
        paths,
        paths,
        st.sampled_from([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]),
    ),
    st.tuples(st.just("link"), paths, paths),
    st.tuples(st.just("symlink"), paths),
)


def host_apply(root: str, op: tuple) -> None:
    def p(path: tuple[bytes, ...]) -> str:
        return os.path.join(root, *(n.decode() for n in path))

    match op:
        case ("mkdir", path):
            os.mkdir(p(path), 0o755)
        case ("write", path, off, data):
            fd = os.open(p(path), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, data, off)
            finally:
                os.close(fd)
        case ("truncate", path, size):
            os.truncate(p(path), size)
        case ("unlink", path):
            os.unlink(p(path))
        case ("rmdir", path):
            os.rmdir(p(path))
        case ("rename", src, dst, flags):
            host_renameat2(p(src), p(dst), flags)
        case ("link", src, dst):
            os.link(p(src), p(dst), follow_symlinks=False)
        case ("symlink", path):
            os.symlink(DANGLING, p(path))


async def walk(k, path: tuple[bytes, ...], *, follow_last: bool = False) -> int:
    """Inode of ``path``: a symlink met on the way (they all dangle) is ENOENT."""
    ino = ROOT_INO
    for i, name in enumerate(path):
        e = await k.syscall(Lookup(ino, name))
        last = i == len(path) - 1
        if stat.S_ISLNK(e.attr.mode) and (not last or follow_last):
            raise OSError(errno.ENOENT, "dangling symlink")
        ino = e.inode
    return ino


async def parent_of(k, path: tuple[bytes, ...]) -> int:
    """The directory holding ``path``'s last name, resolved as the host kernel does
    before it asks a file system anything (ENOTDIR when it is not a directory)."""
    ino = await walk(k, path[:-1], follow_last=True)
    if not stat.S_ISDIR((await k.syscall(GetAttr(ino))).mode):
        raise OSError(errno.ENOTDIR, "not a directory")
    return ino


async def chanos_apply(k, op: tuple) -> None:
    match op:
        case ("mkdir", path):
            parent = await parent_of(k, path)
            await k.syscall(MkDir(parent, path[-1], 0o755))
        case ("write", path, off, data):
            parent = await parent_of(k, path)
            try:
                e = await k.syscall(Lookup(parent, path[-1]))
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
            else:
                if stat.S_ISLNK(e.attr.mode):  # the host follows it: dangling
                    raise OSError(errno.ENOENT, "dangling symlink")
            h, _ = await k.syscall(Create(parent, path[-1], 0o644, os.O_WRONLY | os.O_CREAT))
            try:
                await k.syscall(Write(h, off, data))
            finally:
                await k.syscall(Release(h))
        case ("truncate", path, size):
            ino = await walk(k, path, follow_last=True)
            await k.syscall(SetAttr(ino, size=size))
        case ("unlink", path):
            parent = await parent_of(k, path)
            await k.syscall(Unlink(parent, path[-1]))
        case ("rmdir", path):
            parent = await parent_of(k, path)
            await k.syscall(RmDir(parent, path[-1]))
        case ("rename", src, dst, flags):
            sp = await parent_of(k, src)
            dp = await parent_of(k, dst)
            await k.syscall(Rename(sp, src[-1], dp, dst[-1], flags))
        case ("link", src, dst):
            ino = await walk(k, src)
            dp = await parent_of(k, dst)
            await k.syscall(Link(ino, dp, dst[-1]))
        case ("symlink", path):
            parent = await parent_of(k, path)
            await k.syscall(Symlink(parent, path[-1], DANGLING))


# ---------------------------------------------------------------------------------------
# trees
# ---------------------------------------------------------------------------------------


def host_tree(root: str) -> dict:
    """{path: (kind, size, content/target, nlink)} plus the inode-sharing partition."""
    out, inodes = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            full = os.path.join(dirpath, n)
            rel = os.path.relpath(full, root).encode()
            if rel == b"lost+found":
                continue
            s = os.lstat(full)
            if stat.S_ISDIR(s.st_mode):
                out[rel] = ("dir", None, None, s.st_nlink)
            elif stat.S_ISLNK(s.st_mode):
                out[rel] = ("lnk", s.st_size, os.fsencode(os.readlink(full)), s.st_nlink)
            else:
                out[rel] = ("reg", s.st_size, Path(full).read_bytes(), s.st_nlink)
            inodes.setdefault(s.st_ino, set()).add(rel)
    return {"entries": out, "links": sorted(sorted(v) for v in inodes.values())}


async def chanos_tree(k) -> dict:
    from conftest import k_listdir, k_read_file

    out, inodes = {}, {}

    async def visit(ino: int, prefix: bytes) -> None:
        for name, child in sorted((await k_listdir(k, ino)).items()):
            rel = prefix + name
            if rel == b"lost+found":
                continue
            a = await k.syscall(GetAttr(child))
            if stat.S_ISDIR(a.mode):
                out[rel] = ("dir", None, None, a.nlink)
                await visit(child, rel + b"/")
            elif stat.S_ISLNK(a.mode):
                out[rel] = ("lnk", a.size, await k.syscall(ReadLink(child)), a.nlink)
            else:
                data = await k_read_file(k, child)
                assert len(data) == a.size
                out[rel] = ("reg", a.size, data, a.nlink)
            inodes.setdefault(child, set()).add(rel)

    await visit(ROOT_INO, b"")
    # The root's link count too: it is 2 + subdirectories on both sides.
    root_links = (await k.syscall(GetAttr(ROOT_INO))).nlink
    return {
        "entries": out,
        "links": sorted(sorted(v) for v in inodes.values()),
        "root_nlink": root_links,
    }


OUTCOMES = [0, 0]  # [failed, succeeded] operations, for a look at what the test covers


def _errno_name(e: int | None) -> str:
    return "ok" if e is None else errno.errorcode.get(e, str(e))


async def run_both(img: Path, host_root: str, sequence: list[tuple]) -> None:
    log = []
    async with boot(img, MountOptions(max_vnodes=3)) as k:
        for op in sequence:
            try:
                host_apply(host_root, op)
                want = None
            except OSError as e:
                want = e.errno
            try:
                await chanos_apply(k, op)
                got = None
            except OSError as e:
                got = e.errno
            log.append(f"{op[0]}{op[1:]!r} host={_errno_name(want)} chanos={_errno_name(got)}")
            OUTCOMES[want is None] += 1
            assert want == got, "\n".join(log)
        tree = await chanos_tree(k)
    expected = host_tree(host_root)
    root_nlink = os.lstat(host_root).st_nlink + 1  # chanos's root also has lost+found
    assert tree["entries"] == expected["entries"], "\n".join(log)
    assert tree["links"] == expected["links"], "\n".join(log)
    assert tree["root_nlink"] == root_nlink, "\n".join(log)
    proc = subprocess.run([E2FSCK, "-fn", str(img)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + "\n".join(log)
    async with boot(img, MountOptions(max_vnodes=3)) as k:
        again = await chanos_tree(k)
    assert again == tree


@settings(
    max_examples=int(os.environ.get("CHANOS_DIFF_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(sequence=st.lists(ops, min_size=8, max_size=60))
def test_random_operations_match_the_host(sequence):
    with tempfile.TemporaryDirectory(prefix="chanos-diff-") as tmp:
        img = make_ext4_image(Path(tmp), "16M", 1024)
        host_root = os.path.join(tmp, "host")
        os.mkdir(host_root)
        try:
            trio.run(run_both, img, host_root, sequence)
        finally:
            shutil.rmtree(host_root, ignore_errors=True)
