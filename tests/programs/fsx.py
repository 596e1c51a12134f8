#!/usr/bin/env python3
"""fsx-style random-operation exerciser: one file, a shadow copy in memory, checked always.

    fsx.py FILE [--ops N] [--seed S] [--max-size BYTES] [--max-len BYTES]

Random mix of: write at a random offset (sometimes past the end, leaving a hole), read
of a random range (compared with the shadow byte for byte), truncate up or down, hole
punch (fallocate PUNCH_HOLE|KEEP_SIZE, when the file system supports it), fsync, and
close + reopen (so reads also come back through a fresh open). After the run the whole
file is read back and compared; its size must match. On a mismatch it prints the last
operations and the first differing offset and exits 1.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import os
import random
import sys
from collections import deque

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def punch_hole(fd: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class Mismatch(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-size", type=int, default=4 << 20)
    ap.add_argument("--max-len", type=int, default=256 << 10)
    a = ap.parse_args(argv)

    rnd = random.Random(a.seed)
    shadow = bytearray()
    history: deque[str] = deque(maxlen=25)
    can_punch = True
    fd = os.open(a.file, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)

    def check(off: int, got: bytes, want: bytes | bytearray, what: str) -> None:
        if got != want:
            first = next((i for i, (x, y) in enumerate(zip(got, want, strict=False)) if x != y),
                         min(len(got), len(want)))  # fmt: skip
            raise Mismatch(
                f"{what}: mismatch at file offset {off + first} "
                f"(got {len(got)} bytes, want {len(want)})"
            )

    try:
        for n in range(a.ops):
            op = rnd.choices(
                ("write", "read", "truncate", "punch", "fsync", "reopen"),
                weights=(40, 35, 8, 7, 4, 6),
            )[0]
            size = len(shadow)
            if op == "write":
                off = rnd.randrange(0, min(a.max_size, size + a.max_len) + 1)
                ln = rnd.randrange(1, a.max_len + 1)
                if off + ln > a.max_size:
                    ln = max(1, a.max_size - off)
                data = rnd.randbytes(ln)
                history.append(f"{n}: write off={off} len={ln}")
                done = os.pwrite(fd, data, off)
                if done != ln:
                    raise Mismatch(f"short write {done} of {ln}")
                if off > size:
                    shadow.extend(bytes(off - size))
                shadow[off : off + ln] = data
            elif op == "read":
                off = rnd.randrange(0, size + 1) if size else 0
                ln = rnd.randrange(1, a.max_len + 1)
                history.append(f"{n}: read off={off} len={ln}")
                check(off, os.pread(fd, ln, off), shadow[off : off + ln], f"op {n} read")
            elif op == "truncate":
                new = rnd.randrange(0, a.max_size + 1) if rnd.random() < 0.5 else size // 2
                history.append(f"{n}: truncate {size} -> {new}")
                os.ftruncate(fd, new)
                if new < size:
                    del shadow[new:]
                else:
                    shadow.extend(bytes(new - size))
            elif op == "punch" and can_punch and size:
                off = rnd.randrange(0, size)
                ln = rnd.randrange(1, min(a.max_len, size - off) + 1)
                history.append(f"{n}: punch off={off} len={ln}")
                try:
                    punch_hole(fd, off, ln)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                        raise
                    can_punch = False
                    history.append(f"{n}: hole punch not supported")
                else:
                    shadow[off : off + ln] = bytes(ln)
            elif op == "fsync":
                history.append(f"{n}: fsync")
                os.fsync(fd)
            elif op == "reopen":
                history.append(f"{n}: close+reopen")
                os.close(fd)
                fd = os.open(a.file, os.O_RDWR)
            if os.fstat(fd).st_size != len(shadow):
                raise Mismatch(f"op {n}: size {os.fstat(fd).st_size}, want {len(shadow)}")
        os.close(fd)
        with open(a.file, "rb") as f:
            check(0, f.read(), shadow, "final read-back")
    except (Mismatch, OSError) as exc:
        print(f"fsx {a.file} seed {a.seed}: FAILED: {exc}", file=sys.stderr)
        for line in history:
            print("  " + line, file=sys.stderr)
        return 1
    print(f"fsx {a.file} seed {a.seed}: {a.ops} ops OK, final size {len(shadow)}, "
          f"punch {'yes' if can_punch else 'unsupported'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
