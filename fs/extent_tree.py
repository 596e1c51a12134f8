"""The extent tree of one inode: logical -> physical block mapping for extent-mapped files.

Owns the in-memory image of one inode's ext4 extent tree: the root node that lives in the
inode's 60-byte ``i_block`` (at most 4 entries) and the tree blocks below it, any depth.
It maps logical ranges (with holes), inserts mappings (merging with a physically contiguous
neighbour), splits full nodes and grows the depth, removes ranges (truncate, punch hole)
freeing data and emptied tree blocks and shrinking the depth again, and keeps every index
key equal to the first logical block of its child, as e2fsck checks.

The tree is owned by exactly one vnode actor; nobody else touches it, so there is no
locking. Tree blocks are cached in memory once read; modified ones are written back by
``flush()``. A freed tree block is dropped from the cache and from the dirty set so that a
later flush never overwrites a block that has been reused for data.

Block I/O and allocation go through two small async interfaces passed in by the vnode (see
``BlockStore`` and ``BlockAllocator``), so the tree is unit-tested with in-memory fakes.
"""

from __future__ import annotations

import errno
import struct
from bisect import bisect_right
from typing import NamedTuple, Protocol

from chanos.fs.format import extent as fmt

# Longest extent the format can express: initialized extents store up to 32768 blocks,
# unwritten ones up to 32767 (ee_len above 32768 marks an unwritten extent).
MAX_INIT_LEN = fmt.MAX_INIT_LEN
MAX_UNWRITTEN_LEN = fmt.MAX_UNWRITTEN_LEN
# Logical block numbers are 32 bits, but as in the kernel (EXT_MAX_BLOCKS) and e2fsck the
# last number is not used: mappings end at or before LBLK_LIMIT, so the largest file is
# (2**32 - 1) blocks. Removal sweeps the whole 32-bit space.
LBLK_LIMIT = (1 << 32) - 1
_LBLK_SPACE = 1 << 32
# The root in i_block: 60 bytes = a 12-byte header and four 12-byte entries.
ROOT_CAPACITY = fmt.max_entries(fmt.ROOT_SIZE)
# The kernel refuses extent trees deeper than this.
MAX_DEPTH = fmt.MAX_DEPTH


# ----- node codec adapter ----------------------------------------------------------------
# The tree keeps entries as plain tuples (cheap to slice, compare and rebuild); the
# on-disk codec is chanos.fs.format.extent.


def _node_capacity(block_size: int) -> int:
    """Entries in one tree block (the header takes 12 bytes, each entry 12)."""
    return fmt.max_entries(block_size)


def _decode_node(raw: bytes, *, in_inode: bool) -> tuple[int, int, list[tuple]]:
    """(depth, eh_max, entries) of a node; raises OSError(EIO) when malformed."""
    if in_inode and len(raw) >= fmt.ROOT_SIZE:
        magic, count, emax, depth, _gen = _HDR.unpack_from(raw)
        if magic == fmt.MAGIC and count == 0 and depth == 0 and 2 <= emax <= ROOT_CAPACITY:
            # An empty root (every new file's): nothing else to check or decode.
            return 0, emax, []
    node = fmt.ExtentNode.parse(raw, fmt.ROOT_SIZE if in_inode else None)
    if node.depth == 0:
        return 0, node.max, [(e.logical, e.physical, e.length, e.unwritten) for e in node.entries]
    return node.depth, node.max, [(ix.logical, ix.child) for ix in node.entries]


_ROOT_PAD = bytes(fmt.ROOT_SIZE)
# The on-disk layouts of a node header, a leaf entry and an index entry (as the codec's).
_HDR = struct.Struct("<HHHHI")
_LEAF = struct.Struct("<IHHI")
_IDX = struct.Struct("<IIHH")


