"""Mount and unmount: validate an image, start the superblock and block-group actors.

``mount(device, read_only=False, supervisor=...)`` reads the primary superblock and group
descriptor table through the device client, refuses what chanos cannot handle safely, and
returns a ``Volume``: the actor addresses (superblock, one actor per block group), the
geometry, and the allocation policy. ``Volume.unmount()`` writes everything back, restores
the clean state and flushes the device.

Refusals (``MountError``, an OSError with a clear message):
- not ext2/3/4 (bad magic), impossible geometry, descriptors pointing outside the volume
  or onto each other, an image shorter than the file system: EINVAL. A hostile image gets
  one of these, never a crash or a hang (every quantity that sizes a loop or a read is
  bounded by the device size first).
- unknown incompat features, named: EOPNOTSUPP.
- a journal that needs recovery (``needs_recovery`` flag, or a jbd2 superblock with a
  non-zero log start): EUCLEAN, "run e2fsck"; an unreadable journal superblock: EINVAL.
Unknown ro_compat features (e.g. metadata_csum for now), or a read-only device, give a
read-only mount; ``Volume.read_only_reason`` says why.
"""

from __future__ import annotations

import errno
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chanos.fs import group_protocol as gp
from chanos.fs import superblock_protocol as sp
from chanos.fs.allocator import Allocator
from chanos.fs.block_group import (
    ITABLE_CACHE_BYTES,
    ITABLE_CACHE_TOTAL,
    BlockGroup,
    BlockGroupActor,
    GroupLayout,
)
from chanos.fs.format import features as F
from chanos.fs.format._record import CorruptError
from chanos.fs.format.extent import MAX_DEPTH, ROOT_SIZE, ExtentNode
from chanos.fs.format.group_desc import GroupDesc, parse_table
from chanos.fs.format.inode import Inode
from chanos.fs.format.journal import JournalSuperblock, needs_recovery
from chanos.fs.format.superblock import (
    STATE_ERROR,
    STATE_VALID,
    SUPERBLOCK_OFFSET,
    GroupArithmetic,
    Superblock,
)
from chanos.fs.superblock import SuperblockActor, SuperblockState
from chanos.personality import PERMANENT, ChildSpec, call
from chanos.personality.syscalls import FsStat

log = logging.getLogger(__name__)

MIN_BLOCKS_PER_GROUP = 256  # mke2fs's lower bound; also bounds the number of groups


class MountError(OSError):
    """The image cannot be mounted (or not as asked); the message says why."""


@dataclass(frozen=True, slots=True)
class Geometry(GroupArithmetic):
    """The numbers every layer needs, fixed for the life of a mount."""

    block_size: int
    blocks_count: int
    first_data_block: int
    blocks_per_group: int
    inodes_per_group: int
    inodes_count: int
    inode_size: int
    group_count: int
    first_ino: int
    desc_size: int
    reserved_blocks: int
    feature_compat: int
    feature_incompat: int
    feature_ro_compat: int
    journal_inum: int
    log_groups_per_flex: int


@dataclass(slots=True)
class Checked:
    """What ``examine`` found: a validated superblock, descriptors and group layouts."""

    sb: Superblock
    descs: list[GroupDesc]
    gdt_raw: bytes
    geometry: Geometry
    layouts: list[GroupLayout]
    read_only_reason: str | None


def _bad(msg: str) -> MountError:
    return MountError(errno.EINVAL, f"cannot mount: {msg}")


