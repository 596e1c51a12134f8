"""The front end's hand in the answer to INIT (chanos.compat.init_reply), against a
socket that stands in for /dev/fuse: the request reaches "libfuse" at the same
descriptor, its answer reaches "the kernel" with the flag added only when offered and
only to a successful answer, and the descriptor is the device again afterwards."""

from __future__ import annotations

import os
import socket
import struct

import pytest
from chanos.compat.init_reply import FUSE_HANDLE_KILLPRIV_V2, FUSE_INIT, InitReply

ASYNC_READ = 1 << 0
OTHER = 1 << 5


def init_request(flags: int, unique: int = 2) -> bytes:
    body = struct.pack("=IIII", 7, 38, 131072, flags) + bytes(48)  # + flags2, unused
    header = struct.pack("=IIQQIIIHH", 40 + len(body), FUSE_INIT, unique, 0, 0, 0, 1, 0, 0)
    return header + body


def init_answer(flags: int, unique: int = 2, error: int = 0) -> bytes:
    body = b"" if error else struct.pack("=IIII", 7, 38, 131072, flags) + bytes(48)
    return struct.pack("=IiQ", 16 + len(body), error, unique) + body


def answer_flags(answer: bytes) -> int:
    return struct.unpack_from("=I", answer, 16 + 12)[0]


@pytest.fixture
def device():
    """(the kernel's end, the daemon's descriptor) of a stand-in for /dev/fuse."""
    kernel, daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield kernel, daemon.fileno()
    kernel.close()
    daemon.close()


def intercepted(device, offered: int) -> InitReply:
    """The kernel sends INIT offering ``offered``; the front end takes it, to add the
    KILLPRIV_V2 flag."""
    kernel, fd = device
    kernel.send(init_request(offered))
    reply = InitReply(fd, FUSE_HANDLE_KILLPRIV_V2)
    assert reply.intercept(timeout=1)
    return reply


def serve_init(reply: InitReply, fd: int, flags: int, error: int = 0) -> bytes:
    """What libfuse does: read INIT from the descriptor, answer it there."""
    request = os.read(fd, 1 << 16)
    assert struct.unpack_from("=I", request, 4)[0] == FUSE_INIT
    assert not reply.complete()  # nothing answered yet: the stand-in stays
    os.write(fd, init_answer(flags, error=error))
    return request


def test_the_offered_flag_is_added_and_the_device_put_back(device):
    kernel, fd = device
    offered = ASYNC_READ | OTHER | FUSE_HANDLE_KILLPRIV_V2
    sent = init_request(offered)
    reply = intercepted(device, offered)
    assert serve_init(reply, fd, ASYNC_READ) == sent  # libfuse saw the request unchanged
    assert reply.complete() and reply.done
    answer = kernel.recv(1 << 16)
    assert answer_flags(answer) == ASYNC_READ | FUSE_HANDLE_KILLPRIV_V2
    assert answer[:8] == init_answer(0)[:8] and len(answer) == len(init_answer(0))
    assert reply.granted == FUSE_HANDLE_KILLPRIV_V2
    # The descriptor reads the device again, and complete() has nothing left to do.
    kernel.send(b"the next request")
    assert os.read(fd, 1 << 16) == b"the next request"
    assert reply.complete()


def test_a_flag_the_kernel_did_not_offer_is_not_added(device):
    kernel, fd = device
    reply = intercepted(device, ASYNC_READ)
    serve_init(reply, fd, ASYNC_READ)
    assert reply.complete()
    assert kernel.recv(1 << 16) == init_answer(ASYNC_READ)
    assert reply.granted == 0


def test_a_refusal_goes_through_unchanged(device):
    kernel, fd = device
    reply = intercepted(device, FUSE_HANDLE_KILLPRIV_V2)
    serve_init(reply, fd, 0, error=-71)  # EPROTO
    assert reply.complete()
    assert kernel.recv(1 << 16) == init_answer(0, error=-71)
    assert reply.granted == 0


def test_a_short_answer_goes_through_unchanged(device):
    kernel, fd = device
    reply = intercepted(device, FUSE_HANDLE_KILLPRIV_V2)
    os.read(fd, 1 << 16)
    os.write(fd, b"shortish")  # no whole header: passed on for the kernel to refuse
    assert reply.complete()
    assert kernel.recv(1 << 16) == b"shortish"
    assert reply.granted == 0


def test_no_request_leaves_the_descriptor_alone(device):
    kernel, fd = device
    before = os.fstat(fd)
    reply = InitReply(fd, FUSE_HANDLE_KILLPRIV_V2)
    assert not reply.intercept(timeout=0.05)
    assert reply.complete() and reply.granted == 0
    after = os.fstat(fd)
    assert (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino)
    kernel.send(b"late")
    assert os.read(fd, 1 << 16) == b"late"
