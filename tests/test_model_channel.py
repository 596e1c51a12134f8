"""Channels and choose: semantics, atomicity under cancellation and close, fairness."""

from __future__ import annotations

import collections

import pytest
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
    open_scope,
)

# -- basic channel semantics ----------------------------------------------------------------


async def test_buffered_fifo_and_nowait() -> None:
    ch = Channel(3)
    for v in "abc":
        ch.send_nowait(v)
    with pytest.raises(WouldBlock):
        ch.send_nowait("d")
    assert len(ch) == 3
    assert [ch.receive_nowait() for _ in range(3)] == ["a", "b", "c"]
    with pytest.raises(WouldBlock):
        ch.receive_nowait()


async def test_rendezvous_send_waits_for_a_receiver() -> None:
    ch = Channel()
    done = []

    async def sender() -> None:
        await ch.send("x")
        done.append("sent")

    async with open_scope() as scope:
        scope.start(sender)
        await trio.testing.wait_all_tasks_blocked()
        assert done == []  # no receiver yet: the send must not have completed
        with pytest.raises(WouldBlock):
            ch.send_nowait("y")  # capacity 0 and no receiver waiting
        assert await ch.receive() == "x"
    assert done == ["sent"]


async def test_rendezvous_nowait_hands_to_a_waiting_receiver() -> None:
    ch = Channel()
    got = []

    async def receiver() -> None:
        got.append(await ch.receive())

    async with open_scope() as scope:
        scope.start(receiver)
        await trio.testing.wait_all_tasks_blocked()
        ch.send_nowait(7)
    assert got == [7]


async def test_blocked_sender_refills_buffer_in_order() -> None:
    ch = Channel(1)
    async with open_scope() as scope:
        for v in range(4):
            scope.start(ch.send, v)
            await trio.testing.wait_all_tasks_blocked()
        assert [await ch.receive() for _ in range(4)] == [0, 1, 2, 3]


async def test_close_drains_then_end_of_channel() -> None:
    ch = Channel(2)
    await ch.send(1)
    await ch.send(2)
    ch.close()
    assert ch.closed
    with pytest.raises(ChannelClosed):
        await ch.send(3)
    with pytest.raises(ChannelClosed):
        ch.send_nowait(3)
    assert await ch.receive() == 1
    assert ch.receive_nowait() == 2
    with pytest.raises(EndOfChannel):
        await ch.receive()
    with pytest.raises(EndOfChannel):
        ch.receive_nowait()
    ch.close()  # idempotent


async def test_close_wakes_blocked_receivers_and_senders() -> None:
    rx, tx = Channel(), Channel()
    errors: list[type[BaseException]] = []

    async def recv() -> None:
        try:
            await rx.receive()
        except EndOfChannel:
            errors.append(EndOfChannel)

    async def send() -> None:
        try:
            await tx.send(1)
        except ChannelClosed:
            errors.append(ChannelClosed)

    async with open_scope() as scope:
        scope.start(recv)
        scope.start(send)
        await trio.testing.wait_all_tasks_blocked()
        rx.close()
        tx.close()
    assert sorted(e.__name__ for e in errors) == ["ChannelClosed", "EndOfChannel"]


async def test_async_iteration_and_channels_through_channels() -> None:
    outer: Channel = Channel(4)
    inner = Channel(4)
    await outer.send(inner)
    for v in range(3):
        await inner.send(v)
    inner.close()
    outer.close()
    got = []
    async for ch in outer:
        async for v in ch:
            got.append(v)
    assert got == [0, 1, 2]


async def test_cancelled_receive_takes_nothing() -> None:
    ch = Channel()
    with trio.move_on_after(0.01):
        await ch.receive()
    # The cancelled receiver must not be registered any more: a nowait send finds no one.
    with pytest.raises(WouldBlock):
        ch.send_nowait(1)


async def test_cancelled_send_leaves_nothing_behind() -> None:
    ch = Channel()
    with trio.move_on_after(0.01):
        await ch.send("lost?")
    with pytest.raises(WouldBlock):
        ch.receive_nowait()


async def test_receive_with_cancel_pending_does_not_consume() -> None:
    ch = Channel(1)
    ch.send_nowait(1)
    with trio.CancelScope() as cs:
        cs.cancel()
        await ch.receive()
    assert cs.cancelled_caught
    assert ch.receive_nowait() == 1


# -- choose ---------------------------------------------------------------------------------


async def test_choose_ready_receive_and_send() -> None:
    a, b = Channel(1), Channel(1)
    b.send_nowait("B")
    assert await choose(Recv(a), Recv(b)) == (1, "B")
    assert await choose(Send(a, "A"), Recv(b), timeout=1) == (0, None)
    assert a.receive_nowait() == "A"


