"""The engine's seeded random numbers: xorshift32, a generator whose whole state is one int.

The random page allocator and the random schedule draw a number per allocation and per step.
Python's ``random.Random`` (Mersenne Twister) has a state of 625 ints: every checkpoint of a
replay that draws from it copied 5 KB (22 KB as Python objects), a few hundred bytes per event,
and restoring one cost a ``setstate``. xorshift32 (Marsaglia, "Xorshift RNGs", 2003) keeps 32
bits: a checkpoint stores one int. Its quality is ample for picking a region or a CPU, and it
is exact integer arithmetic on values below 2**32 (the same draws on every Python and when
compiled), so replays stay byte-identical.
"""

from __future__ import annotations

from typing import Final

_MASK: Final = 0xFFFFFFFF


def _mix(x: int) -> int:
    """A 32-bit avalanche of ``x`` (lowbias32, by Chris Wellons): spreads a seed's bits."""
    x &= _MASK
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK
    x ^= x >> 16
    return x


class XorShift32:
    """xorshift32 (shifts 13, 17, 5); never in state 0."""

    __slots__ = ("state",)

    def __init__(self, seed: int, stream: int) -> None:
        """Seeded by ``seed`` (any int the settings allow, up to 2**63 - 1) and a ``stream``
        number, so that the allocator and the scheduler draw independent sequences."""
        x = _mix(seed ^ (seed >> 32) ^ (stream * 0x9E3779B9))
        self.state = x if x else 0x6D2B79F5

    def next32(self) -> int:
        x = self.state
        x ^= (x << 13) & _MASK
        x ^= x >> 17
        x ^= (x << 5) & _MASK
        self.state = x
        return x

    def below(self, n: int) -> int:
        """A uniform int in ``[0, n)`` for ``1 <= n <= 2**32`` (rejection on the top bits)."""
        k = (n - 1).bit_length()
        if k == 0:
            return 0
        while True:
            r = self.next32() >> (32 - k)
            if r < n:
                return r
