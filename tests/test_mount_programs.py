"""Real programs on a real chanos mount (FUSE, fresh image in a temp dir).

Every test ends the same way: unmount, ``e2fsck -fn`` must report the image clean, then a
remount must show the same tree (types, modes, sizes, content hashes, link targets,
xattrs) as before the unmount.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

from mountlib import (
    PROGRAMS,
    Mounted,
    chanos_mount,
    mkfs,
    require_tool,
    run,
    tree_digest,
)

pytestmark = pytest.mark.mount
__all__ = ["chanos_mount"]  # the fixture, used by name

# A real tree to copy: part of the Python standard library (many small files, subdirs).
STDLIB = Path(os.__file__).parent
SOURCE_DIRS = [STDLIB / d for d in ("json", "email", "asyncio", "xml", "unittest", "logging")]


def without_nlink(digest: dict[str, tuple]) -> dict[str, tuple]:
    """Digest rows without the link count (directories count differently on the host)."""
    return {k: v[:4] + v[5:] for k, v in digest.items()}


def finish(m: Mounted, digest_root: str = "") -> None:
    """Unmount (e2fsck clean), remount, and check the tree is unchanged; then unmount."""
    before = tree_digest(m.mnt / digest_root)
    m.remount()
    after = tree_digest(m.mnt / digest_root)
    assert after == before
    m.unmount()


def test_coreutils(chanos_mount, tmp_path):
    m = chanos_mount
    mnt = m.mnt
    # cp -a of a real tree in and back out, compared with diff -r
    (mnt / "src").mkdir()
    for d in SOURCE_DIRS:
        run(["cp", "-a", str(d), str(mnt / "src")])
    for d in SOURCE_DIRS:
        run(["diff", "-r", str(d), str(mnt / "src" / d.name)])
        # cp -a keeps modes (it sets them through an ACL the front end turns into mode
        # bits) and leaves no stray ACL xattrs behind
        assert without_nlink(tree_digest(mnt / "src" / d.name)) == without_nlink(tree_digest(d))
    out = tmp_path / "out"
    run(["cp", "-a", str(mnt / "src"), str(out)])
    for d in SOURCE_DIRS:
        run(["diff", "-r", str(d), str(out / d.name)])
    # ls -l / ls -lR
    listing = run(["ls", "-l", str(mnt / "src")])
    assert all(d.name in listing for d in SOURCE_DIRS)
    lr = run(["ls", "-lR", str(mnt / "src")])
    assert "decoder.py" in lr and "base_events.py" in lr
    # mv, ln, ln -s, chmod, chown, touch -d, truncate, dd, stat
    os.chdir(mnt)
    try:
        run("mv src/json src/json2 && test -d src/json2 && test ! -e src/json")
        run("ln src/json2/decoder.py hard && test $(stat -c %h hard) -eq 2")
        run('ln -s src/json2/decoder.py soft && test "$(readlink soft)" = src/json2/decoder.py')
        run("cmp soft hard")
        run("chmod 640 hard && test $(stat -c %a src/json2/decoder.py) = 640")
        run('chown 1234:5678 hard && test "$(stat -c %u:%g hard)" = 1234:5678')
        run("touch -d '2001-02-03 04:05:06.789' hard")
        assert run("stat -c %y hard").startswith("2001-02-03 04:05:06.789")
        run("truncate -s 100000 sparse && test $(stat -c %s sparse) -eq 100000")
        run("test $(stat -c %b sparse) -eq 0")  # a hole takes no blocks
        run("truncate -s 10 hard && test $(stat -c %s src/json2/decoder.py) -eq 10")
        run("dd if=/dev/urandom of=dd.bin bs=64k count=40 status=none")
        run("dd if=dd.bin of=dd2.bin bs=4k status=none && cmp dd.bin dd2.bin")
        run("dd if=/dev/zero of=dd.bin bs=1 count=5 seek=1000 conv=notrunc status=none")
        run("test $(stat -c %s dd.bin) -eq $((64*1024*40))")
        # du and df agree with what was written
        du = int(run("du -sk dd.bin").split()[0])
        assert 2560 <= du <= 2600
        df = run(["df", "-k", str(mnt)]).splitlines()[1].split()
        assert int(df[1]) > 200000 and int(df[2]) > 2560
        # find
        found = run("find src -name '*.py' | wc -l").strip()
        expect = sum(1 for d in SOURCE_DIRS for _ in d.rglob("*.py"))
        assert int(found) == expect
        run("find . -type l | grep -qx ./soft")
        # rm -r of a whole tree
        run("rm -r src/xml && test ! -e src/xml")
    finally:
        os.chdir("/")
    finish(m)


def test_tar_and_rsync_keep_links_and_xattrs(chanos_mount, tmp_path):
    m = chanos_mount
    require_tool("setfattr")
    src = tmp_path / "tree"
    src.mkdir()
    (src / "a").mkdir()
    (src / "a" / "file").write_bytes(os.urandom(70000))
    os.link(src / "a" / "file", src / "a" / "hardlink")
    os.symlink("a/file", src / "symlink")
    (src / "empty").touch()
    os.setxattr(src / "a" / "file", "user.note", b"hello xattr")
    os.setxattr(src / "empty", "user.big", os.urandom(2000))
    tarball = tmp_path / "t.tar"
    run(["tar", "--xattrs", "-cf", str(tarball), "-C", str(src), "."])
    (m.mnt / "x").mkdir()
    run(["tar", "--xattrs", "--xattrs-include=user.*", "-xf", str(tarball), "-C",
         str(m.mnt / "x")])  # fmt: skip
    assert tree_digest(m.mnt / "x") == tree_digest(src)
    assert os.stat(m.mnt / "x/a/file").st_ino == os.stat(m.mnt / "x/a/hardlink").st_ino
    # tar c on the mount, x back to the host
    back = tmp_path / "back"
    back.mkdir()
    run(f"tar --xattrs -cf - -C {m.mnt / 'x'} . | tar --xattrs --xattrs-include='user.*' "
        f"-xf - -C {back}")  # fmt: skip
    assert tree_digest(back) == tree_digest(src)
    if shutil.which("rsync"):
        run(["rsync", "-aHX", f"{src}/", str(m.mnt / "r")])
        assert tree_digest(m.mnt / "r") == tree_digest(src)
        run(["rsync", "-aHX", "--delete", f"{m.mnt / 'r'}/", str(tmp_path / "r2")])
        assert tree_digest(tmp_path / "r2") == tree_digest(src)
    finish(m)


def test_git(chanos_mount, tmp_path):
    m = chanos_mount
    require_tool("git")
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com",
               GIT_CONFIG_NOSYSTEM="1", HOME=str(tmp_path))  # fmt: skip
    repo = m.mnt / "repo"
    run(["git", "init", "-q", str(repo)], env=env)
    shutil.copytree(STDLIB / "json", repo / "json")
    shutil.copytree(STDLIB / "email", repo / "email")
    run(["git", "add", "-A"], cwd=repo, env=env)
    run(["git", "commit", "-qm", "first"], cwd=repo, env=env)
    (repo / "json" / "new.txt").write_text("second\n")
    run("git rm -q email/utils.py && git add -A && git commit -qm second", cwd=repo, env=env)
    run(["git", "fsck", "--full", "--strict"], cwd=repo, env=env)
    run(["git", "gc", "-q"], cwd=repo, env=env)  # packs and deletes loose objects
    run(["git", "fsck", "--full"], cwd=repo, env=env)
    # clone from the mount to the host and from the host into the mount
    run(["git", "clone", "-q", str(repo), str(tmp_path / "out")], env=env)
    run(["git", "clone", "-q", "--no-local", str(tmp_path / "out"), str(m.mnt / "back")], env=env)
    run(["git", "fsck", "--full"], cwd=m.mnt / "back", env=env)
    log = run(["git", "log", "--oneline"], cwd=m.mnt / "back", env=env)
    assert len(log.splitlines()) == 2
    run(["diff", "-r", "--exclude=.git", str(repo), str(m.mnt / "back")])
    assert run(["git", "status", "--porcelain"], cwd=repo, env=env) == ""
    finish(m)


def test_sqlite(chanos_mount):
    m = chanos_mount
    require_tool("sqlite3")
    db = m.mnt / "test.db"
    script = ["CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, v REAL, blob BLOB);",
              "CREATE INDEX t_name ON t(name);"]  # fmt: skip
    for batch in range(20):  # 10,000 inserts in 20 transactions
        script.append("BEGIN;")
        for i in range(500):
            n = batch * 500 + i
            script.append(f"INSERT INTO t (name, v, blob) VALUES ('n{n}', {n}.5, randomblob(64));")
        script.append("COMMIT;")
    script.append("UPDATE t SET name = name || 'x' WHERE id % 7 = 0;")
    script.append("DELETE FROM t WHERE id % 10 = 0;")
    run(["sqlite3", str(db)], input="\n".join(script))
    assert run(["sqlite3", str(db), "PRAGMA integrity_check;"]).strip() == "ok"
    assert run(["sqlite3", str(db), "SELECT count(*) FROM t;"]).strip() == "9000"
    # WAL mode too (shared-memory file, checkpoints)
    run(["sqlite3", str(db), "PRAGMA journal_mode=WAL; INSERT INTO t (name) VALUES ('wal');"])
    m.remount()
    assert run(["sqlite3", str(db), "PRAGMA integrity_check;"]).strip() == "ok"
    assert run(["sqlite3", str(db), "SELECT count(*) FROM t;"]).strip() == "9001"
    finish(m)


def test_shell_scripts_and_make(chanos_mount):
    m = chanos_mount
    require_tool("make")
    cc = require_tool("cc")
    (m.mnt / "sh").mkdir()
    out = run(["bash", str(PROGRAMS / "shell_suite.sh"), str(m.mnt / "sh")])
    assert "shell suite OK" in out
    proj = m.mnt / "proj"
    shutil.copytree(PROGRAMS / "cproject", proj)
    env = dict(os.environ, CC=cc)
    run(["make", "-j2", "-s"], cwd=proj, env=env)
    run(["make", "-s", "check"], cwd=proj, env=env)
    # nothing to do when nothing changed; a touched source rebuilds its object only
    assert "up to date" in run(["make", "app"], cwd=proj, env=env)
    time.sleep(0.01)
    os.utime(proj / "hash.c")
    rebuilt = run(["make", "app"], cwd=proj, env=env)
    assert "hash.c" in rebuilt and "main.c" not in rebuilt and "util.c" not in rebuilt
    run(["make", "-s", "clean"], cwd=proj, env=env)
    assert sorted(p.name for p in proj.iterdir()) == sorted(
        p.name for p in (PROGRAMS / "cproject").iterdir()
    )
    finish(m)


def test_stress_tools(chanos_mount):
    m = chanos_mount
    stress = require_tool("stress-ng")
    fio = require_tool("fio")
    work = m.mnt / "stress"
    work.mkdir()
    # stress-ng file-system stressors: short, bounded runs, errors fail the test
    run([stress, "--temp-path", str(work), "--timeout", "8s", "--metrics-brief",
         "--dir", "2", "--dentry", "2", "--rename", "2", "--link", "1", "--symlink", "1",
         "--hdd", "1", "--hdd-bytes", "8m", "--verify"], timeout=120)  # fmt: skip
    # fio with verification, sequential and random, and random through O_DIRECT (the
    # front end's direct-I/O handles)
    for rw, direct in (("write", 0), ("randwrite", 0), ("randwrite", 1)):
        run([fio, f"--name={rw}{direct}", f"--directory={work}", f"--rw={rw}", "--bs=4k",
             "--bsrange=4k-256k", "--size=24m", "--numjobs=2", "--verify=crc32c",
             "--verify_fatal=1", "--do_verify=1", "--verify_state_save=0", "--end_fsync=1",
             "--ioengine=psync", f"--direct={direct}"],
            timeout=180)  # fmt: skip
    # our own fsx-style exerciser, several processes at once
    procs = [
        subprocess.Popen([sys.executable, str(PROGRAMS / "fsx.py"), str(work / f"fsx{i}"),
                          "--ops", "1500", "--seed", str(i)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(4)
    ]  # fmt: skip
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    finish(m)


def test_concurrent_writers_renamers_listers(chanos_mount):
    m = chanos_mount
    shared = m.mnt / "shared"
    shared.mkdir()
    (shared / "sub").mkdir()
    # A name listed by readdir can be renamed away before ls/find stat it ("No such file
    # or directory", as on any file system); any other error fails the test.
    check = r"""
    listing() {
        local err
        err=$("$@" 2>&1 >/dev/null) || true
        if printf '%s\n' "$err" | grep -v 'No such file or directory' | grep -q .; then
            echo "$err" >&2; exit 1
        fi
    }
    """
    script = (
        check
        + r"""
    set -e
    id=$1; dir=$2
    for i in $(seq 1 150); do
        printf 'writer %s item %s\n' "$id" "$i" > "$dir/tmp.$id.$i"
        mv "$dir/tmp.$id.$i" "$dir/item.$id.$i"
        if [ $((i % 3)) -eq 0 ]; then mv "$dir/item.$id.$i" "$dir/sub/item.$id.$i"; fi
        if [ $((i % 5)) -eq 0 ]; then listing ls -l "$dir"; listing ls "$dir/sub"; fi
        if [ $((i % 7)) -eq 0 ]; then rm -f "$dir/item.$id.$((i - 1))"; fi
    done
    """
    )
    procs = [subprocess.Popen(["bash", "-c", script, "w", str(k), str(shared)],
                              stderr=subprocess.PIPE, text=True) for k in range(6)]  # fmt: skip
    lister_script = check + f"for i in $(seq 60); do listing ls -lR {shared}; " \
        f"listing find {shared} -type f; done"  # fmt: skip
    lister = subprocess.Popen(["bash", "-c", lister_script], stderr=subprocess.PIPE, text=True)
    for p in [*procs, lister]:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    # every writer's surviving items are where they should be, with the right content
    for k in range(6):
        for i in range(1, 151):
            removed = (i + 1) % 7 == 0 and (i % 3) != 0
            where = shared / "sub" if i % 3 == 0 else shared
            p = where / f"item.{k}.{i}"
            if removed:
                assert not p.exists()
            else:
                assert p.read_text() == f"writer {k} item {i}\n"
    assert not list(shared.glob("tmp.*"))
    finish(m)


# getdents64 with a buffer of our choosing (libc's readdir asks for 32 KiB, which a FUSE
# mount may fill from a single READDIR): the listing below must take several.
_GETDENTS64 = {"x86_64": 217, "aarch64": 61}.get(os.uname().machine)


def getdents(fd: int, size: int = 4096) -> list[str]:
    """One getdents64 call on ``fd``: the names it returned ([] at the end)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(size)
    n = libc.syscall(_GETDENTS64, fd, buf, size)
    if n < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    raw, names, pos = buf.raw[:n], [], 0
    while pos < n:
        reclen = int.from_bytes(raw[pos + 16 : pos + 18], "little")
        names.append(raw[pos + 19 : pos + reclen].split(b"\0", 1)[0].decode())
        pos += reclen
    return names


