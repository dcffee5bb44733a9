"""Small pure policies with an injected clock: when to flush, when to retry, when to HEAD.
The pipeline and the adapters only apply them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from archiver.errors import DatabaseError

T = TypeVar("T")
log = logging.getLogger("archiver.database")


@dataclass(frozen=True)
class BatchPolicy:
    """When the writer flushes: at `max_rows` pending rows, or `max_age_s` after the oldest."""

    max_rows: int
    max_age_s: float

    def due(self, pending: int, oldest_at: float | None, now: float) -> bool:
        if pending >= self.max_rows:
            return True
        return pending > 0 and oldest_at is not None and now - oldest_at >= self.max_age_s


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff, capped, for at most `deadline_s` in all (injected clock)."""

    first_delay_s: float = 0.5
    max_delay_s: float = 5.0
    deadline_s: float = 60.0

    def delay(self, attempt: int, started_at: float, now: float) -> float | None:
        """Seconds to wait before retry number `attempt` (1-based), or None to give up."""
        wait = min(self.max_delay_s, self.first_delay_s * 2.0 ** (attempt - 1))
        if now - started_at + wait > self.deadline_s:
            return None
        return wait


async def retrying(
    policy: RetryPolicy,
    call: Callable[[], Awaitable[T]],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """`call()`, asked again under `policy` while it fails with a DatabaseError (connection
    lost, server restarting): the one retry loop of the database's callers (clock and sleep
    injected, for tests)."""
    started = clock()
    attempt = 0
    while True:
        try:
            value = await call()
        except DatabaseError as exc:
            attempt += 1
            wait = policy.delay(attempt, started, clock())
            if wait is None:
                raise
            OUTAGE.began(exc, clock(), policy.deadline_s)
            await sleep(wait)
        else:
            if OUTAGE.since is not None:  # this call (or another caller's) met the outage
                OUTAGE.ended(clock())
            return value


class Outage:
    """The database's state as the run's users read it: one plain line when it stops
    answering, one when it answers again, however many callers retry meanwhile (the
    driver's own words, "Failed to restore the pool connection floor", stay out of stderr)."""

    def __init__(self) -> None:
        self.since: float | None = None  # when the current outage began (None: answering)
        self.outages = 0

    def began(self, exc: BaseException, now: float, deadline_s: float) -> None:
        if self.since is None:
            self.since = now
            self.outages += 1
            log.warning(
                "the database is not answering (%s); retrying for up to %.0f s",
                plain_reason(exc),
                deadline_s,
            )

    def ended(self, now: float) -> None:
        if self.since is not None:
            log.warning("the database answers again (after %.1f s)", now - self.since)
            self.since = None


def plain_reason(exc: BaseException) -> str:
    """What a database error says, without the driver's names: `connection refused`."""
    text = str(exc).lower()
    for words, plain in (
        ("refused", "connection refused"),
        ("connection was closed", "connection lost"),
        ("connection lost", "connection lost"),
        ("terminat", "the server ended the connection"),
        ("shutting down", "the server is shutting down"),
        ("starting up", "the server is starting up"),
        ("timeout", "no answer in time"),
        ("timed out", "no answer in time"),
    ):
        if words in text:
            return plain
    return "connection lost"


OUTAGE = Outage()  # the process's one view of the database (a run's callers share it)


class ExistencePolicy:
    """Whether to HEAD before a PUT: a pure policy the uploader consults per file.

    A conditional PUT (`If-None-Match: *`) is one request for a new object, but for an
    object already stored it sends the whole body only to be refused. So archiver starts by
    HEADing first, which is what catches the rows a crashed or interrupted run uploaded but
    never recorded (they are the first ones the next run pages), switches to conditional
    PUTs once `misses_to_switch` HEADs in a row found nothing, and goes back to HEADing
    first whenever an object turns out to exist. A server that rejects conditional writes,
    or a versioned bucket (where a server may ignore them), keeps it HEADing first.

    A HEAD S3 refuses (403) counts as a miss: without s3:ListBucket that is how S3 answers
    for a missing key, and the conditional PUT decides. Once S3 is seen refusing to read an
    object that exists (write-only credentials, without s3:GetObject), no HEAD can tell
    anything and none is sent again.
    """

    def __init__(self, misses_to_switch: int, *, conditional_writes: bool = True) -> None:
        self.misses_to_switch = misses_to_switch
        self.conditional_writes = conditional_writes
        self.readable = True  # objects can be read back (HEAD)
        self.head_first = True
        self._misses = 0

    def absent(self) -> None:
        """A HEAD found no object."""
        self._misses += 1
        if self.conditional_writes and self._misses >= self.misses_to_switch:
            self.head_first = False

    def present(self) -> None:
        """An object was already there (HEAD hit, or a conditional PUT was refused)."""
        self._misses = 0
        self.head_first = self.readable

    def no_conditional_writes(self) -> None:
        """The server does not implement If-None-Match on PUT, or cannot be trusted to
        honour it (a versioned bucket)."""
        self.conditional_writes = False
        self.head_first = self.readable

    def unreadable(self) -> None:
        """S3 refused to read back an object that exists: HEADs tell nothing here."""
        self.readable = False
        self.head_first = False
