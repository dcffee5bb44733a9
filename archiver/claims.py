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
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from archiver.db import Database
from archiver.errors import DatabaseError
from archiver.models import Holder, MediaRow, RowResult
from archiver.policies import OUTAGE, RetryPolicy, plain_reason
from archiver.settings import DEFAULT_LEASE_S
from archiver.sql import RowFilter

log = logging.getLogger(__name__)


# Decides what it can of a page of rows before any is claimed: one item per row, in order: a
# RowResult for a row settled (its file is missing, a known problem set aside), the row
# itself for one to work on.
Settle = Callable[[list[MediaRow]], Awaitable[list[MediaRow | RowResult]]]


def within_limit(settled: Sequence[MediaRow | RowResult], room: int | None) -> int:
    """How many items of a settled page a run takes with `room` rows left to work on (None:
    no limit): up to the `room`-th row to work on, and the settled results before the next
    one. A settled result (a missing file, a known problem set aside) takes no room, so runs
    with `--limit` move on past them instead of stopping at the same rows every time."""
    if room is None:
        return len(settled)
    rows = 0
    for taken, item in enumerate(settled):
        if not isinstance(item, RowResult):
            if rows == room:
                return taken
            rows += 1
    return len(settled)


RENEWALS_PER_LEASE = 3  # renew a third of the way through, so two renewals may fail


PID_MAX = 4_194_304  # Linux's largest possible pid (PID_MAX_LIMIT on 64-bit)
ZOMBIE_STATES = frozenset("ZX")  # /proc/PID/stat states of a process that has exited


def proc_stat(pid: int) -> tuple[str, int]:
    """(state, start time in clock ticks since boot) of process `pid`, from /proc/PID/stat.
    FileNotFoundError when no such process is visible; OSError when /proc cannot tell."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        text = f.read()
    # The command name (field 2) is in parentheses and may hold spaces and parentheses.
    fields = text.rpartition(")")[2].split()
    try:
        return fields[0], int(fields[19])  # fields 3 (state) and 22 (starttime)
    except (IndexError, ValueError) as exc:
        raise OSError(f"cannot parse /proc/{pid}/stat") from exc


def _own_start() -> str:
    try:
        return str(proc_stat(os.getpid())[1])
    except OSError:
        return "-"  # no /proc (not Linux): liveness falls back to the pid alone


@functools.cache
def here() -> str:
    """Where this process's pids mean something: `{hostname}@{boot}.{pidns}`, the host name
    qualified by the kernel's boot id (containers share their host's) and the inode of this
    process's PID namespace. Containers that share a host name (and so do not see each
    other's processes) are then told apart: a pid that is free in one namespace says nothing
    of a process in another. `-` for what cannot be read (then no owner is judged dead)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip().replace("-", "")[:12] or "-"
    except OSError:
        boot = "-"
    try:
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pidns = "-"
    return f"{socket.gethostname()}@{boot}.{pidns}"


def new_owner() -> str:
    """An owner name that says where a claim comes from: host (with its boot and PID
    namespace, `here`), pid, the process's start time (so that a later process given the
    same pid is not taken for it) and a random part."""
    return f"{here()}:{os.getpid()}:{_own_start()}:{uuid.uuid4().hex[:8]}"


