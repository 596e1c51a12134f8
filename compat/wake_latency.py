"""WakeLatency: a CPU wake-up latency request, held while requests come back to back.

A FUSE request is a round trip between two tasks: the program blocks in its system call
until the daemon's reply wakes it. When the program's CPU has gone idle meanwhile, that
wake-up is as slow as the CPU's way out of its idle state. In a virtual machine whose
idle vCPUs halt at once (the ``haltpoll`` cpuidle driver with ``guest_halt_poll_ns=0``,
as on the machines chanos is measured on), it is an exit to the hypervisor and an
interrupt to the halted vCPU, and it measured 15 to 20 µs of a 48 µs GETXATTR round trip.
Asking the kernel's PM QoS for a CPU wake-up latency of 0 µs (``/dev/cpu_dma_latency``)
makes idle CPUs poll instead, and the same round trip took 15 µs.

The request is machine-wide: every idle CPU polls while it is held, which costs power
(and, in a virtual machine, the host's CPU time). So it is held only during bursts, as
network drivers hold theirs while traffic flows: from a request that arrives while the
previous one is still being answered or within the front end's busy poll (see
``chanos.compat.request_wait``), until ``linger`` seconds pass without any request. An
isolated request (one that finds the daemon asleep) never takes it.

``/dev/cpu_dma_latency`` is writable by root only; without it nothing is held
(:meth:`WakeLatency.open` answers None and says why in the log).
"""

from __future__ import annotations

import logging
import os
import struct

import trio

log = logging.getLogger(__name__)

DEVICE = "/dev/cpu_dma_latency"
# The kernel's "no constraint" value (PM_QOS_CPU_LATENCY_DEFAULT_VALUE, 2000 s in µs):
# writing it withdraws the request without closing the device.
NO_CONSTRAINT = 2_000_000_000
LINGER = 0.01  # seconds without a request before the request is withdrawn


class WakeLatency:
    """A held-while-busy CPU wake-up latency request on an open ``/dev/cpu_dma_latency``.

    The front end's request wait calls :meth:`burst` for each request it finds without
    having slept and counts every request in ``requests``; :meth:`run` (a task for as
    long as the mount is served) withdraws the request once ``linger`` seconds pass with
    no request counted.
    """

    def __init__(self, fd: int, usec: int, linger: float = LINGER) -> None:
        self.fd = fd
        self.value = struct.pack("=i", usec)
        self.linger = linger
        self.held = False
        self.requests = 0  # counted by the request wait; run() looks for changes
        self._taken = trio.Event()

    @classmethod
    def open(cls, usec: int, path: str = DEVICE, linger: float = LINGER) -> WakeLatency | None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.info("no CPU wake-up latency request (%s: %s)", path, exc.strerror)
            return None
        return cls(fd, usec, linger)

    def burst(self) -> None:
        """Requests are coming back to back: hold the latency request."""
        if self.held:
            return
        if self._write(self.value):
            self.held = True
            self._taken.set()

    def withdraw(self) -> None:
        if self.held:
            self.held = False
            self._taken = trio.Event()
            self._write(struct.pack("=i", NO_CONSTRAINT))

    def _write(self, value: bytes) -> bool:
        try:
            os.write(self.fd, value)
        except OSError as exc:  # not expected once open; serving goes on without it
            log.warning("CPU wake-up latency request failed: %s", exc.strerror)
            return False
        return True

    async def run(self) -> None:
        """Withdraw the request each time ``linger`` seconds pass without a request."""
        while True:
            await self._taken.wait()
            seen = -1
            while seen != self.requests:
                seen = self.requests
                await trio.sleep(self.linger)
            self.withdraw()

    def close(self) -> None:
        """Withdraw the request for good (closing the device removes it)."""
        self.held = False
        os.close(self.fd)
