"""chanos.drivers: block-device driver actors.

Each block device is driven by one driver actor; clients talk to it with the messages of
``chanos.drivers.protocol`` (``await call(ref, Read(offset, length))``) or through the
``BlockDevice`` client. Drivers: ``ImageFileDriver`` (an image file or host block device),
``RamDiskDriver``, ``FaultInjectionDriver`` and ``LatencyDriver`` (wrapping another
driver). Device events (I/O error, read-only, removed) go to subscribed channels.
"""

from chanos.drivers.base import BlockDriver
from chanos.drivers.client import BlockDevice
from chanos.drivers.fault import FaultInjectionDriver
from chanos.drivers.fault_protocol import (
    ClearErrors,
    Crash,
    FaultStats,
    GetLog,
    GetStats,
    InjectError,
    Remove,
    SetReadOnly,
)
from chanos.drivers.image import ImageFileDriver
from chanos.drivers.latency import LatencyDriver
from chanos.drivers.protocol import (
    DeviceEvent,
    DeviceInfo,
    Discard,
    Flush,
    Info,
    IOErrorEvent,
    Prefetch,
    Read,
    ReadOnlyEvent,
    RemovedEvent,
    Subscribe,
    Unsubscribe,
    Write,
)
from chanos.drivers.ramdisk import RamDiskDriver
from chanos.drivers.writelog import CrashOutcome, LoggedFlush, LoggedWrite, WriteLog

__all__ = [
    "BlockDevice",
    "BlockDriver",
    "ClearErrors",
    "Crash",
    "CrashOutcome",
    "DeviceEvent",
    "DeviceInfo",
    "Discard",
    "FaultInjectionDriver",
    "FaultStats",
    "Flush",
    "GetLog",
    "GetStats",
    "IOErrorEvent",
    "ImageFileDriver",
    "Info",
    "InjectError",
    "LatencyDriver",
    "LoggedFlush",
    "LoggedWrite",
    "Prefetch",
    "RamDiskDriver",
    "Read",
    "ReadOnlyEvent",
    "Remove",
    "RemovedEvent",
    "SetReadOnly",
    "Subscribe",
    "Unsubscribe",
    "Write",
    "WriteLog",
]
