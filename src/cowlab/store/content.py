"""Deterministic file content: the same (pattern, seed, size) always gives the same bytes.

Patterns are chosen so no filesystem can cheat by accident: `random` is incompressible and every
block differs (no sparse or dedup wins); `zero`, `text` (compressible) and `repeat` (one 128 KiB
block over and over, so block-level dedup finds it) exist for workloads that study exactly that.
"""

from __future__ import annotations

import io
import random

CHUNK = 1 << 20
REPEAT_UNIT = 128 << 10
PATTERNS = ("random", "zero", "text", "repeat")


def _chunk(pattern: str, seed: int, index: int, n: int) -> bytes:
    if pattern == "random":
        return random.Random(f"{seed}:{index}").randbytes(n)
    if pattern == "zero":
        return bytes(n)
    if pattern == "repeat":
        unit = random.Random(f"{seed}:unit").randbytes(REPEAT_UNIT)
        return (unit * (CHUNK // REPEAT_UNIT))[:n]
    if pattern == "text":
        lines, total, line_no = [], 0, index * 20000
        while total < n:
            s = f"cowlab seed {seed} line {line_no:09d} the quick brown fox jumps over the lazy dog\n"
            lines.append(s)
            total += len(s)
            line_no += 1
        return "".join(lines).encode()[:n]
    raise ValueError(f"unknown content pattern {pattern!r}")


class Content(io.RawIOBase):
    """A readable stream of generated content, so tar writing never holds a file in memory."""

    def __init__(self, size: int, pattern: str = "random", seed: int = 0):
        self.size, self.pattern, self.seed = size, pattern, seed
        self.pos = 0
        self._buf = b""
        self._index = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.pos >= self.size:
            return 0
        if not self._buf:
            n = min(CHUNK, self.size - self._index * CHUNK)
            self._buf = _chunk(self.pattern, self.seed, self._index, n)
            self._index += 1
        k = min(len(b), len(self._buf))
        b[:k] = self._buf[:k]
        self._buf = self._buf[k:]
        self.pos += k
        return k


def generate(size: int, pattern: str = "random", seed: int = 0) -> bytes:
    return Content(size, pattern, seed).read()
