"""Shared helpers for the format codec tests: e2fsprogs-made images and a tiny reader.

Images are made by mkfs.ext4 and populated with debugfs -w; what e2fsprogs prints about
them (dumpe2fs, debugfs stat/ls/ea_list) is the oracle the codecs are compared with.
The reader below uses only the codecs under test plus plain file reads.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from chanos.fs.format import dirent
from chanos.fs.format.extent import ExtentNode
from chanos.fs.format.group_desc import GroupDesc, parse_table
from chanos.fs.format.inode import Inode
from chanos.fs.format.superblock import SUPERBLOCK_OFFSET, Superblock

MKFS = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
DEBUGFS = shutil.which("debugfs") or "/sbin/debugfs"
DUMPE2FS = shutil.which("dumpe2fs") or "/sbin/dumpe2fs"
E2FSCK = shutil.which("e2fsck") or "/sbin/e2fsck"

SLOW_TARGET = "a/" * 40 + "slow-symlink-target"  # 99 bytes: needs a block
FAST_TARGET = "short/target"
NS_MTIME_EXTRA = (123456789 << 2) | 1  # nanoseconds + epoch bit 1 (year > 2038)


def run(*args: str | Path, check: bool = True) -> str:
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout


def mkfs(path: Path, block_size: int, size: str = "64M", *features: str) -> Path:
    opts = ",".join(("^metadata_csum", *features))
    run(MKFS, "-q", "-F", "-b", str(block_size), "-O", opts, path, size)
    return path


def debugfs_w(img: Path, commands: list[str], workdir: Path) -> None:
    """Run debugfs -w with a command file (one process for all commands)."""
    cmdfile = workdir / "debugfs.cmds"
    cmdfile.write_text("\n".join(commands) + "\n")
    out = subprocess.run(
        [DEBUGFS, "-w", "-f", str(cmdfile), str(img)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def debugfs_r(img: Path, request: str) -> str:
    return run(DEBUGFS, "-R", request, img)


def fsck(img: Path) -> tuple[int, str]:
    p = subprocess.run([E2FSCK, "-fn", str(img)], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def dumpe2fs_header(img: Path) -> dict[str, str]:
    out = run(DUMPE2FS, "-h", img)
    fields = {}
    for line in out.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            fields[k.strip()] = v.strip()
    return fields


def populate(img: Path, workdir: Path, block_size: int) -> None:
    """A small tree exercising every object type the codecs decode."""
    (workdir / "hello.txt").write_bytes(b"hello world\n")
    (workdir / "big.bin").write_bytes(bytes(range(256)) * 1024)  # 256 KiB, contiguous
    with open(workdir / "sparse.bin", "wb") as f:  # 8 separate extents -> depth 1
        for i in range(8):
            f.seek(i * 16 * block_size)
            f.write(b"S" * block_size)
    (workdir / "bigval").write_bytes(b"v" * 300)
    cmds = [
        f"write {workdir / 'hello.txt'} hello",
        f"write {workdir / 'big.bin'} big",
        f"write {workdir / 'sparse.bin'} sparse",
        "mkdir dir",
        f"write {workdir / 'hello.txt'} dir/inner",
        f"symlink fast {FAST_TARGET}",
        f"symlink slow {SLOW_TARGET}",
        "mknod cdev c 4 5",
        "mknod bdev b 8 1",
        "mknod fifo p",
        "set_inode_field hello uid 100000",
        "set_inode_field hello gid 70001",
        "set_inode_field hello generation 12345",
        f"set_inode_field hello mtime_extra {NS_MTIME_EXTRA}",
        "set_inode_field hello atime_extra 4",
        "ea_set hello user.color red",
        "ea_set hello trusted.t 0123456789abcdef",
        'ea_set hello user.empty ""',
        f"ea_set -f {workdir / 'bigval'} hello user.big",
        "ea_set dir security.selinux system_u:object_r:tmp_t",
        "mkdir many",
    ]
    hello = workdir / "hello.txt"
    cmds += [f"write {hello} many/file-with-a-long-name-{i:04d}" for i in range(120)]
    debugfs_w(img, cmds, workdir)


@dataclass
class Image:
    """Read-only view of an image file through the codecs under test."""

    path: Path
    data: bytes
    sb: Superblock
    groups: list[GroupDesc]

    @classmethod
    def open(cls, path: Path) -> Image:
        data = path.read_bytes()
        sb = Superblock.parse_checked(data[SUPERBLOCK_OFFSET : SUPERBLOCK_OFFSET + 1024])
        bs = sb.block_size
        gdt = sb.gdt_first_block * bs
        groups = parse_table(data[gdt:], sb.group_count, sb.group_desc_size)
        return cls(path, data, sb, groups)

    @property
    def bs(self) -> int:
        return self.sb.block_size

    def block(self, n: int) -> bytes:
        return self.data[n * self.bs : (n + 1) * self.bs]

    def inode_offset(self, ino: int) -> int:
        g = self.groups[self.sb.group_of_inode(ino)]
        return g.inode_table * self.bs + self.sb.inode_index_in_group(ino) * self.sb.inode_size

    def inode_raw(self, ino: int) -> bytes:
        off = self.inode_offset(ino)
        return self.data[off : off + self.sb.inode_size]

    def inode(self, ino: int) -> Inode:
        return Inode.parse(self.inode_raw(ino))

    def extents(self, ino: int) -> list:
        """All leaf extents of an extent-mapped inode, walking any depth."""
        out: list = []

        def walk(node: ExtentNode) -> None:
            if node.is_leaf:
                out.extend(node.entries)
            else:
                for ix in node.entries:
                    walk(ExtentNode.parse(self.block(ix.child)))

        walk(ExtentNode.parse(self.inode(ino).i_block))
        return out

    def file_blocks(self, ino: int) -> list[bytes]:
        blocks = []
        for e in self.extents(ino):
            blocks += [self.block(e.physical + i) for i in range(e.length)]
        return blocks

    def dir_entries(self, ino: int) -> list[dirent.DirRecord]:
        return [r for b in self.file_blocks(ino) for r in dirent.live_entries(b)]

    def lookup(self, path: str) -> int:
        ino = 2
        for part in path.strip("/").split("/"):
            recs = [r for r in self.dir_entries(ino) if r.name == part.encode()]
            assert recs, f"{part} not found"
            ino = recs[0].inode
        return ino


def debugfs_stat(img: Path, spec: str) -> dict[str, str]:
    """Selected fields of `debugfs -R 'stat SPEC'` (spec: a path or <ino>)."""
    out = debugfs_r(img, f"stat {spec}")
    f: dict[str, str] = {}
    pats = {
        "mode": r"Mode:\s+(\d+)",
        "flags": r"Flags:\s+(0x[0-9a-f]+)",
        "generation": r"Generation:\s+(\d+)",
        "user": r"User:\s+(\d+)",
        "group": r"Group:\s+(\d+)",
        "size": r"Size:\s+(\d+)",
        "file_acl": r"File ACL:\s+(\d+)",
        "links": r"Links:\s+(\d+)",
        "blockcount": r"Blockcount:\s+(\d+)",
        "ctime": r" ctime:\s+(0x[0-9a-f]+(?::[0-9a-f]+)?)",
        "atime": r" atime:\s+(0x[0-9a-f]+(?::[0-9a-f]+)?)",
        "mtime": r" mtime:\s+(0x[0-9a-f]+(?::[0-9a-f]+)?)",
        "crtime": r"crtime:\s+(0x[0-9a-f]+(?::[0-9a-f]+)?)",
        "extra_isize": r"Size of extra inode fields:\s+(\d+)",
        "fast_link": r'Fast link dest:\s+"([^"]*)"',
        "device": r"Device major/minor number:\s+(\d+:\d+)",
    }
    for k, p in pats.items():
        m = re.search(p, out)
        if m:
            f[k] = m.group(1)
    f["_raw"] = out
    return f


@pytest.fixture(scope="session", params=[4096, 1024], ids=["4k", "1k"])
def populated(request, tmp_path_factory) -> Image:
    """A populated image per block size (built once per session)."""
    bs = request.param
    d = tmp_path_factory.mktemp(f"format{bs}")
    img = mkfs(d / "img", bs)
    populate(img, d, bs)
    return Image.open(img)


@pytest.fixture(scope="session")
def htree_image(tmp_path_factory) -> tuple[Image, int]:
    """A 1 KiB-block image with a two-level htree directory, indexed by e2fsck -D."""
    d = tmp_path_factory.mktemp("htree")
    img = mkfs(d / "h.img", 1024, "32M")
    (d / "f").write_bytes(b"x")
    cmds = ["mkdir big", "cd big", f"write {d / 'f'} f"]
    for i in range(6000):
        if i % 30 == 0:
            cmds.append("expand .")
        cmds.append(f"ln f entry-number-{i:05d}")
    debugfs_w(img, cmds, d)
    run(E2FSCK, "-fyD", img, check=False)  # exits 1: "file system modified"
    rc, out = fsck(img)
    assert rc == 0, out
    image = Image.open(img)
    return image, image.lookup("big")


def test_populated_image_is_fsck_clean(populated: Image) -> None:
    """The fixture itself is sound: e2fsck sees nothing wrong with it."""
    rc, out = fsck(populated.path)
    assert rc == 0, out


def test_reader_finds_files(populated: Image) -> None:
    """The reader's path walk agrees with debugfs on inode numbers."""
    for path in ("hello", "dir/inner", "many/file-with-a-long-name-0119"):
        out = debugfs_r(populated.path, f"stat {path}")
        assert f"Inode: {populated.lookup(path)} " in out
