"""POSIX ACL rules (chanos.fs.acl): mode equivalence, chmod, inheritance at create.

The expected values are worked out by hand from the Linux VFS rules (posix_acl_equiv_mode,
posix_acl_chmod, posix_acl_create).
"""

from __future__ import annotations

import errno
import struct

import pytest
from chanos.fs import acl
from chanos.fs.format.xattr import (
    ACL_GROUP,
    ACL_GROUP_OBJ,
    ACL_MASK,
    ACL_OTHER,
    ACL_USER,
    ACL_USER_OBJ,
)

U = 0xFFFFFFFF  # the id of an entry that names no one


def _acl(*entries: tuple[int, int, int]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def test_acl_equivalent_to_mode_bits():
    minimal = _acl((ACL_USER_OBJ, 6, U), (ACL_GROUP_OBJ, 4, U), (ACL_OTHER, 4, U))
    assert acl.equivalent_mode(acl.parse(minimal)) == (0o644, True)
    full = _acl((ACL_USER_OBJ, 7, U), (ACL_USER, 7, 1000), (ACL_GROUP_OBJ, 5, U),
                (ACL_GROUP, 6, 50), (ACL_MASK, 6, U), (ACL_OTHER, 0, U))  # fmt: skip
    # the group class bits of the mode are the mask, not the owning group's entry
    assert acl.equivalent_mode(acl.parse(full)) == (0o760, False)
    assert acl.parse(b"\x02\x00\x00\x00\x01") is None
    assert acl.parse(struct.pack("<I", 1)) is None


def test_chmod_rewrites_owner_mask_other_only():
    full = _acl((ACL_USER_OBJ, 7, U), (ACL_USER, 7, 1000), (ACL_GROUP_OBJ, 5, U),
                (ACL_MASK, 6, U), (ACL_OTHER, 0, U))  # fmt: skip
    out = acl.parse(acl.with_mode(acl.parse(full), 0o451))
    assert out == [(ACL_USER_OBJ, 4, U), (ACL_USER, 7, 1000), (ACL_GROUP_OBJ, 5, U),
                   (ACL_MASK, 5, U), (ACL_OTHER, 1, U)]  # fmt: skip
    no_mask = _acl((ACL_USER_OBJ, 7, U), (ACL_GROUP_OBJ, 5, U), (ACL_OTHER, 0, U))
    got = acl.parse(acl.with_mode(acl.parse(no_mask), 0o640))
    assert acl.equivalent_mode(got) == (0o640, True)


def test_a_default_acl_equivalent_to_mode_bits_only_narrows_the_mode():
    default = _acl((ACL_USER_OBJ, 7, U), (ACL_GROUP_OBJ, 5, U), (ACL_OTHER, 0, U))
    # a file asked for 0666: owner rw, group r (r-x & rw-), other nothing
    assert acl.inherit(default, 0o100666) == (0o100640, None, None)
    # a directory keeps the default ACL for its own children
    assert acl.inherit(default, 0o040777) == (0o040750, None, default)


def test_a_fuller_default_acl_becomes_the_access_acl_narrowed_by_the_mode():
    default = _acl((ACL_USER_OBJ, 7, U), (ACL_USER, 7, 1000), (ACL_GROUP_OBJ, 5, U),
                   (ACL_MASK, 7, U), (ACL_OTHER, 5, U))  # fmt: skip
    mode, access, inherited = acl.inherit(default, 0o040755)
    assert mode == 0o040755
    assert acl.parse(access) == [
        (ACL_USER_OBJ, 7, U), (ACL_USER, 7, 1000), (ACL_GROUP_OBJ, 5, U), (ACL_MASK, 5, U),
        (ACL_OTHER, 5, U),
    ]  # fmt: skip
    assert inherited == default
    # a file made 0600: the mask (not the owning group's entry) takes the group bits, and
    # the named user's entry stays as it is (the mask limits it)
    mode, access, inherited = acl.inherit(default, 0o100600)
    assert mode == 0o100600
    assert acl.parse(access) == [
        (ACL_USER_OBJ, 6, U), (ACL_USER, 7, 1000), (ACL_GROUP_OBJ, 5, U), (ACL_MASK, 0, U),
        (ACL_OTHER, 0, U),
    ]  # fmt: skip
    assert inherited is None
    # the special bits are not the ACL's business
    mode, _, _ = acl.inherit(default, 0o106775)
    assert mode == 0o106775


def test_a_default_acl_that_cannot_be_applied_is_an_io_error():
    with pytest.raises(OSError) as e:
        acl.inherit(b"\x02\x00\x00\x00\x01", 0o100644)
    assert e.value.errno == errno.EIO
    no_group = _acl((ACL_USER_OBJ, 7, U), (ACL_OTHER, 5, U))
    with pytest.raises(OSError) as e:
        acl.inherit(no_group, 0o100644)
    assert e.value.errno == errno.EIO
