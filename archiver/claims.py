"""Claims: several `archiver upload` processes share one backlog through PostgreSQL.

Each process claims the rows it pages (leases committed before any upload), renews the
leases of the rows it still works on, and releases each claim in the statement that
records its row. The rows of a process that died are taken by others once its leases
expire. No session state is used, so this works through transaction-mode poolers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from archiver.db import Database, RowFilter
from archiver.errors import DatabaseError
from archiver.models import MediaRow
from archiver.policies import RetryPolicy

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 300.0
RENEWALS_PER_LEASE = 3  # renew a third of the way through, so two renewals may fail


def new_owner() -> str:
    """An owner name that says where a claim comes from: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


PID_MAX = 4_194_304  # Linux's largest possible pid (PID_MAX_LIMIT on 64-bit)


def dead_here(owner: str) -> bool:
    """Whether `owner` was a process on this host that no longer runs. Errs towards "alive":
    a reused pid only makes us wait for the lease, as for a process on another machine.
    The owner comes from a table anyone with access can write: on this host, an owner whose
    pid no process can have (not a number, 0, past PID_MAX) names no live process."""
    host, _, rest = owner.partition(":")
    if host != socket.gethostname():
        return False
    pid_text = rest.partition(":")[0]
    if not (pid_text.isascii() and pid_text.isdigit()):
        return True
    pid = int(pid_text)
    if not 0 < pid <= PID_MAX:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, under another user
    return False


@dataclass
class Claims:
    db: Database
    row_filter: RowFilter
    lease_s: float = DEFAULT_LEASE_S
    owner: str = field(default_factory=new_owner)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    held: set[str] = field(default_factory=set)

    async def take_over_the_dead(self) -> int:
        """Expire the claims of processes on this host that died (a crash, kill -9), so that
        a re-run finishes their rows at once; how many owners that was."""
        dead = [o for o in await self.db.live_owners() if o != self.owner and dead_here(o)]
        for owner in dead:
            log.info("taking over the claims of %s, which is no longer running", owner)
            await self.db.expire(owner)
        return len(dead)

    async def rows(self, *, limit: int | None, page_rows: int) -> AsyncIterator[MediaRow]:
        """Claim and yield rows in media_id order, at most `limit`."""
        await self.take_over_the_dead()
        remaining = limit
        after: str | None = None
        while remaining is None or remaining > 0:
            size = page_rows if remaining is None else min(page_rows, remaining)
            claim = functools.partial(
                self.db.claim_page,
                self.row_filter,
                owner=self.owner,
                lease_s=self.lease_s,
                after=after,
                limit=size,
            )
            page = await self.db.retrying(self.retry, claim)
            for row in page.rows:
                self.held.add(row.media_id)
                yield row
            if remaining is not None:
                remaining -= len(page.rows)
            if page.candidates < size or page.last_seen is None:
                return
            after = page.last_seen

    def finished(self, media_id: str) -> None:
        """The row's outcome is known: its lease need not be renewed any more."""
        self.held.discard(media_id)

    async def keep(self, done: asyncio.Event) -> None:
        """Renew the leases of the rows still held until `done` is set."""
        interval = self.lease_s / RENEWALS_PER_LEASE
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), timeout=interval)
                return
            except TimeoutError:
                pass
            if self.held:
                try:
                    await self.db.renew(self.owner, sorted(self.held), self.lease_s)
                except DatabaseError as exc:
                    log.warning("could not renew claims (will try again): %s", exc)

    async def release(self) -> None:
        """Drop every claim of this process (rows that failed become free for others)."""
        try:
            await self.db.release(self.owner)
        except DatabaseError as exc:
            log.warning("could not release claims (they expire by themselves): %s", exc)