async def examine(device: Any, *, read_only: bool = False) -> Checked:
    """Read and validate the superblock and descriptor table; no actor, no write."""
    info = await device.info()
    dev_size = info.size
    if dev_size < SUPERBLOCK_OFFSET + Superblock.SIZE:
        raise _bad(f"device of {dev_size} bytes is too small for an ext2/3/4 file system")
    raw = await device.read(SUPERBLOCK_OFFSET, Superblock.SIZE)
    sb = Superblock.parse(raw)
    if sb.magic != 0xEF53:
        raise _bad(f"bad superblock magic {sb.magic:#06x}: not an ext2/3/4 file system")
    try:
        sb.validate()
    except CorruptError as e:
        raise _bad(f"corrupt superblock: {e.strerror}") from None

    # Features first: an unknown incompat feature may change what the geometry means.
    fc = F.check(sb)
    if fc.unsupported_incompat:
        raise MountError(
            errno.EOPNOTSUPP,
            "cannot mount: unsupported incompat features: " + ", ".join(fc.unsupported_incompat),
        )
    if fc.needs_recovery:
        raise MountError(
            errno.EUCLEAN,
            "cannot mount: the journal needs recovery (needs_recovery is set); "
            "run e2fsck to replay it first",
        )
    reason = None
    if fc.unsupported_ro_compat:
        reason = "unsupported ro_compat features: " + ", ".join(fc.unsupported_ro_compat)
    elif info.read_only and not read_only:
        reason = "the device is read-only"

    bs = sb.block_size
    blocks = sb.blocks_count
    if blocks * bs > dev_size:
        raise _bad(
            f"the file system has {blocks} blocks of {bs} bytes but the device holds "
            f"only {dev_size // bs}"
        )
    if sb.first_data_block != (1 if bs == 1024 else 0):
        raise _bad(f"first data block {sb.first_data_block} with {bs}-byte blocks")
    if sb.blocks_per_group < MIN_BLOCKS_PER_GROUP or sb.blocks_per_group % 8:
        raise _bad(f"{sb.blocks_per_group} blocks per group")
    if not fc.unsupported_ro_compat and sb.clusters_per_group != sb.blocks_per_group:
        raise _bad("clusters per group differ from blocks per group without bigalloc")
    if sb.inodes_per_group % 8:
        raise _bad(f"{sb.inodes_per_group} inodes per group (not a multiple of 8)")
    if not sb.first_inode < sb.inodes_count or sb.inodes_count < 11:
        raise _bad(f"first inode {sb.first_inode} of {sb.inodes_count}")
    if sb.r_blocks_count > blocks:
        raise _bad(f"{sb.r_blocks_count} reserved blocks of {blocks}")
    if sb.reserved_gdt_blocks > bs // 4:
        raise _bad(f"{sb.reserved_gdt_blocks} reserved GDT blocks")
    ngroups = sb.group_count
    gdt_blocks = sb.gdt_blocks
    if sb.first_data_block + 1 + gdt_blocks + sb.reserved_gdt_blocks > min(
        blocks, sb.blocks_per_group
    ):
        raise _bad(f"descriptor table of {gdt_blocks} blocks does not fit in group 0")

    gdt_raw = await device.read(sb.gdt_first_block * bs, gdt_blocks * bs)
    try:
        descs = parse_table(gdt_raw, ngroups, sb.group_desc_size)
    except CorruptError as e:
        raise _bad(f"corrupt group descriptor table: {e.strerror}") from None
    layouts = _layouts(sb, descs)

    if sb.has_compat(F.COMPAT_HAS_JOURNAL) and sb.journal_inum:
        await _check_journal(device, sb, layouts)

    geo = Geometry(
        block_size=bs,
        blocks_count=blocks,
        first_data_block=sb.first_data_block,
        blocks_per_group=sb.blocks_per_group,
        inodes_per_group=sb.inodes_per_group,
        inodes_count=sb.inodes_count,
        inode_size=sb.inode_size_bytes,
        group_count=ngroups,
        first_ino=sb.first_inode,
        desc_size=sb.group_desc_size,
        reserved_blocks=sb.r_blocks_count,
        feature_compat=sb.feature_compat,
        feature_incompat=sb.feature_incompat,
        feature_ro_compat=sb.feature_ro_compat,
        journal_inum=sb.journal_inum if sb.has_compat(F.COMPAT_HAS_JOURNAL) else 0,
        log_groups_per_flex=sb.log_groups_per_flex,
    )
    return Checked(sb, descs, gdt_raw, geo, layouts, reason)


async def _check_journal(device: Any, sb: Superblock, layouts: Sequence[GroupLayout]) -> None:
    """Refuse a journal whose superblock says it holds transactions (s_start != 0)."""
    ino = sb.journal_inum
    if not 1 <= ino < sb.first_inode:
        raise _bad(f"journal inode {ino} is not a reserved inode")
    bs = sb.block_size
    lay = layouts[sb.group_of_inode(ino)]
    byte = sb.inode_index_in_group(ino) * lay.inode_size
    raw = await device.read(lay.inode_table * bs + byte, lay.inode_size)
    try:
        inode = Inode.parse(raw)
        block = await _first_block(device, sb, inode)
        if not sb.first_data_block <= block < sb.blocks_count:
            raise CorruptError(f"journal starts at block {block}, outside the volume")
        jsb = JournalSuperblock.parse_checked(await device.read(block * bs, 1024))
    except CorruptError as e:
        raise _bad(f"the journal is unreadable: {e.strerror}") from None
    if needs_recovery(sb.feature_incompat, jsb):
        raise MountError(
            errno.EUCLEAN,
            "cannot mount: the journal needs recovery (it holds transactions from "
            f"sequence {jsb.sequence}); run e2fsck to replay it first",
        )