def dead_here(
    owner: str,
    *,
    host: str | None = None,
    stat: Callable[[int], tuple[str, int]] = proc_stat,
    signal0: Callable[[int, int], None] = os.kill,
) -> bool:
    """Whether `owner` was a process on this host that no longer runs: its pid is gone, is a
    zombie (killed, not yet reaped: `kill(pid, 0)` still succeeds on it), or belongs to a
    process started at another time than the owner (the pid was reused). "This host" is
    this boot of this machine and this PID namespace (`here`): a process in another
    container is never judged by a pid of ours. Errs towards "alive" when it cannot tell:
    then the claims wait for their lease, as for a process on another machine. The owner
    comes from a table anyone with access can write: on this
    host, an owner whose pid no process can have (not a number, 0, past PID_MAX) names no
    live process."""
    owner_host, _, rest = owner.partition(":")
    where = host if host is not None else here()
    # Only an owner of this very PID namespace can be judged by its pid; an owner name
    # without one (archiver before namespaces were named) may be another container's.
    if owner_host != where or "-" in where.partition("@")[2].split("."):
        return False
    parts = rest.split(":")
    pid_text = parts[0]
    if not (pid_text.isascii() and pid_text.isdigit()):
        return True
    pid = int(pid_text)
    if not 0 < pid <= PID_MAX:
        return True
    # host:pid:start:random (start "-" when unknown); host:pid:random before start times.
    started = parts[1] if len(parts) >= 3 and parts[1].isascii() and parts[1].isdigit() else None
    try:
        signal0(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, under another user: /proc may still say more
    try:
        state, start = stat(pid)
    except OSError:  # gone meanwhile, or hidden from us (hidepid): the signal said it exists
        return False
    return state in ZOMBIE_STATES or (started is not None and int(started) != start)


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

    async def rows(
        self,
        *,
        limit: int | None,
        page_rows: int,
        claim_rows: int,
        settle: Settle,
    ) -> AsyncIterator[MediaRow | RowResult]:
        """Rows in media_id order, at most `limit` of them to work on: a page of
        `page_rows` candidates is read (rows other processes hold are left out), `settle`
        decides at once what it can (a row whose file is missing needs no claim: its result
        is yielded as it is, and takes none of the limit), and the rest are claimed
        `claim_rows` at a time, each batch only when the previous one has been taken
        (claims run a little ahead of the work), and yielded."""
        await self.take_over_the_dead()
        worked = 0
        after: str | None = None
        while limit is None or worked < limit:
            call = functools.partial(
                self.db.candidates, self.row_filter, owner=self.owner, after=after, limit=page_rows
            )
            page = await self.db.retrying(self.retry, call)
            if not page:
                return
            settled = await settle(page)
            taken = within_limit(settled, None if limit is None else limit - worked)
            work: list[MediaRow] = []
            for item in settled[:taken]:
                if isinstance(item, RowResult):
                    yield item
                else:
                    work.append(item)
            for start in range(0, len(work), claim_rows):
                claimed = await self._claim(work[start : start + claim_rows])
                worked += len(claimed)
                for row in claimed:
                    yield row
            if len(page) < page_rows:
                return
            after = page[taken - 1].media_id

    async def _claim(self, rows: list[MediaRow]) -> list[MediaRow]:
        """Claim these rows, those still free and still selected (as they are now)."""
        ids = tuple(row.media_id for row in rows)
        call = functools.partial(
            self.db.claim_page,
            replace(self.row_filter, media_ids=ids),
            owner=self.owner,
            lease_s=self.lease_s,
            after=None,
            limit=len(ids),
        )
        claimed = await self.db.retrying(self.retry, call)
        self.held.update(row.media_id for row in claimed)
        return claimed

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
                    # The outage is said once, in plain words; the next renewal tries again.
                    OUTAGE.began(exc, time.monotonic(), interval)

    async def elsewhere(self) -> list[Holder]:
        """The other processes that still hold rows this run selected, and how many: rows
        this run could not take. Best effort (an empty list if the database cannot say)."""
        try:
            held = await self.db.held_elsewhere(self.row_filter, self.owner)
        except DatabaseError as exc:
            log.warning("could not count the rows other processes hold: %s", plain_reason(exc))
            return []
        return [Holder(o, n, until, not dead_here(o)) for o, n, until in held]

    async def release(self) -> None:
        """Drop every claim of this process (rows that failed become free for others)."""
        try:
            await self.db.release(self.owner)
        except DatabaseError as exc:
            why = plain_reason(exc)
            log.warning("could not release claims (they expire by themselves): %s", why)