def test_listing_continued_after_unlink_and_inode_reuse_keeps_new_file_writable(chanos_mount):
    """A listing left open across an unlink, then a new file in the same directory.

    Between two READDIRs of one directory the host kernel does not hold its lock: a name
    read ahead can be unlinked and a file created. Were the inode freed at unlink, its
    number would go to the new file, and a readdirplus entry naming it with the old
    generation would make the host take the new file's inode for a stale one (the writer's
    data lost with EIO). The read-ahead entry is a lookup reference, so the unlinked
    inode is kept and the new file gets another number; the listing and the new file's
    data come out right either way.
    """
    if _GETDENTS64 is None:
        pytest.skip("getdents64 number unknown on this machine")
    m = chanos_mount
    d = m.mnt / "d"
    d.mkdir()
    for i in range(200):  # more than one READDIR buffer takes
        (d / f"f{i:03d}").write_text("x")
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        names = getdents(dfd)  # one READDIR: the front end read ahead past the buffer
        assert "f150" not in names  # the precondition: the victim is still to come
        victim = d / "f150"
        old_ino = victim.stat().st_ino
        victim.unlink()
        fd = os.open(d / "new", os.O_CREAT | os.O_WRONLY, 0o644)  # same group: lowest free
        try:
            # The entry read ahead still references the unlinked inode, so it is kept and
            # its number is not given to the new file.
            assert os.fstat(fd).st_ino != old_ino
            while more := getdents(dfd):  # the listing continues after the change
                names += more
            os.write(fd, b"written after the listing\n")
        finally:
            os.close(fd)
    finally:
        os.close(dfd)
    listed = set(names) - {".", "..", "new"}  # "new" (made while listing) may be seen
    assert listed == {f"f{i:03d}" for i in range(200) if i != 150}
    assert (d / "new").read_text() == "written after the listing\n"
    finish(m)


def test_listing_continued_after_append_keeps_new_size_without_writeback_cache(tmp_path):
    """Without the writeback cache the host kernel takes a file's size from the daemon's
    attributes: entries read ahead before an append must not reach it after the append
    (it would shrink the file to the old size, and readers would see the data cut)."""
    if _GETDENTS64 is None:
        pytest.skip("getdents64 number unknown on this machine")
    m = Mounted(mkfs(tmp_path / "chanos.img"), tmp_path / "mnt", options="nowriteback")
    m.mount()
    try:
        d = m.mnt / "d"
        d.mkdir()
        for i in range(200):
            (d / f"f{i:03d}").write_text("x")
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert "f150" not in getdents(dfd)  # the precondition: f150 read ahead only
            with open(d / "f150", "a") as f:
                f.write("y" * 100)
            while getdents(dfd):  # the listing continues after the append
                pass
        finally:
            os.close(dfd)
        assert (d / "f150").stat().st_size == 101
        assert (d / "f150").read_text() == "x" + "y" * 100
        finish(m)
    finally:
        m.kill()
