"""On-disk format of ext2/3/4 images, declared with construct.

Pure codecs, no I/O and no actors: bytes in, objects out, and back.

- ``features``    feature flag names, supported sets, the mount-time check
- ``superblock``  ``Superblock`` (1024 bytes at offset 1024) and geometry helpers
- ``group_desc``  ``GroupDesc`` (32 or 64 bytes), descriptor tables
- ``inode``       ``Inode`` (base + extra fields + raw xattr tail), flags, times,
                  i_blocks, device numbers, fast symlinks, mode -> file_type
- ``extent``      extent tree nodes (``ExtentNode``, ``Extent``, ``ExtentIndex``)
- ``dirent``      directory blocks (records, insert, delete, htree recognition)
- ``dirhash``     htree name hashes (legacy, half_md4, tea; signed and unsigned)
- ``xattr``       in-inode and block extended attributes, hashes, ACL conversion
- ``journal``     jbd2 superblock, needs-recovery test

Malformed input raises ``CorruptError`` (an ``OSError`` with errno EIO).
"""

from chanos.fs.format._record import CorruptError
from chanos.fs.format.extent import Extent, ExtentIndex, ExtentNode
from chanos.fs.format.group_desc import GroupDesc
from chanos.fs.format.inode import Inode
from chanos.fs.format.journal import JournalSuperblock
from chanos.fs.format.superblock import Superblock
from chanos.fs.format.xattr import Xattr

__all__ = [
    "CorruptError",
    "Extent",
    "ExtentIndex",
    "ExtentNode",
    "GroupDesc",
    "Inode",
    "JournalSuperblock",
    "Superblock",
    "Xattr",
]
