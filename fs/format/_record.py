"""Shared machinery for fixed-size on-disk records declared with construct.

A record class names a compiled construct ``Struct`` that covers every byte of the
structure (reserved and padding areas included, as ``Bytes`` fields), so that
``parse(raw).build() == raw`` for any input: bytes we do not interpret survive a
round trip untouched.
"""

from __future__ import annotations

import errno
from typing import Any, ClassVar, Self

from construct import Compiled, Struct


class CorruptError(OSError):
    """A structure read from the image is malformed (errno EIO, as the design asks)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


def field_names(struct: Struct) -> tuple[str, ...]:
    """The names of a Struct's named fields, in on-disk order."""
    return tuple(sc.name for sc in struct.subcons if sc.name)


class Record:
    """Base of mutable fixed-size records: named attributes, parse() and build().

    Subclasses set ``_struct`` (the declaration), and call ``_setup()`` once at class
    creation, which compiles it and records the field names and the size.
    """

    __slots__ = ()
    _struct: ClassVar[Struct]
    _compiled: ClassVar[Compiled]
    _names: ClassVar[tuple[str, ...]]
    SIZE: ClassVar[int]

    @classmethod
    def _setup(cls) -> None:
        cls._compiled = cls._struct.compile()
        cls._names = field_names(cls._struct)
        cls.SIZE = cls._struct.sizeof()

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Self:
        """Decode ``SIZE`` bytes (extra trailing bytes are ignored)."""
        if len(data) < cls.SIZE:
            raise CorruptError(f"{cls.__name__}: need {cls.SIZE} bytes, got {len(data)}")
        c = cls._compiled.parse(bytes(data[: cls.SIZE]))
        obj = cls.__new__(cls)
        for name in cls._names:
            setattr(obj, name, c[name])
        return obj

    @classmethod
    def new(cls, **fields: Any) -> Self:
        """A record of all-zero bytes, with the given fields set."""
        obj = cls.parse(bytes(cls.SIZE))
        for name, value in fields.items():
            setattr(obj, name, value)
        return obj

    def build(self) -> bytes:
        """Encode to exactly ``SIZE`` bytes."""
        return self._compiled.build({name: getattr(self, name) for name in self._names})

    def copy(self) -> Self:
        obj = type(self).__new__(type(self))
        for name in self._names:
            setattr(obj, name, getattr(self, name))
        return obj

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self._names)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{n}={getattr(self, n)!r}" for n in self._names if not n.startswith("reserved")
        )
        return f"{type(self).__name__}({shown})"


def split64(value: int, hi_bits: int = 32) -> tuple[int, int]:
    """Split a combined value into (lo32, hi) checking it fits in 32 + hi_bits bits."""
    if value < 0 or value >> (32 + hi_bits):
        raise ValueError(f"value {value} does not fit in {32 + hi_bits} bits")
    return value & 0xFFFFFFFF, value >> 32