def _encode_root(depth: int, entries: list[tuple]) -> bytes:
    """The 60 bytes of the root node: packed straight from the tuples (the root is encoded
    on every save that changed the mapping, so it skips the codec's node objects).
    Unused slots are zero, eh_max 4 and the generation 0, as ``_encode_node`` makes them."""
    n = len(entries)
    if n > ROOT_CAPACITY:
        raise ValueError(f"{n} extent entries > max {ROOT_CAPACITY}")
    out = bytearray(_ROOT_PAD)
    _HDR.pack_into(out, 0, fmt.MAGIC, n, ROOT_CAPACITY, depth, 0)
    off = fmt.HEADER_SIZE
    if depth == 0:
        for lb, p, ln, u in entries:
            if p > fmt.MAX_PHYSICAL or lb + ln - 1 > fmt.MAX_LOGICAL:
                raise ValueError(f"extent out of range: {lb}+{ln} at {p}")
            if u:
                if not 0 < ln <= MAX_UNWRITTEN_LEN:
                    raise ValueError(f"bad unwritten extent length {ln}")
                ln += MAX_INIT_LEN
            elif not 0 < ln <= MAX_INIT_LEN:
                raise ValueError(f"bad extent length {ln}")
            _LEAF.pack_into(out, off, lb, ln, p >> 32, p & 0xFFFFFFFF)
            off += fmt.ENTRY_SIZE
    else:
        for lb, c in entries:
            _IDX.pack_into(out, off, lb, c & 0xFFFFFFFF, c >> 32, 0)
            off += fmt.ENTRY_SIZE
    return bytes(out)


def _encode_node(depth: int, emax: int, entries: list[tuple], *, in_inode: bool) -> bytes:
    """The bytes of a node: 60 for the root, header + ``emax`` slots for a tree block."""
    size = fmt.ROOT_SIZE if in_inode else fmt.HEADER_SIZE + emax * fmt.ENTRY_SIZE
    if depth == 0:
        ents: list = [fmt.Extent(lb, n, p, u) for lb, p, n, u in entries]
    else:
        ents = [fmt.ExtentIndex(lb, c) for lb, c in entries]
    return fmt.ExtentNode(depth, ents, size, emax).build()


_EMPTY_ROOT = _encode_node(0, ROOT_CAPACITY, [], in_inode=True)


def root_runs(i_block: bytes, blocks_count: int) -> list[tuple[int, int]] | None:
    """The physical runs ``(start, count)`` of a file whose extents all sit in its inode
    (a root of depth 0), unwritten ones included: what freeing the whole file gives back,
    without building the tree. None when the tree is deeper, or when anything is out of
    the ordinary (a malformed root, an extent outside the volume): the tree then frees
    the file, and reports what is wrong."""
    try:
        depth, _emax, entries = _decode_node(bytes(i_block[:60]), in_inode=True)
    except OSError:
        return None
    if depth or any(p == 0 or p + n > blocks_count for _lb, p, n, _u in entries):
        return None
    return [(p, n) for _lb, p, n, _u in entries]


class BlockStore(Protocol):
    """Block I/O of the device the inode lives on (block numbers in file-system blocks).
    ``read_blocks`` may answer a read-only memoryview (the drivers do): never mutate it."""

    async def read_blocks(self, start: int, count: int) -> bytes | memoryview: ...

    async def write_blocks(self, start: int, data: bytes | bytearray | memoryview) -> None: ...


class BlockAllocator(Protocol):
    """Block allocation for one inode (the vnode supplies the policy)."""

    async def allocate(self, goal: int, count: int) -> tuple[int, int]: ...

    async def free(self, start: int, count: int) -> None: ...


class Run(NamedTuple):
    """A piece of a logical range: mapped (``physical`` set) or a hole (``physical`` None)."""

    logical: int
    physical: int | None
    length: int
    unwritten: bool = False


class _Node:
    """One node of the tree: the root (``block`` None) or a tree block.

    Leaf entries are ``(lblk, pblk, length, unwritten)`` tuples; index entries are
    ``(lblk, child_block)`` tuples. Both are kept sorted by ``lblk``.
    """

    __slots__ = ("block", "capacity", "depth", "dirty", "entries")

    def __init__(self, block: int | None, depth: int, capacity: int, entries: list) -> None:
        self.block = block
        self.depth = depth
        self.capacity = capacity
        self.entries = entries
        self.dirty = False


def _key(entry: tuple) -> int:
    return entry[0]


