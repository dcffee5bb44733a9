"""PostgreSQL adapter: the only module that imports asyncpg.

Statements are sent without asyncpg's named prepared-statement cache
(`statement_cache_size=0`) so that archiver works through a transaction-mode pooler
(PgBouncer, Supabase's pooler), and nothing relies on session state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from archiver.errors import ConfigError, DatabaseError, DatabaseUnavailable
from archiver.models import MediaRow
from archiver.policies import RetryPolicy
from archiver.settings import redact_dsn

CONNECT_TIMEOUT_S = 15.0
COMMAND_TIMEOUT_S = 60.0

_ROW_COLUMNS = (
    "media_id, media_type, local_file_path, md5_sum, mime_type, created_at, archive_url, file_size"
)


@dataclass(frozen=True)
class RowFilter:
    """Which rows a job pages over."""

    archived: bool | None = False  # False: archive_url IS NULL; True: IS NOT NULL; None: all
    media_types: tuple[str, ...] = ()
    created_before: datetime | None = None
    media_ids: tuple[str, ...] = ()

    def where(self, first_arg: int) -> tuple[list[str], list[Any]]:
        """SQL conditions numbered from `$first_arg`, and their arguments."""
        conditions: list[str] = []
        args: list[Any] = []
        if self.archived is False:
            conditions.append("archive_url IS NULL")
        elif self.archived is True:
            conditions.append("archive_url IS NOT NULL")
        for column, value, op in (
            ("media_type", list(self.media_types), "= ANY(${}::text[])"),
            ("created_at", self.created_before, "< ${}"),
            ("media_id", list(self.media_ids), "= ANY(${}::text[])"),
        ):
            if value:
                args.append(value)
                conditions.append(f"{column} {op.format(first_arg + len(args) - 1)}")
        return conditions, args


def page_query(row_filter: RowFilter, *, after: bool) -> tuple[str, int]:
    """Keyset paging by `media_id` (never OFFSET, which skips rows while others change);
    the SQL and the number of its filter arguments. `$1` is the page size, `$2` the last
    media_id seen (when `after`), then the filter's arguments."""
    conditions, args = row_filter.where(3 if after else 2)
    if after:
        conditions.insert(0, "media_id > $2")
    where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
    return f"SELECT {_ROW_COLUMNS} FROM post_media {where}ORDER BY media_id LIMIT $1", len(args)


def count_query(row_filter: RowFilter) -> str:
    conditions, _ = row_filter.where(1)
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return f"SELECT count(*) FROM post_media{where}"


# One grouped UPDATE per batch. Without --force a row already holding another URL is left
# alone: a row is never recorded twice with different URLs.
RECORD_SQL = """
UPDATE post_media AS m
   SET archive_url = v.url, updated_at = now()
  FROM unnest($1::text[], $2::text[]) AS v(id, url)
 WHERE m.media_id = v.id
"""
RECORD_GUARD = " AND (m.archive_url IS NULL OR m.archive_url = v.url)"

STATS_SQL = """
SELECT media_type,
       count(*) AS total,
       count(archive_url) AS archived
  FROM post_media
 GROUP BY media_type
 ORDER BY media_type
"""


def _updated_count(status: str) -> int:
    # asyncpg returns the command tag, e.g. "UPDATE 50".
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


def _row(record: asyncpg.Record) -> MediaRow:
    return MediaRow(
        media_id=record["media_id"],
        media_type=record["media_type"],
        local_file_path=record["local_file_path"],
        md5_sum=record["md5_sum"],
        mime_type=record["mime_type"],
        created_at=record["created_at"],
        archive_url=record["archive_url"],
        file_size=record["file_size"],
    )


def _translate(exc: BaseException, doing: str) -> Exception:
    if isinstance(exc, asyncpg.UndefinedTableError):
        return ConfigError("table post_media not found: is DATABASE_URL the right database?")
    if isinstance(exc, asyncpg.UndefinedColumnError):
        return ConfigError(f"post_media lacks a column archiver needs ({exc})")
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return ConfigError(f"database refused {doing}: {exc}")
    return DatabaseError(f"database error while {doing}: {exc.__class__.__name__}: {exc}")


_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    asyncio.TimeoutError,
)
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (*_DB_ERRORS, ValueError)