async def _first_block(device: Any, sb: Superblock, inode: Inode) -> int:
    """Physical block of logical block 0 of an extent-mapped or block-mapped inode."""
    if not inode.uses_extents:
        return int.from_bytes(inode.i_block[0:4], "little")
    node = ExtentNode.parse(inode.i_block, ROOT_SIZE)
    for _ in range(MAX_DEPTH + 1):
        if not node.entries or node.entries[0].logical != 0:
            break
        if node.is_leaf:
            return node.entries[0].physical
        child = node.entries[0].child
        if not sb.first_data_block <= child < sb.blocks_count:
            break
        node = ExtentNode.parse(await device.read(child * sb.block_size, sb.block_size))
    raise CorruptError("no block mapped at the start of the journal")


def _layouts(sb: Superblock, descs: Sequence[GroupDesc]) -> list[GroupLayout]:
    """Group layouts, after checking that no metadata lies outside the volume or overlaps."""
    blocks = sb.blocks_count
    itb = sb.inode_table_blocks
    flex = sb.has_incompat(F.INCOMPAT_FLEX_BG)
    # (start, count, what) for every piece of metadata.
    meta: list[tuple[int, int, str]] = []
    for g in range(len(descs)):
        n = sb.group_super_overhead(g)
        if n:
            meta.append((sb.group_first_block(g), n, f"group {g} superblock/descriptors"))
    for g, d in enumerate(descs):
        first = sb.group_first_block(g)
        end = first + sb.group_blocks(g)
        for start, count, what in (
            (d.block_bitmap, 1, "block bitmap"),
            (d.inode_bitmap, 1, "inode bitmap"),
            (d.inode_table, itb, "inode table"),
        ):
            if not sb.first_data_block <= start or start + count > blocks:
                raise _bad(f"group {g} {what} at block {start} is outside the volume")
            if not flex and not (first <= start and start + count <= end):
                raise _bad(f"group {g} {what} at block {start} is outside its group")
            meta.append((start, count, f"group {g} {what}"))
    meta.sort()
    for (s1, c1, w1), (s2, _c2, w2) in itertools.pairwise(meta):
        if s2 < s1 + c1:
            raise _bad(f"{w2} at block {s2} overlaps {w1}")
    # Assign each metadata run to the group(s) it lies in.
    protected: list[list[tuple[int, int]]] = [[] for _ in descs]
    for start, count, _ in meta:
        while count:
            g = sb.group_of_block(start)
            end = min(start + count, sb.group_first_block(g + 1))
            protected[g].append((start, end - start))
            count -= end - start
            start = end
    return [
        GroupLayout(
            index=g,
            first_block=sb.group_first_block(g),
            nblocks=sb.group_blocks(g),
            block_bitmap=d.block_bitmap,
            inode_bitmap=d.inode_bitmap,
            inode_table=d.inode_table,
            block_size=sb.block_size,
            inodes_per_group=sb.inodes_per_group,
            inode_size=sb.inode_size_bytes,
            first_ino=sb.first_inode,
            flags=d.flags,
            protected=tuple(protected[g]),
        )
        for g, d in enumerate(descs)
    ]


