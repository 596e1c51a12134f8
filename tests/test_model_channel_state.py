"""Stateful model test of one channel's nowait interface against a reference model."""

from __future__ import annotations

import collections

import pytest
from chanos.personality import Channel, ChannelClosed, EndOfChannel, WouldBlock
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule


class ChannelMachine(RuleBasedStateMachine):
    @initialize(capacity=st.integers(0, 4))
    def make(self, capacity: int) -> None:
        self.ch = Channel(capacity)
        self.capacity = capacity
        self.model: collections.deque[int] = collections.deque()
        self.closed = False
        self.next = 0

    @rule()
    def send(self) -> None:
        v = self.next
        self.next += 1
        if self.closed:
            with pytest.raises(ChannelClosed):
                self.ch.send_nowait(v)
        elif len(self.model) < self.capacity:
            self.ch.send_nowait(v)
            self.model.append(v)
        else:
            with pytest.raises(WouldBlock):
                self.ch.send_nowait(v)

    @rule()
    def receive(self) -> None:
        if self.model:
            assert self.ch.receive_nowait() == self.model.popleft()
        elif self.closed:
            with pytest.raises(EndOfChannel):
                self.ch.receive_nowait()
        else:
            with pytest.raises(WouldBlock):
                self.ch.receive_nowait()

    @rule()
    def close(self) -> None:
        self.ch.close()
        self.closed = True

    @invariant()
    def matches(self) -> None:
        if hasattr(self, "ch"):
            assert len(self.ch) == len(self.model)
            assert self.ch.closed == self.closed


TestChannelMachine = ChannelMachine.TestCase
TestChannelMachine.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