def _map_leaf(ents: list[tuple], i: int, pos: int, end: int, runs: list[Run]) -> tuple[int, bool]:
    """Append to ``runs`` the runs of the sorted leaf entries ``ents[i:]`` (the first of
    them ends after ``pos``) up to ``end``, holes between them included. Returns the
    position reached and whether a following leaf may hold more of the range."""
    for k in range(i, len(ents)):
        s, p, n, u = ents[k]
        if s >= end:
            return pos, False
        if s > pos:
            runs.append(Run(pos, None, s - pos))
            pos = s
        stop = min(s + n, end)
        runs.append(Run(pos, p + (pos - s), stop - pos, u))
        pos = stop
        if pos >= end:
            return pos, False
    return pos, True


def _corrupt(what: str) -> OSError:
    return OSError(errno.EIO, f"corrupt extent tree: {what}")


class ExtentTree:
    """The extent tree of one inode.

    ``i_block`` is the inode's 60-byte block array holding the root node. After a
    modification ``root_dirty`` is True and ``i_block`` gives the bytes to store back into
    the inode; the vnode clears ``root_dirty`` once it has done so.
    """

    def __init__(
        self,
        i_block: bytes,
        store: BlockStore,
        allocator: BlockAllocator,
        block_size: int,
        *,
        goal: int = 0,
        blocks_count: int | None = None,
    ) -> None:
        """``blocks_count``: size of the file system in blocks; when given, every block a
        node points at (child or extent) must lie inside it, else the tree is EIO."""
        self._limit = blocks_count
        depth, _max, entries = _decode_node(bytes(i_block[:60]), in_inode=True)
        if depth > MAX_DEPTH:
            raise _corrupt(f"root depth {depth}")
        self._check_entries(depth, entries, "root")
        self._root = _Node(None, depth, ROOT_CAPACITY, entries)
        self._store = store
        self._alloc = allocator
        self.block_size = block_size
        self.node_capacity = _node_capacity(block_size)
        self._cache: dict[int, _Node] = {}
        # The modified tree blocks (by block number): a flush writes these and looks at
        # nothing else, however many nodes of a large file are cached.
        self._dirty: dict[int, _Node] = {}
        # Where new blocks go when the file has no mapped neighbour: near the inode.
        self.goal = goal
        self.root_dirty = False

    @staticmethod
    def empty_root() -> bytes:
        """The ``i_block`` of a new, empty extent-mapped inode (immutable bytes, encoded
        once: every create stores it)."""
        return _EMPTY_ROOT

    # ----- node access --------------------------------------------------------------------

    @property
    def i_block(self) -> bytes:
        r = self._root
        return _encode_root(r.depth, r.entries)

    @property
    def depth(self) -> int:
        return self._root.depth

    async def _child(self, block: int, depth: int) -> _Node:
        node = self._cache.get(block)
        if node is not None:
            return node
        raw = await self._store.read_blocks(block, 1)
        try:
            d, emax, entries = _decode_node(raw, in_inode=False)
        except OSError as e:
            raise _corrupt(f"block {block}: {e.strerror}") from None
        if d != depth:
            raise _corrupt(f"block {block} has depth {d}, expected {depth}")
        if emax > self.node_capacity or emax < 1:
            raise _corrupt(f"block {block} eh_max {emax}")
        if not entries:
            raise _corrupt(f"empty tree block {block}")
        self._check_entries(depth, entries, f"block {block}")
        node = _Node(block, depth, emax, entries)
        self._cache[block] = node
        return node

    def _check_entries(self, depth: int, entries: list[tuple], where: str) -> None:
        limit = self._limit
        if limit is None:
            return
        if depth == 0:
            for e in entries:
                if e[1] == 0 or e[1] + e[2] > limit:
                    raise _corrupt(f"{where}: extent {e[0]}+{e[2]} at block {e[1]} out of range")
        else:
            for e in entries:
                if e[1] == 0 or e[1] >= limit:
                    raise _corrupt(f"{where}: child block {e[1]} out of range")

    def _mark(self, node: _Node) -> None:
        if node.block is None:
            self.root_dirty = True
        else:
            node.dirty = True
            self._dirty[node.block] = node

    @property
    def blocks_dirty(self) -> bool:
        """Whether a tree block waits to be written back (``flush``)."""
        return bool(self._dirty)

    async def flush(self) -> None:
        """Write every modified tree block back through the BlockStore."""
        while self._dirty:
            _blk, node = self._dirty.popitem()
            if node.dirty:
                data = _encode_node(node.depth, node.capacity, node.entries, in_inode=False)
                if len(data) < self.block_size:
                    data = data + bytes(self.block_size - len(data))
                node.dirty = False
                try:
                    await self._store.write_blocks(node.block, data)
                except BaseException:
                    node.dirty = True  # still to be written
                    self._dirty[node.block] = node
                    raise

    async def _descend(self, lblk: int) -> list[list]:
        """Path ``[[node, idx], ...]`` from the root to the leaf whose range holds lblk.

        At index levels idx is the chosen child; at the leaf it is the position of the
        last extent starting at or before lblk (-1 if none).
        """
        path: list[list] = []
        node = self._root
        while True:
            i = bisect_right(node.entries, lblk, key=_key) - 1
            if node.depth == 0:
                path.append([node, i])
                return path
            if not node.entries:
                raise _corrupt("empty index node")
            i = max(i, 0)
            path.append([node, i])
            node = await self._child(node.entries[i][1], node.depth - 1)

    async def _next_leaf(self, path: list[list]) -> bool:
        """Move path to the leftmost leaf after its current leaf; False at the end."""
        level = len(path) - 2
        while level >= 0 and path[level][1] + 1 >= len(path[level][0].entries):
            level -= 1
        if level < 0:
            return False
        path[level][1] += 1
        del path[level + 1 :]
        node = path[level][0]
        while node.depth > 0:
            child = await self._child(node.entries[path[-1][1]][1], node.depth - 1)
            path.append([child, 0])
            node = child
        path[-1][1] = 0
        return True

    async def _first_overlap(self, lblk: int) -> tuple[list[list], int] | None:
        """Path and leaf position of the first extent ending after lblk, or None."""
        path = await self._descend(lblk)
        leaf, i = path[-1]
        if i < 0 or leaf.entries[i][0] + leaf.entries[i][2] <= lblk:
            i += 1
        while i >= len(leaf.entries):
            if not await self._next_leaf(path):
                return None
            leaf = path[-1][0]
            i = 0
        path[-1][1] = i
        return path, i

    # ----- queries ------------------------------------------------------------------------

    async def map(self, lblk: int, count: int) -> list[Run]:
        """Mapping of logical blocks [lblk, lblk+count): runs in order, holes included."""
        end = lblk + count
        runs: list[Run] = []
        pos = lblk
        root = self._root
        if root.depth == 0:
            # The whole tree is the root (files of up to four extents): no path to build.
            ents = root.entries
            i = bisect_right(ents, lblk, key=_key) - 1
            if i < 0 or ents[i][0] + ents[i][2] <= lblk:
                i += 1
            pos, _more = _map_leaf(ents, i, pos, end, runs)
        else:
            found = await self._first_overlap(lblk)
            if found is not None:
                path, i = found
                while True:
                    pos, more = _map_leaf(path[-1][0].entries, i, pos, end, runs)
                    if not more or not await self._next_leaf(path):
                        break
                    i = 0
        if pos < end:
            runs.append(Run(pos, None, end - pos))
        return runs

    async def lookup(self, lblk: int) -> int | None:
        """Physical block of logical block lblk (None for a hole; unwritten counts as mapped)."""
        path = await self._descend(lblk)
        leaf, i = path[-1]
        if i >= 0:
            s, p, n, _u = leaf.entries[i]
            if lblk < s + n:
                return p + (lblk - s)
        return None

    async def goal_for(self, lblk: int) -> int:
        """Where to allocate logical block lblk: right after the extent before it, else near
        the extent after it, else the inode's goal (as the kernel's ext4_ext_find_goal)."""
        path = await self._descend(lblk)
        leaf, i = path[-1]
        if i >= 0:
            s, p, _n, _u = leaf.entries[i]
            return p + (lblk - s)
        if leaf.entries:
            s, p, _n, _u = leaf.entries[0]
            return max(p - (s - lblk), 1) if p > s - lblk else p
        return self.goal

    async def extents(self) -> list[tuple[int, int, int, bool]]:
        """Every extent of the file, in logical order (for checks and conversions)."""
        out: list[tuple[int, int, int, bool]] = []
        found = await self._first_overlap(0)
        if found is None:
            return out
        path, i = found
        while True:
            out.extend(path[-1][0].entries[i:])
            if not await self._next_leaf(path):
                return out
            i = 0

    async def tree_blocks(self) -> list[int]:
        """Physical numbers of all tree blocks (index levels are read, leaves are not)."""
        out: list[int] = []
        stack = [self._root]
        while stack:
            node = stack.pop()
            if node.depth == 0:
                continue
            for _lblk, child in node.entries:
                out.append(child)
                if node.depth > 1:
                    stack.append(await self._child(child, node.depth - 1))
        return out

    async def check(self) -> None:
        """Verify the invariants e2fsck checks (tests use this after every operation)."""

        async def walk(node: _Node, lo: int, hi: int) -> None:
            if len(node.entries) > node.capacity:
                raise AssertionError("node over capacity")
            if node.block is not None and not node.entries:
                raise AssertionError(f"empty tree block {node.block}")
            prev_end = lo
            for k, e in enumerate(node.entries):
                if e[0] < prev_end:
                    raise AssertionError(f"entry {e} out of order (prev end {prev_end})")
                if node.depth == 0:
                    s, p, n, u = e
                    lim = MAX_UNWRITTEN_LEN if u else MAX_INIT_LEN
                    if not 0 < n <= lim or s + n > hi or p <= 0:
                        raise AssertionError(f"bad extent {e} in [{lo},{hi})")
                    prev_end = s + n
                else:
                    child = await self._child(e[1], node.depth - 1)
                    if not child.entries or child.entries[0][0] != e[0]:
                        raise AssertionError(f"index key {e[0]} != child first key")
                    nxt = node.entries[k + 1][0] if k + 1 < len(node.entries) else hi
                    await walk(child, e[0], nxt)
                    prev_end = e[0] + 1

        r = self._root
        if r.depth > 0:
            kids = [await self._child(c, r.depth - 1) for _k, c in r.entries]
            if sum(len(k.entries) for k in kids) <= ROOT_CAPACITY:
                raise AssertionError("tree could be shallower")
        await walk(r, 0, LBLK_LIMIT)

    # ----- modification -------------------------------------------------------------------

    async def insert(self, lblk: int, pblk: int, count: int, unwritten: bool = False) -> None:
        """Map the hole [lblk, lblk+count) to physical blocks [pblk, pblk+count).

        The range must be unmapped. Long ranges are stored as several extents; each is
        merged with a physically contiguous neighbour in the same leaf when the merged
        length stays within the format's limit.
        """
        if count <= 0:
            return
        if lblk < 0 or lblk + count > LBLK_LIMIT:
            raise OSError(errno.EFBIG, "logical block out of range")
        limit = MAX_UNWRITTEN_LEN if unwritten else MAX_INIT_LEN
        root = self._root
        if root.depth == 0 and count <= limit:
            # A file of at most four extents growing at its end (every first write and
            # append of a small file): extend the last extent or add one after it.
            ents = root.entries
            if not ents:
                ents.append((lblk, pblk, count, unwritten))
                self.root_dirty = True
                return
            s, p, ln, u = ents[-1]
            if lblk >= s + ln:
                if u == unwritten and s + ln == lblk and p + ln == pblk and ln + count <= limit:
                    ents[-1] = (s, p, ln + count, u)
                    self.root_dirty = True
                    return
                if len(ents) < ROOT_CAPACITY:
                    ents.append((lblk, pblk, count, unwritten))
                    self.root_dirty = True
                    return
        while count > 0:
            n = min(count, limit)
            await self._insert_one(lblk, pblk, n, unwritten, limit)
            lblk += n
            pblk += n
            count -= n

    async def _insert_one(self, lblk: int, pblk: int, n: int, u: bool, limit: int) -> None:
        path = await self._descend(lblk)
        leaf, i = path[-1]
        ents = leaf.entries
        if i >= 0:
            s, p, ln, uu = ents[i]
            if lblk < s + ln:
                raise OSError(errno.EEXIST, f"logical block {lblk} already mapped")
        if i + 1 < len(ents) and ents[i + 1][0] < lblk + n:
            raise OSError(errno.EEXIST, f"logical block {ents[i + 1][0]} already mapped")
        left_ok = False
        if i >= 0:
            s, p, ln, uu = ents[i]
            left_ok = uu == u and s + ln == lblk and p + ln == pblk and ln + n <= limit
        right_ok = False
        if i + 1 < len(ents):
            s2, p2, ln2, uu2 = ents[i + 1]
            right_ok = uu2 == u and s2 == lblk + n and pblk + n == p2 and ln2 + n <= limit
        if left_ok and right_ok and ents[i][2] + n + ents[i + 1][2] <= limit:
            s, p, ln, _ = ents[i]
            ents[i] = (s, p, ln + n + ents[i + 1][2], u)
            self._mark(leaf)
            await self._delete(path, len(path) - 1, i + 1)
            await self._collapse()
            return
        if left_ok:
            s, p, ln, _ = ents[i]
            ents[i] = (s, p, ln + n, u)
            self._mark(leaf)
            return
        if right_ok:
            _s2, _p2, ln2, _ = ents[i + 1]
            ents[i + 1] = (lblk, pblk, ln2 + n, u)
            self._mark(leaf)
            if i + 1 == 0:
                self._fix_keys(path, len(path) - 1)
            return
        await self._insert_entry(path, i + 1, (lblk, pblk, n, u))

    async def _insert_entry(self, path: list[list], pos: int, entry: tuple) -> None:
        """Insert a leaf entry at pos, splitting full nodes and growing the root.

        Every tree block the insertion needs is allocated before anything changes, so an
        ENOSPC leaves the tree as it was.
        """
        leaf = path[-1][0]
        full = len(leaf.entries) >= leaf.capacity
        if full and len(path) > 1 and await self._shift_to_sibling(path, pos):
            # The leaf and the sibling that took an entry both have room now; the new
            # entry belongs in whichever of them covers its logical block.
            path = await self._descend(entry[0])
            pos = path[-1][1] + 1
        need = 0
        level = len(path) - 1
        while level >= 0 and len(path[level][0].entries) >= path[level][0].capacity:
            need += 1
            level -= 1
        if level < 0:
            # The root is full too: its entries move to a new block (need counted it), and
            # that block may itself be full at once if tree blocks are as small as the root.
            if self._root.depth >= MAX_DEPTH:
                raise OSError(errno.EFBIG, "extent tree too deep")
            if self.node_capacity <= len(self._root.entries):
                need += 1
        pool: list[int] = []
        goal = entry[1] if path[-1][0].depth == 0 else self.goal
        try:
            while len(pool) < need:
                start, got = await self._alloc.allocate(goal, need - len(pool))
                pool.extend(range(start, start + got))
                goal = start + got
        except OSError:
            for b in pool:
                await self._alloc.free(b, 1)
            raise
        await self._insert_at(path, len(path) - 1, pos, entry, pool)
        for b in pool:  # not expected: the count above is exact
            await self._alloc.free(b, 1)

    def _new_node(self, block: int, depth: int, entries: list) -> _Node:
        node = _Node(block, depth, self.node_capacity, entries)
        node.dirty = True
        self._cache[block] = node
        self._dirty[block] = node
        return node

    async def _insert_at(
        self, path: list[list], level: int, pos: int, entry: tuple, pool: list[int]
    ) -> None:
        node = path[level][0]
        if len(node.entries) < node.capacity:
            node.entries.insert(pos, entry)
            self._mark(node)
            if pos == 0:
                self._fix_keys(path, level)
            return
        if level == 0:
            # Grow: the root's entries move into a new tree block and the root becomes an
            # index node with that block as its only child.
            root = self._root
            child = self._new_node(pool.pop(0), root.depth, root.entries)
            root.entries = [(child.entries[0][0], child.block)]
            root.depth += 1
            self.root_dirty = True
            path.insert(1, [child, path[0][1]])
            path[0][1] = 0
            await self._insert_at(path, 1, pos, entry, pool)
            return
        n = len(node.entries)
        # Appending (the common case for a growing file) leaves the old node full and
        # starts a new one; otherwise split in half.
        split = n if pos == n else n // 2
        new = self._new_node(pool.pop(0), node.depth, node.entries[split:])
        del node.entries[split:]
        self._mark(node)
        if pos >= split:
            new.entries.insert(pos - split, entry)
        else:
            node.entries.insert(pos, entry)
            if pos == 0:
                self._fix_keys(path, level)
        await self._insert_at(
            path, level - 1, path[level - 1][1] + 1, (new.entries[0][0], new.block), pool
        )

    def _fix_keys(self, path: list[list], level: int) -> None:
        """After the first entry of path[level] changed, update the index keys above."""
        while level > 0:
            node = path[level][0]
            parent, idx = path[level - 1]
            key = node.entries[0][0]
            if parent.entries[idx][0] == key:
                return
            parent.entries[idx] = (key, parent.entries[idx][1])
            self._mark(parent)
            if idx != 0:
                return
            level -= 1

    async def _shift_to_sibling(self, path: list[list], pos: int) -> bool:
        """Make room in a full leaf by moving one edge entry into a sibling leaf (same
        parent) that has at least two free slots; False if neither has. Splitting only when
        the neighbours are full keeps leaves dense, so trees stay as narrow as e2fsck likes.
        """
        level = len(path) - 1
        node = path[level][0]
        parent, idx = path[level - 1]
        if idx + 1 < len(parent.entries) and pos > 0:
            right = await self._child(parent.entries[idx + 1][1], node.depth)
            if len(right.entries) + 2 <= right.capacity:
                right.entries.insert(0, node.entries.pop())
                parent.entries[idx + 1] = (right.entries[0][0], right.block)
                for n in (node, right, parent):
                    self._mark(n)
                return True
        if idx > 0 and pos < len(node.entries):
            left = await self._child(parent.entries[idx - 1][1], node.depth)
            if len(left.entries) + 2 <= left.capacity:
                left.entries.append(node.entries.pop(0))
                parent.entries[idx] = (node.entries[0][0], node.block)
                for n in (node, left, parent):
                    self._mark(n)
                return True
        return False

    async def _delete(self, path: list[list], level: int, pos: int) -> None:
        """Remove entry pos of path[level]; free tree blocks that become empty and merge a
        node into its sibling when both fit in one block (with a slot to spare)."""
        node = path[level][0]
        del node.entries[pos]
        self._mark(node)
        if node.entries:
            if pos == 0:
                self._fix_keys(path, level)
            if level > 0:
                await self._merge_with_sibling(path, level)
            return
        if level == 0:
            # An empty tree is a depth-0 root, as the kernel leaves it after truncate to 0.
            node.depth = 0
            return
        await self._free_tree_block(node)
        await self._delete(path, level - 1, path[level - 1][1])

    async def _merge_with_sibling(self, path: list[list], level: int) -> None:
        node = path[level][0]
        parent, idx = path[level - 1]
        if idx + 1 < len(parent.entries):
            left, right, right_idx = node, None, idx + 1
        elif idx > 0:
            left, right, right_idx = None, node, idx
        else:
            return
        if left is None:
            left = await self._child(parent.entries[idx - 1][1], node.depth)
        if right is None:
            right = await self._child(parent.entries[idx + 1][1], node.depth)
        if len(left.entries) + len(right.entries) >= left.capacity:
            return
        left.entries.extend(right.entries)
        self._mark(left)
        await self._free_tree_block(right)
        path[level][0] = left
        await self._delete(path, level - 1, right_idx)

    async def _free_tree_block(self, node: _Node) -> None:
        assert node.block is not None
        self._cache.pop(node.block, None)
        self._dirty.pop(node.block, None)
        node.dirty = False
        await self._alloc.free(node.block, 1)

    async def _collapse(self) -> None:
        """Pull the root's children into the root while their entries fit there, so the
        depth shrinks back (e2fsck calls a tree whose level fits in the root "shorter")."""
        root = self._root
        while root.depth > 0 and root.entries:
            children = [await self._child(c, root.depth - 1) for _k, c in root.entries]
            if sum(len(c.entries) for c in children) > ROOT_CAPACITY:
                return
            root.entries = [e for c in children for e in c.entries]
            root.depth -= 1
            self.root_dirty = True
            for c in children:
                await self._free_tree_block(c)

    async def remove(self, lblk: int, count: int | None = None, *, free: bool = True) -> int:
        """Unmap logical blocks [lblk, lblk+count) (to the end of the file if count is None).

        Extents straddling the range are trimmed or split (punching a hole in the middle of
        one extent adds an entry, which may need a new tree block: that is done first, so an
        ENOSPC changes nothing). Data blocks are freed when ``free``; emptied tree blocks
        always are. Returns the number of data blocks unmapped.
        """
        end = _LBLK_SPACE if count is None else min(lblk + count, _LBLK_SPACE)
        removed = 0
        pos = lblk
        while pos < end:
            found = await self._first_overlap(pos)
            if found is None:
                break
            path, i = found
            leaf = path[-1][0]
            s, p, n, u = leaf.entries[i]
            if s >= end:
                break
            lo, hi = max(s, pos), min(s + n, end)
            level = len(path) - 1
            if s < lo and hi < s + n:
                # Punch inside one extent: add the right part first, then trim the left.
                await self._insert_entry(path, i + 1, (hi, p + (hi - s), s + n - hi, u))
                path = await self._descend(s)
                leaf, i = path[-1]
                leaf.entries[i] = (s, p, lo - s, u)
                self._mark(leaf)
            elif s == lo and hi == s + n:
                await self._delete(path, level, i)
            elif s == lo:
                leaf.entries[i] = (hi, p + (hi - s), s + n - hi, u)
                self._mark(leaf)
                if i == 0:
                    self._fix_keys(path, level)
            else:
                leaf.entries[i] = (s, p, lo - s, u)
                self._mark(leaf)
            if free:
                await self._alloc.free(p + (lo - s), hi - lo)
            removed += hi - lo
            pos = hi
        await self._collapse()
        return removed

    async def mark_written(self, lblk: int, count: int) -> None:
        """Turn the unwritten extents inside [lblk, lblk+count) into initialized ones.

        An extent wholly inside flips its flag in place; one straddling an edge is split
        into its unwritten and written parts. The new entries are inserted before the old
        one is trimmed, and the first is taken back if the second cannot get a tree block,
        so ENOSPC leaves the mapping as it was.
        """
        end = lblk + count
        for run in await self.map(lblk, count):
            if run.physical is None or not run.unwritten:
                continue
            path = await self._descend(run.logical)
            leaf, i = path[-1]
            s, p, n, _u = leaf.entries[i]
            a, b = run.logical, min(run.logical + run.length, end)
            if s == a and s + n == b:
                leaf.entries[i] = (s, p, n, False)
                self._mark(leaf)
                continue
            pieces = []  # the parts after the first, inserted first (right to left)
            if b < s + n:
                pieces.append((b, p + (b - s), s + n - b, True))
            if s < a:
                pieces.append((a, p + (a - s), b - a, False))
            done: list[int] = []
            try:
                for piece in pieces:
                    path = await self._descend(s)
                    await self._insert_entry(path, path[-1][1] + 1, piece)
                    done.append(piece[0])
            except OSError:
                for key in done:
                    path = await self._descend(key)
                    await self._delete(path, len(path) - 1, path[-1][1])
                await self._collapse()
                raise
            path = await self._descend(s)
            leaf, i = path[-1]
            leaf.entries[i] = (s, p, a - s, True) if s < a else (s, p, b - s, False)
            self._mark(leaf)