@dataclass(frozen=True)
class StatsRow:
    media_type: str
    total: int
    archived: int


class Database:
    """A small asyncpg pool and the statements archiver runs."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, dsn: str, *, max_size: int = 3) -> Database:
        """Open a pool, or raise DatabaseUnavailable (exit 2) with the DSN redacted."""
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=max_size,
                statement_cache_size=0,
                timeout=CONNECT_TIMEOUT_S,
                command_timeout=COMMAND_TIMEOUT_S,
                server_settings={"application_name": "archiver"},
            )
        except _CONNECT_ERRORS as exc:
            detail = str(exc).replace(dsn, redact_dsn(dsn)) or exc.__class__.__name__
            raise DatabaseUnavailable(
                f"cannot connect to the database {redact_dsn(dsn)}: {detail}"
            ) from exc
        assert pool is not None
        return cls(pool)

    async def close(self) -> None:
        """Close the pool, waiting briefly for connections to be released."""
        try:
            await asyncio.wait_for(self._pool.close(), timeout=10)
        except _DB_ERRORS:
            self._pool.terminate()

    async def _fetch(self, doing: str, sql: str, *args: Any) -> list[asyncpg.Record]:
        try:
            return await self._pool.fetch(sql, *args)
        except _DB_ERRORS as exc:
            raise _translate(exc, doing) from exc

    async def check_schema(self) -> None:
        """Fail early, with a clear error, when post_media is absent or lacks columns."""
        await self._fetch("checking post_media", f"SELECT {_ROW_COLUMNS} FROM post_media LIMIT 0")

    async def count_rows(self, row_filter: RowFilter) -> int:
        """How many rows match (before any --limit)."""
        _, args = row_filter.where(1)
        rows = await self._fetch("counting rows", count_query(row_filter), *args)
        return int(rows[0][0])

    async def fetch_page(
        self, row_filter: RowFilter, *, after: str | None, limit: int
    ) -> list[MediaRow]:
        """The next `limit` matching rows after `after` in media_id order."""
        sql, _ = page_query(row_filter, after=after is not None)
        _, filter_args = row_filter.where(0)
        args: list[Any] = [limit, *([after] if after is not None else []), *filter_args]
        return [_row(r) for r in await self._fetch("reading rows", sql, *args)]

    async def _fetch_page_retrying(
        self, row_filter: RowFilter, after: str | None, size: int, retry: RetryPolicy
    ) -> list[MediaRow]:
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                return await self.fetch_page(row_filter, after=after, limit=size)
            except DatabaseError:  # connection lost, server restarting: try again a while
                attempt += 1
                wait = retry.delay(attempt, started, time.monotonic())
                if wait is None:
                    raise
                await asyncio.sleep(wait)

    async def rows(
        self,
        row_filter: RowFilter,
        *,
        limit: int | None = None,
        page_rows: int = 500,
        retry: RetryPolicy | None = None,
    ) -> AsyncIterator[MediaRow]:
        """Every matching row in media_id order, at most `limit`, a page at a time; a page
        that fails for a transient reason is asked for again under `retry`."""
        retry = retry or RetryPolicy()
        remaining = limit
        after: str | None = None
        while remaining is None or remaining > 0:
            size = page_rows if remaining is None else min(page_rows, remaining)
            page = await self._fetch_page_retrying(row_filter, after, size, retry)
            for row in page:
                yield row
            if remaining is not None:
                remaining -= len(page)
            if len(page) < size:
                return
            after = page[-1].media_id

    async def record(self, pairs: Sequence[tuple[str, str]], *, force: bool) -> int:
        """Write `archive_url` for (media_id, url) pairs in one UPDATE; rows updated."""
        sql = RECORD_SQL if force else RECORD_SQL + RECORD_GUARD
        ids = [p[0] for p in pairs]
        urls = [p[1] for p in pairs]
        try:
            status = await self._pool.execute(sql, ids, urls)
        except _DB_ERRORS as exc:
            raise _translate(exc, "recording archive URLs") from exc
        return _updated_count(status)

    async def stats(self) -> list[StatsRow]:
        """Totals and archived counts per media type, in one aggregate query."""
        rows = await self._fetch("computing statistics", STATS_SQL)
        return [StatsRow(r["media_type"], int(r["total"]), int(r["archived"])) for r in rows]
