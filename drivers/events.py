"""Device events: fan-out of I/O-error, read-only and removed notices to subscribers.

A subscriber hands the driver a buffered Channel (``Subscribe(channel)``); the driver
publishes with ``send_nowait`` so a slow or absent reader can never stall the device.
An event that does not fit is dropped and counted per subscriber; the next event that
does get through carries the count in ``lost_before``. A subscriber whose channel was
closed is forgotten.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from chanos.drivers.protocol import DeviceEvent
from chanos.personality import ChannelClosed, WouldBlock


class EventBus:
    def __init__(self) -> None:
        # channel -> number of events it missed since the last one delivered
        self._subs: dict[Any, int] = {}

    def __len__(self) -> int:
        return len(self._subs)

    def subscribe(self, channel: Any) -> None:
        self._subs.setdefault(channel, 0)

    def unsubscribe(self, channel: Any) -> None:
        self._subs.pop(channel, None)

    def publish(self, event: DeviceEvent) -> None:
        if not self._subs:
            return
        for ch, lost in list(self._subs.items()):
            ev = dataclasses.replace(event, lost_before=lost) if lost else event
            try:
                ch.send_nowait(ev)
            except WouldBlock:
                self._subs[ch] = lost + 1
            except ChannelClosed:
                del self._subs[ch]
            else:
                self._subs[ch] = 0
