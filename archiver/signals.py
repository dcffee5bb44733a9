"""Ctrl-C and SIGTERM for async jobs: the first stops a job gracefully, the second abandons
the work in flight (see `pipeline.Interrupt`)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from archiver.pipeline import Interrupt

CURRENT: contextvars.ContextVar[Interrupt | None] = contextvars.ContextVar(
    "archiver_interrupt", default=None
)

T = TypeVar("T")


def run_job(
    factory: Callable[[Interrupt], Coroutine[Any, Any, T]], *, doing: str | None = None
) -> tuple[T, bool]:
    """Run a job with SIGINT/SIGTERM turned into `Interrupt.trigger` calls; its result and
    whether it was interrupted. `doing`: the whole job is a start-up step (setup-bucket,
    check: nothing in flight to finish), which a signal stops at once (Interrupted)."""

    async def main() -> tuple[T, bool]:
        interrupt = Interrupt()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _on_signal, interrupt, sig)
        token = CURRENT.set(interrupt)
        try:
            if doing is None:
                return await factory(interrupt), interrupt.triggered
            async with interrupt.starting(doing):
                return await factory(interrupt), interrupt.triggered
        finally:
            CURRENT.reset(token)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return asyncio.run(main())


def run_async(
    factory: Callable[[Interrupt], Coroutine[Any, Any, T]], *, doing: str | None = None
) -> T:
    """`run_job` for jobs that report an interruption themselves."""
    return run_job(factory, doing=doing)[0]


def _on_signal(interrupt: Interrupt, sig: int) -> None:
    name = "Ctrl-C" if sig == signal.SIGINT else "SIGTERM"
    again = "press Ctrl-C again" if sig == signal.SIGINT else "send SIGTERM again"
    if interrupt.in_startup:
        print(f"\narchiver: stopping ({name})", file=sys.stderr, flush=True)
    elif interrupt.count == 0:
        print(
            f"\narchiver: stopping ({name}): finishing the work in flight (up to "
            f"{interrupt.grace_s:.0f} s); {again} to abandon it",
            file=sys.stderr,
            flush=True,
        )
    else:
        print("\narchiver: abandoning the work in flight", file=sys.stderr, flush=True)
    interrupt.trigger(name)


@contextlib.asynccontextmanager
async def starting(doing: str) -> AsyncIterator[None]:
    """`Interrupt.starting` of the job this runs in (run_job's), or nothing outside one."""
    interrupt = CURRENT.get()
    if interrupt is None:
        yield
        return
    async with interrupt.starting(doing):
        yield
