"""The answer to the host kernel's FUSE INIT: capabilities libfuse cannot ask for.

libfuse answers INIT itself, with the capabilities it knows of and pyfuse3 asks for.
chanos wants three more:

* FUSE_HANDLE_KILLPRIV_V2, which libfuse 3.14 does not know: the host kernel leaves
  taking set-ID bits and file capabilities away (on write, truncate and chown) to the
  file system, and marks the mount ``SB_NOSEC``, so it stops asking the daemon for
  ``security.capability`` before every write(2) to a file it has seen has none. Without
  it, each buffered write is two round trips: that GETXATTR and the WRITE.
* FUSE_CACHE_SYMLINKS, which pyfuse3 offers no way to ask for: the host kernel keeps a
  symlink's target in its page cache, so resolving a path through the same symlink again
  costs no READLINK. Valid because a symlink's target never changes (a new target is a
  new inode), and only this mount changes the image.
* FUSE_DONT_MASK, which pyfuse3 offers no way to ask for: the host kernel leaves the
  umask to the file system, which applies it unless the new inode's directory has a
  default ACL (which then takes its place, as on ext4); the kernel's own masking would
  apply it even then.

So the front end reads INIT from ``/dev/fuse`` before libfuse does, hands it to libfuse
through a socket put in the descriptor's place, takes libfuse's answer back from that
socket, adds the flags (those the kernel offered), puts ``/dev/fuse`` back at the same
descriptor number and sends the answer on. The kernel sends nothing else before INIT is
answered, and libfuse reads and writes the descriptor only from the request loop, which
calls :meth:`InitReply.complete` before every wait; so libfuse sees INIT as it always
does, and every later request comes from ``/dev/fuse`` again.

What FUSE_HANDLE_KILLPRIV_V2 and FUSE_DONT_MASK oblige the file system to do, and how
the front end does it, is in ``chanos.compat.fuse_ops`` (its module docstring, "Set-ID
bits and file capabilities" and "The umask").
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct

log = logging.getLogger(__name__)

FUSE_INIT = 26
FUSE_DONT_MASK = 1 << 6
FUSE_CACHE_SYMLINKS = 1 << 23
FUSE_HANDLE_KILLPRIV_V2 = 1 << 28

# struct fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
_IN_HEADER = struct.Struct("=IIQQIIIHH")
# struct fuse_out_header: len, error, unique
_OUT_HEADER = struct.Struct("=IiQ")
_U32 = struct.Struct("=I")
# fuse_init_in and fuse_init_out both start: major, minor, max_readahead, flags.
_FLAGS_AT = 12
_INIT_IN_FLAGS = _IN_HEADER.size + _FLAGS_AT
_INIT_OUT_FLAGS = _OUT_HEADER.size + _FLAGS_AT
# The host kernel refuses reads of /dev/fuse into buffers smaller than this.
_READ_SIZE = 1 << 16


class InitReply:
    """Adds ``extra`` capability flags (of INIT's first 32) to libfuse's answer to INIT on
    descriptor ``fd``.

    Use: :meth:`intercept` after the mount and before the request loop starts; then
    :meth:`complete` before each wait for a request until it returns True. ``granted``
    says, once complete, which of ``extra`` the host kernel was given.
    """

    def __init__(self, fd: int, extra: int) -> None:
        self.fd = fd
        self.extra = extra
        self.granted = 0
        self.done = False
        self._saved: int | None = None  # /dev/fuse while the socket stands in for it
        self._ours: socket.socket | None = None  # our end of the socket
        self._theirs: socket.socket | None = None  # the end at libfuse's descriptor
        self._offered = 0

    def intercept(self, timeout: float = 10.0) -> bool:
        """Take INIT from ``/dev/fuse`` and give it to libfuse through a socket; False
        (and nothing taken) if no request came within ``timeout`` seconds."""
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        if not p.poll(int(timeout * 1000)):
            self.done = True
            return False
        request = os.read(self.fd, _READ_SIZE)
        # From here on libfuse must get the request, whatever it is.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._saved = os.dup(self.fd)
        os.dup2(theirs.fileno(), self.fd, inheritable=False)
        self._ours, self._theirs = ours, theirs
        ours.setblocking(False)
        ours.send(request)
        if len(request) >= _INIT_IN_FLAGS + 4:
            _, opcode, *_ = _IN_HEADER.unpack_from(request)
            if opcode == FUSE_INIT:
                self._offered = _U32.unpack_from(request, _INIT_IN_FLAGS)[0] & self.extra
        return True

    def complete(self) -> bool:
        """If libfuse has answered INIT, send the answer on (with the flags added) and
        put ``/dev/fuse`` back: True once that is done."""
        if self.done:
            return True
        assert self._ours is not None and self._saved is not None
        try:
            reply = bytearray(self._ours.recv(_READ_SIZE))
        except BlockingIOError:
            return False
        # Only a whole, successful answer gets the flags; anything else goes on as it is.
        if self._offered and _answered_ok(reply):
            flags = _U32.unpack_from(reply, _INIT_OUT_FLAGS)[0]
            _U32.pack_into(reply, _INIT_OUT_FLAGS, flags | self._offered)
            self.granted = self._offered
        os.dup2(self._saved, self.fd, inheritable=False)
        os.close(self._saved)
        self._saved = None
        self._ours.close()
        assert self._theirs is not None
        self._theirs.close()
        self._ours = self._theirs = None
        self.done = True
        try:
            os.write(self.fd, reply)
        except OSError as exc:
            # The session is gone (the mount was torn down meanwhile): the request loop
            # finds that out on its next read.
            log.warning("sending the answer to INIT failed: %s", exc)
            self.granted = 0
        if self.granted:
            log.debug("INIT answered with extra flags %#x", self.granted)
        return True


def _answered_ok(reply: bytes | bytearray) -> bool:
    """Whether ``reply`` is a whole, successful answer to INIT, with room for its flags."""
    if len(reply) < _INIT_OUT_FLAGS + 4:
        return False
    length, error, _ = _OUT_HEADER.unpack_from(reply)
    return error == 0 and length == len(reply)