class Volume:
    """A mounted volume: actor addresses, geometry, allocation policy.

    Stateless apart from immutable mount-time facts, so it can be shared by every vnode
    actor: each method is one message (or a few) to the owning actor.
    """

    def __init__(
        self,
        device: Any,
        checked: Checked,
        superblock: Any,
        groups: Sequence[Any],
        read_only: bool,
    ) -> None:
        self.device = device
        self.geometry = checked.geometry
        self.sb = checked.sb  # the superblock as read at mount (for hash seed, flags, ...)
        self.read_only = read_only
        self.read_only_reason = checked.read_only_reason
        self.superblock = superblock
        self.groups = tuple(groups)
        self.allocator = Allocator(self)
        self.mounted = True

    # -- inode records ---------------------------------------------------------------------

    def _group_ref_of_inode(self, ino: int) -> Any:
        if not 1 <= ino <= self.geometry.inodes_count:
            raise OSError(errno.EUCLEAN, f"inode number {ino} out of range")
        return self.groups[self.geometry.group_of_inode(ino)]

    async def read_inode(self, ino: int) -> bytes:
        return await call(self._group_ref_of_inode(ino), gp.ReadInode(ino))

    async def read_inodes(self, inos: Sequence[int]) -> list[bytes | OSError]:
        """The records of ``inos``, in order, one ``ReadInodes`` per group they fall in;
        an inode that cannot be read has the error in its place, the others still come.
        """
        out: list[bytes | OSError] = [b""] * len(inos)
        by_group: dict[Any, list[int]] = {}
        for i, ino in enumerate(inos):
            try:
                by_group.setdefault(self._group_ref_of_inode(ino), []).append(i)
            except OSError as exc:
                out[i] = exc
        for group, places in by_group.items():
            try:
                raws = await call(group, gp.ReadInodes(tuple(inos[i] for i in places)))
            except OSError:
                # One unreadable table block must not cost the others their records.
                for i in places:
                    try:
                        out[i] = await self.read_inode(inos[i])
                    except OSError as exc:
                        out[i] = exc
                continue
            for i, raw in zip(places, raws, strict=True):
                out[i] = raw
        return out

    async def write_inode(self, ino: int, raw: bytes) -> None:
        await call(self._group_ref_of_inode(ino), gp.WriteInode(ino, raw))

    async def alloc_inode(self, parent: int, is_dir: bool) -> int:
        return await self.allocator.alloc_inode(parent, is_dir)

    async def free_inode(self, ino: int, is_dir: bool) -> None:
        await self.allocator.free_inode(ino, is_dir)

    # -- superblock ------------------------------------------------------------------------

    async def statfs(self) -> FsStat:
        """Exact: every group's counts are brought to the superblock first."""
        await self.collect_counts()
        return await call(self.superblock, sp.StatFs())

    async def collect_counts(self) -> None:
        """Have every group send the superblock its exact counts (a group reports changes
        only past a slack; see ``BlockGroupActor._report``)."""
        for ref in self.groups:
            await call(ref, gp.GetCounts())

    async def get_last_orphan(self) -> int:
        return await call(self.superblock, sp.GetLastOrphan())

    async def set_last_orphan(self, ino: int) -> None:
        await call(self.superblock, sp.SetLastOrphan(ino))

    async def sync(self) -> None:
        """Groups first (each re-reports its exact counts), then superblock + GDT, flush."""
        if self.read_only:
            return
        for ref in self.groups:
            await call(ref, gp.Sync())
        await call(self.superblock, sp.Sync())
        await self.device.flush()

    async def unmount(self) -> None:
        """Write everything back, restore the clean state, flush, stop the actors."""
        if not self.mounted:
            return
        if not self.read_only:
            for ref in self.groups:
                await call(ref, gp.Sync())
            await call(self.superblock, sp.Unmount())
            await self.device.flush()
        for ref in self.groups:
            await ref.stop()
        await self.superblock.stop()
        self.mounted = False


async def mount(
    device: Any,
    read_only: bool = False,
    *,
    supervisor: Any,
    write_through: bool = False,
) -> Volume:
    """Validate the image behind ``device`` and start its actors under ``supervisor``.

    ``write_through``: write every bitmap change before replying (default: bitmaps are
    written back by ``Volume.sync``/``unmount``, as a kernel's buffer cache would).
    """
    checked = await examine(device, read_only=read_only)
    if checked.read_only_reason and not read_only:
        log.warning("mounting read-only: %s", checked.read_only_reason)
        read_only = True
    sb = checked.sb
    if not sb.state & STATE_VALID or sb.state & STATE_ERROR:
        log.warning("mounting a file system that was not cleanly unmounted or has errors")
    st = SuperblockState(
        sb.copy(),
        [d.copy() for d in checked.descs],
        checked.gdt_raw,
        device,
        read_only=read_only,
        mount_state=sb.state,
    )
    if not read_only:
        await st.mark_mounted()
        await device.flush()

    sb_ref = await supervisor.start(
        ChildSpec(name="superblock", factory=lambda: SuperblockActor(st), restart=PERMANENT)
    )
    refs = []
    itable_cache = min(ITABLE_CACHE_BYTES, ITABLE_CACHE_TOTAL // max(len(checked.layouts), 1))
    for lay, d in zip(checked.layouts, checked.descs, strict=True):
        group = BlockGroup(
            lay,
            device,
            used_dirs=d.used_dirs_count,
            read_only=read_only,
            write_through=write_through,
            itable_cache_bytes=itable_cache,
        )
        refs.append(
            await supervisor.start(
                ChildSpec(
                    name=f"group-{lay.index}",
                    factory=_group_factory(group, sb_ref),
                    restart=PERMANENT,
                )
            )
        )
    return Volume(device, checked, sb_ref, refs, read_only)


def _group_factory(group: BlockGroup, sb_ref: Any) -> Any:
    def make() -> BlockGroupActor:
        return BlockGroupActor(group, superblock=sb_ref)

    return make