async def test_choose_default_and_timeout() -> None:
    a = Channel()
    assert await choose(Recv(a), default=True) == (None, None)
    assert await choose(Send(a, 1), timeout=0) == (None, None)
    t0 = trio.current_time()
    assert await choose(Recv(a), timeout=0.02) == (None, None)
    assert trio.current_time() - t0 >= 0.02
    # Nothing is left registered after a timeout.
    with pytest.raises(WouldBlock):
        a.send_nowait(1)


async def test_choose_blocks_until_one_fires_exactly_once() -> None:
    a, b, c = Channel(), Channel(), Channel()
    result = []

    async def chooser() -> None:
        result.append(await choose(Recv(a), Send(b, "to-b"), Recv(c)))

    async with open_scope() as scope:
        scope.start(chooser)
        await trio.testing.wait_all_tasks_blocked()
        c.send_nowait("from-c")  # completes the chooser synchronously
        # The other options are withdrawn: nobody takes from b, nobody waits on a.
        with pytest.raises(WouldBlock):
            b.receive_nowait()
        with pytest.raises(WouldBlock):
            a.send_nowait("x")
    assert result == [(2, "from-c")]


async def test_choose_send_on_rendezvous_completes_only_with_receiver() -> None:
    a = Channel()
    result = []

    async def chooser() -> None:
        result.append(await choose(Send(a, 42)))

    async with open_scope() as scope:
        scope.start(chooser)
        await trio.testing.wait_all_tasks_blocked()
        assert result == []
        assert await a.receive() == 42
    assert result == [(0, None)]


async def test_choose_closed_channel_fires_with_index() -> None:
    a, b = Channel(), Channel()

    async def closer() -> None:
        await trio.testing.wait_all_tasks_blocked()
        b.close()

    async with open_scope() as scope:
        scope.start(closer)
        with pytest.raises(EndOfChannel) as info:
            await choose(Recv(a), Recv(b))
    assert info.value.index == 1
    with pytest.raises(ChannelClosed) as info2:
        await choose(Recv(a), Send(b, 1))
    assert info2.value.index == 1


async def test_choose_cancelled_is_atomic() -> None:
    a, b = Channel(), Channel()
    with trio.move_on_after(0.01) as cs:
        await choose(Recv(a), Send(b, "v"))
    assert cs.cancelled_caught
    with pytest.raises(WouldBlock):
        b.receive_nowait()
    with pytest.raises(WouldBlock):
        a.send_nowait(1)


async def test_choose_same_channel_send_and_receive_does_not_match_itself() -> None:
    a = Channel()
    assert await choose(Recv(a), Send(a, 1), default=True) == (None, None)
    with trio.move_on_after(0.01) as cs:
        await choose(Recv(a), Send(a, 1))
    assert cs.cancelled_caught


async def test_choose_no_options_with_timeout() -> None:
    assert await choose(timeout=0.001) == (None, None)
    assert await choose(default=True) == (None, None)


async def test_waiting_receivers_served_fifo() -> None:
    ch = Channel()
    order = []

    async def recv(tag: int) -> None:
        order.append((tag, await ch.receive()))

    async with open_scope() as scope:
        for tag in range(3):
            scope.start(recv, tag)
            await trio.testing.wait_all_tasks_blocked()
        for v in "xyz":
            await ch.send(v)
    assert sorted(order) == [(0, "x"), (1, "y"), (2, "z")]


@pytest.mark.parametrize("ready", [(0, 1), (0, 2), (1, 3), (0, 1, 2, 3)])
async def test_choose_fair_among_ready_options(ready: tuple[int, ...]) -> None:
    """With several options ready every time, each fires about equally often. A 'first
    ready wins' or a 'random start, rotate' policy fails the (0, 2) and (1, 3) cases."""
    chans = [Channel(1) for _ in range(4)]
    counts: collections.Counter[int] = collections.Counter()
    rounds = 4000
    for _ in range(rounds):
        for i in ready:
            if not len(chans[i]):
                chans[i].send_nowait(i)
        idx, val = await choose(*(Recv(c) for c in chans))
        assert idx == val
        counts[idx] += 1
    assert set(counts) == set(ready)
    share = rounds / len(ready)
    for i in ready:
        assert abs(counts[i] - share) < 0.12 * share, counts


async def test_unfired_send_option_never_delivers_under_contention() -> None:
    """Two choosers race to send on the same pair of channels; one receiver takes one
    value. Exactly one value is delivered, and only its chooser reports success."""
    a, b = Channel(), Channel()
    fired = []

    async def chooser(tag: str) -> None:
        with trio.move_on_after(0.05):
            idx, _ = await choose(Send(a, (tag, "a")), Send(b, (tag, "b")))
            fired.append((tag, "ab"[idx]))

    async with open_scope() as scope:
        scope.start(chooser, "p")
        scope.start(chooser, "q")
        await trio.testing.wait_all_tasks_blocked()
        got = await a.receive()
    assert fired == [got]
