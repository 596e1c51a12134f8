"""The CPU wake-up latency request: taken at a burst, written once, withdrawn when quiet.

A regular file stands in for ``/dev/cpu_dma_latency``: what the request writes is what
the kernel would read. The real device is exercised on a mount in test_mount_cli.py.
"""

from __future__ import annotations

import os
import struct

import trio
from chanos.compat.wake_latency import NO_CONSTRAINT, WakeLatency


def _written(path) -> list[int]:
    data = path.read_bytes()
    return [v for (v,) in struct.iter_unpack("=i", data)]


def test_open_without_the_device_is_no_request(tmp_path):
    assert WakeLatency.open(0, str(tmp_path / "absent")) is None


async def test_a_burst_holds_the_request_until_linger_passes_without_requests(
    tmp_path, autojump_clock
):
    dev = tmp_path / "cpu_dma_latency"
    dev.touch()
    lat = WakeLatency.open(5, str(dev), linger=0.01)
    assert lat is not None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lat.run)
            await trio.sleep(1)
            assert _written(dev) == [] and not lat.held  # nothing asked before a burst
            lat.burst()
            lat.burst()  # already held: not written again
            assert _written(dev) == [5] and lat.held
            for _ in range(20):  # requests keep coming, 5 ms apart: still held
                await trio.sleep(0.005)
                lat.requests += 1
            assert lat.held and _written(dev) == [5]
            await trio.sleep(0.025)  # quiet for longer than linger
            assert not lat.held and _written(dev) == [5, NO_CONSTRAINT]
            lat.burst()  # the next burst takes it again, and quiet withdraws it again
            await trio.sleep(0.05)
            assert _written(dev) == [5, NO_CONSTRAINT, 5, NO_CONSTRAINT]
            nursery.cancel_scope.cancel()
    finally:
        lat.close()
    try:
        os.fstat(lat.fd)
    except OSError:
        pass
    else:
        raise AssertionError("close() left the device open")
