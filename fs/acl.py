"""POSIX ACL semantics: what an ACL says about the mode, and what a new inode inherits.

An ACL here is the value programs read and write as ``system.posix_acl_access`` and
``system.posix_acl_default`` (version 2, 8-byte entries of tag, permissions, id);
``chanos.fs.format.xattr`` converts it to and from ext4's on-disk form. The rules are the
ones the Linux VFS applies for ext4:

* ``equivalent_mode``: the permission bits an access ACL implies, and whether it says
  no more than they do (then it is not stored at all, only the mode);
* ``with_mode``: chmod rewrites the owner, mask (or owning group) and other entries;
* ``inherit``: a new inode in a directory with a default ACL gets that ACL as its access
  ACL, narrowed by the mode it was created with, and the mode narrowed by the ACL; a new
  directory also gets the default ACL itself.
"""

from __future__ import annotations

import errno
import struct

from chanos.fs.format.xattr import (
    ACL_GROUP,
    ACL_GROUP_OBJ,
    ACL_MASK,
    ACL_OTHER,
    ACL_USER,
    ACL_USER_OBJ,
    POSIX_ACL_XATTR_VERSION,
)

ACCESS = b"system.posix_acl_access"
DEFAULT = b"system.posix_acl_default"

Entry = tuple[int, int, int]  # (tag, permission bits, id)

_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")


def parse(value: bytes) -> list[Entry] | None:
    """The entries of an ACL value, or None if it is malformed."""
    if len(value) < 4 or (len(value) - 4) % 8:
        return None
    if _HEADER.unpack_from(value)[0] != POSIX_ACL_XATTR_VERSION:
        return None
    return list(_ENTRY.iter_unpack(value[4:]))


def build(entries: list[Entry]) -> bytes:
    return _HEADER.pack(POSIX_ACL_XATTR_VERSION) + b"".join(_ENTRY.pack(*e) for e in entries)


def equivalent_mode(entries: list[Entry]) -> tuple[int, bool]:
    """(the permission bits the ACL implies, whether it says no more than they do)."""
    user = group = other = 0
    mask = None
    equivalent = True
    for tag, perm, _id in entries:
        perm &= 7
        if tag == ACL_USER_OBJ:
            user = perm
        elif tag == ACL_GROUP_OBJ:
            group = perm
        elif tag == ACL_OTHER:
            other = perm
        elif tag == ACL_MASK:
            mask = perm
            equivalent = False
        else:
            equivalent = False
    return (user << 6) | ((group if mask is None else mask) << 3) | other, equivalent


def with_mode(entries: list[Entry], mode: int) -> bytes:
    """chmod: owner, mask (or owning group, without a mask) and other take ``mode``."""
    has_mask = any(tag == ACL_MASK for tag, _, _ in entries)
    out = []
    for tag, perm, ident in entries:
        if tag == ACL_USER_OBJ:
            perm = (mode >> 6) & 7
        elif tag == ACL_MASK or (tag == ACL_GROUP_OBJ and not has_mask):
            perm = (mode >> 3) & 7
        elif tag == ACL_OTHER:
            perm = mode & 7
        out.append((tag, perm, ident))
    return build(out)


def inherit(default: bytes, mode: int) -> tuple[int, bytes | None, bytes | None]:
    """A new inode made with ``mode`` in a directory whose default ACL is ``default``
    -> (its mode, its access ACL or None, its default ACL or None).

    The access ACL is the default one with the owner, other and mask (or owning group)
    entries narrowed to the mode's bits, and those bits narrowed to the entries' in turn;
    it is None when the result says no more than the mode. Only a directory inherits the
    default ACL itself. Raises EIO for a default ACL that is malformed or has no owning
    group entry to carry the group bits (the VFS refuses the same).
    """
    entries = parse(default)
    if entries is None:
        raise OSError(errno.EIO, "malformed default ACL")
    bits = mode & 0o777
    equivalent = True
    out: list[Entry] = []
    group_at = mask_at = -1
    for tag, perm, ident in entries:
        if tag == ACL_USER_OBJ:
            perm &= (bits >> 6) & 7
            bits &= (perm << 6) | 0o077
        elif tag == ACL_OTHER:
            perm &= bits & 7
            bits &= perm | 0o770
        elif tag == ACL_GROUP_OBJ:
            group_at = len(out)
        elif tag == ACL_MASK:
            mask_at = len(out)
            equivalent = False
        elif tag in (ACL_USER, ACL_GROUP):
            equivalent = False
        else:
            raise OSError(errno.EIO, f"bad tag {tag:#x} in a default ACL")
        out.append((tag, perm, ident))
    at = mask_at if mask_at >= 0 else group_at
    if at < 0:
        raise OSError(errno.EIO, "default ACL without an owning group entry")
    tag, perm, ident = out[at]
    perm &= (bits >> 3) & 7
    bits &= (perm << 3) | 0o707
    out[at] = (tag, perm, ident)
    new_mode = (mode & ~0o777) | bits
    access = None if equivalent else build(out)
    inherited_default = default if (mode & 0o170000) == 0o040000 else None
    return new_mode, access, inherited_default
