"""Property tests of channels and choose under random interleavings, closes, timeouts and
cancellations (hypothesis).

Every scenario runs senders and receivers as tasks on a few channels of random capacities.
Each operation is a plain send/receive, a nowait, or a choose over several channels, and
may carry a cancel deadline, a choose timeout, or default. Random extra checkpoints vary
the interleaving, and a closer closes channels at random moments. Time is a MockClock
that jumps when everything blocks, so deadlines fire in every blocked state.

The properties, checked after draining the channels:
  * exactly once: the multiset of values received equals the multiset of values whose
    send (or send option) completed; a value from an option that did not fire, from a
    cancelled or timed-out operation, or from a send that failed never shows up;
  * per-sender order: the values one receiver gets from one sender on one channel come in
    the order that sender sent them;
  * a choose reports exactly one option, and the value it reports came through that
    option's channel.
"""

from __future__ import annotations

import collections

import trio
import trio.testing
from chanos.personality import (
    Channel,
    ChannelClosed,
    EndOfChannel,
    Recv,
    Send,
    WouldBlock,
    choose,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

N_CHANNELS = 3

chan_sets = st.lists(st.integers(0, N_CHANNELS - 1), min_size=1, max_size=3, unique=True)
op_strategy = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["plain", "plain", "nowait", "choose", "choose"]),
        "chans": chan_sets,
        "mode": st.sampled_from(["block", "block", "timeout", "default"]),
        "deadline": st.one_of(st.none(), st.floats(0.0, 5.0)),
        "yields": st.integers(0, 3),
    }
)
scenario = st.fixed_dictionaries(
    {
        "caps": st.lists(st.integers(0, 2), min_size=N_CHANNELS, max_size=N_CHANNELS),
        "senders": st.lists(st.lists(op_strategy, max_size=6), min_size=1, max_size=3),
        "receivers": st.lists(st.lists(op_strategy, max_size=8), min_size=1, max_size=3),
        "closes": st.lists(
            st.tuples(st.integers(0, N_CHANNELS - 1), st.floats(0.0, 6.0)), max_size=2
        ),
    }
)


def run_scenario(sc: dict) -> None:
    committed: collections.Counter = collections.Counter()
    received: list[tuple[int, tuple]] = []  # (receiver id, value)

    async def main() -> None:
        chans = [Channel(c, name=f"c{i}") for i, c in enumerate(sc["caps"])]

        async def pause(n: int) -> None:
            for _ in range(n):
                await trio.lowlevel.checkpoint()

        async def sender(sid: int, ops: list[dict]) -> None:
            for seq, op in enumerate(ops):
                await pause(op["yields"])
                value_for = {c: (sid, seq, c) for c in op["chans"]}
                with trio.CancelScope() as cs:
                    if op["deadline"] is not None:
                        cs.deadline = trio.current_time() + op["deadline"]
                    try:
                        if op["kind"] == "plain":
                            c = op["chans"][0]
                            await chans[c].send(value_for[c])
                            committed[value_for[c]] += 1
                        elif op["kind"] == "nowait":
                            c = op["chans"][0]
                            try:
                                chans[c].send_nowait(value_for[c])
                                committed[value_for[c]] += 1
                            except WouldBlock:
                                pass
                        else:
                            opts = [Send(chans[c], value_for[c]) for c in op["chans"]]
                            idx, val = await _choose(opts, op["mode"])
                            if idx is not None:
                                assert val is None
                                committed[value_for[op["chans"][idx]]] += 1
                    except ChannelClosed:
                        pass

        async def receiver(rid: int, ops: list[dict]) -> None:
            for op in ops:
                await pause(op["yields"])
                with trio.CancelScope() as cs:
                    if op["deadline"] is not None:
                        cs.deadline = trio.current_time() + op["deadline"]
                    try:
                        if op["kind"] == "plain":
                            c = op["chans"][0]
                            v = await chans[c].receive()
                            assert v[2] == c
                            received.append((rid, v))
                        elif op["kind"] == "nowait":
                            c = op["chans"][0]
                            try:
                                v = chans[c].receive_nowait()
                                assert v[2] == c
                                received.append((rid, v))
                            except WouldBlock:
                                pass
                        else:
                            opts = [Recv(chans[c]) for c in op["chans"]]
                            idx, v = await _choose(opts, op["mode"])
                            if idx is not None:
                                assert v[2] == op["chans"][idx]
                                received.append((rid, v))
                    except EndOfChannel:
                        pass

        async def closer(c: int, at: float) -> None:
            await trio.sleep(at)
            chans[c].close()

        # Every task gets an overall deadline so no scenario can hang; the MockClock makes
        # that instant.
        with trio.move_on_after(100):
            async with trio.open_nursery() as nursery:
                for sid, ops in enumerate(sc["senders"]):
                    nursery.start_soon(sender, sid, ops)
                for rid, ops in enumerate(sc["receivers"]):
                    nursery.start_soon(receiver, rid, ops)
                for c, at in sc["closes"]:
                    nursery.start_soon(closer, c, at)
        # Drain what is still buffered (no sender is blocked any more).
        for ch in chans:
            while True:
                try:
                    received.append((-1, ch.receive_nowait()))
                except (WouldBlock, EndOfChannel):
                    break

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    got = collections.Counter(v for _, v in received)
    assert got == committed, (got, committed)
    last: dict[tuple[int, int, int], int] = {}
    for rid, (sid, seq, c) in received:
        key = (rid, sid, c)
        assert last.get(key, -1) < seq, f"order broken for receiver {rid} sender {sid} chan {c}"
        last[key] = seq


async def _choose(opts: list, mode: str) -> tuple:
    if mode == "timeout":
        return await choose(*opts, timeout=0.5)
    if mode == "default":
        return await choose(*opts, default=True)
    return await choose(*opts)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenario)
def test_exactly_once_in_order_under_random_interleavings(sc: dict) -> None:
    run_scenario(sc)


def test_many_to_many_rendezvous_stress() -> None:
    """A fixed, heavier interleaving: 4 senders x 3 receivers on rendezvous and buffered
    channels through choose, with cancellations; same properties."""
    op = {"kind": "choose", "chans": [0, 1, 2], "mode": "block", "deadline": 0.3, "yields": 1}
    sc = {
        "caps": [0, 1, 0],
        "senders": [[dict(op, yields=i % 3) for i in range(40)] for _ in range(4)],
        "receivers": [[dict(op, deadline=0.2 + r / 10) for _ in range(60)] for r in range(3)],
        "closes": [],
    }
    run_scenario(sc)
