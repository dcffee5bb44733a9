"""Ctrl-C and SIGTERM for async jobs: the first stops a job gracefully, the second abandons
the work in flight (see `pipeline.Interrupt`)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from archiver.pipeline import Interrupt

T = TypeVar("T")


def run_job(factory: Callable[[Interrupt], Coroutine[Any, Any, T]]) -> tuple[T, bool]:
    """Run a job with SIGINT/SIGTERM turned into `Interrupt.trigger` calls; its result and
    whether it was interrupted."""

    async def main() -> tuple[T, bool]:
        interrupt = Interrupt()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _on_signal, interrupt)
        try:
            return await factory(interrupt), interrupt.triggered
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return asyncio.run(main())


def run_async(factory: Callable[[Interrupt], Coroutine[Any, Any, T]]) -> T:
    """`run_job` for jobs that report an interruption themselves."""
    return run_job(factory)[0]


def _on_signal(interrupt: Interrupt) -> None:
    if interrupt.count == 0:
        print(
            f"\narchiver: stopping: finishing the work in flight (up to {interrupt.grace_s:.0f} s);"
            " press Ctrl-C again to abandon it",
            file=sys.stderr,
            flush=True,
        )
    else:
        print("\narchiver: abandoning the work in flight", file=sys.stderr, flush=True)
    interrupt.trigger()
