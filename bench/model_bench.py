"""Benchmark of the message model: are messages and actors cheap?

    python bench/model_bench.py          # a table
    python bench/model_bench.py --json   # the table, then the figures as one JSON object
                                         # on the last line

Figures (all measured in one run; times are the best of several repeats, to read through
the noise of a shared machine):
  direct_await_us        `await actor.handle(msg)` on the instance, message built each time
  call_us                `await call(ref, msg)` to the same (idle) actor
  call_ratio             call_us / direct_await_us  (target <= 10)
  call_blocking_us       call whose handler blocks once (a trio checkpoint) - the shielded path
  call_queued_us         call to a busy actor: queued, handed over to the caller's task
  trio_roundtrip_us      request/reply through trio memory channels and a server task
  oneway_msgs_per_s      values through a buffered Channel(1024), producer -> consumer task
  cast_msgs_per_s        casts to an actor, run by its drain task
  choose8_us             one `choose` over 8 channels with one (random) ready
  spawn_us               `await sup.start(ChildSpec(...))` per actor
  bytes_per_live_actor   memory per idle live actor (runtime record + address + instance +
                         supervisor entry + its ChildSpec), measured over 20,000 actors
  bytes_per_retired_actor  what a stopped actor's record keeps while its address is held
  bytes_per_idle_trio_task the comparison point: a bare trio task parked on an Event
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import tracemalloc
from dataclasses import dataclass
from typing import Any

import trio
import trio.testing
from chanos.personality import (
    TEMPORARY,
    Actor,
    Channel,
    ChildSpec,
    Recv,
    call,
    cast,
    choose,
    open_supervisor,
)


@dataclass(frozen=True, slots=True)
class Get:
    key: int


@dataclass(frozen=True, slots=True)
class Nap:
    pass


class Store(Actor):
    def __init__(self) -> None:
        self.n = 0

    async def handle(self, msg: Any) -> Any:
        match msg:
            case Get(key=key):
                self.n += 1
                return key + 1
            case Nap():
                await trio.lowlevel.checkpoint()
                return None
            case _:
                raise TypeError(msg)


class Idle(Actor):
    def __init__(self, ino: int) -> None:
        self.ino = ino

    async def handle(self, msg: Any) -> Any:
        return self.ino


def _best(fn: Any, repeats: int) -> float:
    return min(fn() for _ in range(repeats))


async def _abest(fn: Any, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        best = min(best, await fn())
    return best


async def bench_calls(sup: Any, n: int, repeats: int) -> dict[str, float]:
    ref = await sup.start(ChildSpec("store", Store))
    inst = Store()

    async def direct() -> float:
        h = inst.handle
        t = time.perf_counter()
        for i in range(n):
            await h(Get(i))
        return (time.perf_counter() - t) / n

    async def viacall() -> float:
        t = time.perf_counter()
        for i in range(n):
            await call(ref, Get(i))
        return (time.perf_counter() - t) / n

    async def blocking() -> float:
        m = n // 10
        t = time.perf_counter()
        for _ in range(m):
            await call(ref, Nap())
        return (time.perf_counter() - t) / m

    # Interleave the two measurements so drifting machine load hits both alike.
    d = c = float("inf")
    for _ in range(repeats):
        d = min(d, await direct())
        c = min(c, await viacall())
    b = await _abest(blocking, repeats)

    # Queued: two tasks hammer one actor whose handler blocks once, so most calls queue
    # behind the other's turn and are handed over.
    async def queued() -> float:
        m = n // 20

        async def worker() -> None:
            for _ in range(m):
                await call(ref, Nap())

        t = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker)
            nursery.start_soon(worker)
        return (time.perf_counter() - t) / (2 * m)

    q = await _abest(queued, repeats)
    await ref.stop()
    return {
        "direct_await_us": d * 1e6,
        "call_us": c * 1e6,
        "call_ratio": c / d,
        "call_blocking_us": b * 1e6,
        "call_queued_us": q * 1e6,
    }


async def bench_trio_roundtrip(n: int, repeats: int) -> float:
    req_send, req_recv = trio.open_memory_channel[Any](0)

    async def server() -> None:
        async for msg, reply in req_recv:
            await reply.send(msg.key + 1)

    async def run() -> float:
        t = time.perf_counter()
        for i in range(n):
            rs, rr = trio.open_memory_channel[Any](1)
            await req_send.send((Get(i), rs))
            await rr.receive()
        return (time.perf_counter() - t) / n

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        best = await _abest(run, repeats)
        nursery.cancel_scope.cancel()
    return best * 1e6


async def bench_oneway(n: int, repeats: int) -> float:
    async def run() -> float:
        ch = Channel(1024)

        async def producer() -> None:
            for i in range(n):
                await ch.send(i)
            ch.close()

        async def consumer() -> None:
            async for _ in ch:
                pass

        t = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            nursery.start_soon(producer)
        return (time.perf_counter() - t) / n

    return 1.0 / await _abest(run, repeats)


async def bench_cast(sup: Any, n: int, repeats: int) -> float:
    ref = await sup.start(ChildSpec("sink", Store))

    async def run() -> float:
        t = time.perf_counter()
        for i in range(n):
            cast(ref, Get(i))
        await call(ref, Get(0))  # queued behind all casts: returns when they are done
        return (time.perf_counter() - t) / n

    best = await _abest(run, repeats)
    await ref.stop()
    return 1.0 / best


async def bench_choose(n: int, repeats: int) -> float:
    import random

    chans = [Channel(1) for _ in range(8)]
    opts = [Recv(c) for c in chans]
    picks = [random.randrange(8) for _ in range(n)]

    async def run() -> float:
        t = time.perf_counter()
        for k in picks:
            chans[k].send_nowait(k)
            await choose(*opts)
        return (time.perf_counter() - t) / n

    return await _abest(run, repeats) * 1e6


async def bench_spawn_and_memory(sup_factory: Any, count: int) -> dict[str, float]:
    gc.collect()
    async with sup_factory() as sup:
        specs = [ChildSpec(f"vnode {i}", (lambda i=i: Idle(i)), TEMPORARY) for i in range(count)]
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        t = time.perf_counter()
        refs = [await sup.start(spec) for spec in specs]
        spawn = (time.perf_counter() - t) / count
        gc.collect()
        live = tracemalloc.get_traced_memory()[0] - base
        # The list of refs is the benchmark's, not the actors': subtract it.
        live -= sys.getsizeof(refs)
        # ChildSpecs were built before measuring; count them in (one per actor).
        spec_bytes = sys.getsizeof(specs[0]) + sys.getsizeof(specs[0].factory)
        del specs
        for r in refs:
            await r.stop()
        gc.collect()
        retired = tracemalloc.get_traced_memory()[0] - base - sys.getsizeof(refs)
        tracemalloc.stop()
    return {
        "spawn_us": spawn * 1e6,
        "bytes_per_live_actor": live / count + spec_bytes,
        "bytes_per_retired_actor": max(retired, 0) / count,
    }


async def bench_idle_task_memory(count: int) -> float:
    """The comparison point: a bare trio task parked on an Event."""
    ev = trio.Event()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(ev.wait)
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
        ev.set()
    tracemalloc.stop()
    return used / count


async def main_async(quick: bool) -> dict[str, float]:
    n = 20_000 if quick else 100_000
    repeats = 3 if quick else 7
    results: dict[str, float] = {}
    async with open_supervisor(name="bench") as sup:
        results.update(await bench_calls(sup, n, repeats))
        results["trio_roundtrip_us"] = await bench_trio_roundtrip(n // 10, repeats)
        results["oneway_msgs_per_s"] = await bench_oneway(n, repeats)
        results["cast_msgs_per_s"] = await bench_cast(sup, n, repeats)
        results["choose8_us"] = await bench_choose(n, repeats)
    results.update(await bench_spawn_and_memory(lambda: open_supervisor(name="mem"), 20_000))
    results["bytes_per_idle_trio_task"] = await bench_idle_task_memory(20_000)
    return results


_UNITS = {
    "direct_await_us": ("us", "direct await of the handler"),
    "call_us": ("us", "call to an idle actor"),
    "call_ratio": ("x", "call / direct await (target <= 10)"),
    "call_blocking_us": ("us", "call whose handler blocks once"),
    "call_queued_us": ("us", "call to a busy actor (queued, handed over)"),
    "trio_roundtrip_us": ("us", "trio memory-channel request/reply"),
    "oneway_msgs_per_s": ("/s", "one-way messages, buffered Channel"),
    "cast_msgs_per_s": ("/s", "casts handled by an actor"),
    "choose8_us": ("us", "choose over 8 channels, one ready"),
    "spawn_us": ("us", "start an actor under a supervisor"),
    "bytes_per_live_actor": ("B", "memory per idle live actor (target <= 2048)"),
    "bytes_per_retired_actor": ("B", "memory per retired actor record"),
    "bytes_per_idle_trio_task": ("B", "for comparison: a trio task waiting on an Event"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    args = ap.parse_args()
    results = trio.run(main_async, args.quick)
    print(f"{'figure':<26}{'value':>14}  unit  what")
    for key, value in results.items():
        unit, what = _UNITS.get(key, ("", ""))
        shown = f"{value:,.0f}" if value >= 1000 else f"{value:.3f}"
        print(f"{key:<26}{shown:>14}  {unit:<4}  {what}")
    if args.json:
        print(json.dumps({k: round(v, 4) for k, v in results.items()}))


if __name__ == "__main__":
    main()
