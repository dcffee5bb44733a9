"""A byte budget: bounds the file content held in memory across all workers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class ByteBudget:
    """A counting semaphore measured in bytes. A request larger than the whole budget is
    clipped to it, so it waits for everything else to finish and then runs alone."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self._changed = asyncio.Condition()

    def _clip(self, nbytes: int) -> int:
        return min(max(nbytes, 0), self.capacity)

    async def acquire(self, nbytes: int) -> int:
        """Wait until `nbytes` fit, take them; returns what to give back to `release`."""
        n = self._clip(nbytes)
        async with self._changed:
            await self._changed.wait_for(lambda: self.used + n <= self.capacity)
            self.used += n
            self.peak = max(self.peak, self.used)
        return n

    async def release(self, taken: int) -> None:
        """Give back what `acquire` returned."""
        async with self._changed:
            self.used -= taken
            self._changed.notify_all()

    @asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[None]:
        """Hold `nbytes` of the budget for the duration of the block."""
        taken = await self.acquire(nbytes)
        try:
            yield
        finally:
            await asyncio.shield(self.release(taken))


class BufferPool:
    """Part buffers, reused. A fresh 8 MiB buffer costs the kernel about 3 ms of page faults
    and zeroing before the first byte is read into it (glibc hands allocations of 1 MiB or
    more straight back: see `cli.pin_mmap_threshold`), against 1 ms for the read itself; a
    large file is read into buffers taken here, returned when its part is stored. At most
    `keep` are kept: as many as the byte budget lets be in flight."""

    def __init__(self, size: int, keep: int) -> None:
        self.size = size
        self.keep = keep
        self._free: list[bytearray] = []

    def take(self, nbytes: int) -> memoryview:
        """A writable buffer of `nbytes`: a kept one for a whole part (`size`), a fresh one of
        just that size otherwise (the last part of a file, a single PUT), so that the byte
        budget, which counts `nbytes`, bounds what is held."""
        if nbytes != self.size:
            return memoryview(bytearray(nbytes))
        return memoryview(self._free.pop() if self._free else bytearray(self.size))

    def give(self, view: memoryview) -> None:
        """Give back what `take` returned, once nothing sends from it any more."""
        buffer = view.obj
        if (
            isinstance(buffer, bytearray)
            and len(buffer) == self.size
            and len(self._free) < self.keep
        ):
            self._free.append(buffer)


class Throttle:
    """`--max-bandwidth`: paces the bytes sent by every worker together to `rate` bytes per
    second. Each body (a PUT or a part) reserves its time on one shared schedule before it
    is sent, so a run holds the rate on average without any burst above it: the first body
    goes at once, each next one when the ones before it would have taken their time at
    the rate."""

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._next = 0.0  # when the schedule is free again

    def delay(self, nbytes: int) -> float:
        """Reserve `nbytes` on the schedule: how long to wait before sending them."""
        now = self._clock()
        start = max(now, self._next)
        self._next = start + nbytes / self.rate
        return start - now

    async def take(self, nbytes: int) -> None:
        wait = self.delay(nbytes)
        if wait > 0:
            await asyncio.sleep(wait)
