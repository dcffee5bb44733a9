"""PostgreSQL adapter: the only module that imports asyncpg.

Statements are sent without asyncpg's named prepared-statement cache
(`statement_cache_size=0`) so that archiver works through a transaction-mode pooler
(PgBouncer, Supabase's pooler), and nothing relies on session state.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from archiver.errors import ConfigError, DatabaseAuthFailed, DatabaseError, DatabaseUnavailable
from archiver.models import KnownProblem, MediaRow, ProblemNote
from archiver.policies import RetryPolicy, retrying
from archiver.settings import redact_dsn, scrub
from archiver.sql import (
    ARCHIVER_TABLES,
    CLAIMS_DDL,
    CLEAR_URLS_SQL,
    KNOWN_PROBLEMS_SQL,
    LIST_PROBLEMS_SQL,
    PAGING_INDEX_DDL,
    PROBLEMS_DDL,
    RECORD_AND_RELEASE_SQL,
    RECORD_GUARD,
    RECORD_SQL,
    RELEASE_SQL,
    RENEW_SQL,
    STATS_SQL,
    TABLE_PRIVILEGES,
    UNARCHIVED_MD5S_SQL,
    RowFilter,
    candidates_query,
    claim_query,
    count_query,
    grant_statement,
    held_elsewhere_query,
    page_query,
    row_columns,
)

T = TypeVar("T")

CONNECT_TIMEOUT_S = 15.0
COMMAND_TIMEOUT_S = 60.0


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
        created_at_bad=record["created_at_bad"],
    )


def _problem(record: asyncpg.Record) -> KnownProblem:
    return KnownProblem(**dict(record.items()))  # PROBLEM_COLUMNS are its field names


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


async def _keep_session(_connection: asyncpg.Connection) -> None:
    """No reset query on release. By default asyncpg's pool sends `SELECT
    pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;` each time a connection goes
    back to the pool: a second round trip per statement. archiver keeps no session state
    (the design that makes it work through transaction-mode poolers), so there is nothing
    to reset; an open transaction would still be rolled back by asyncpg itself."""


@dataclass(frozen=True)
class RowState:
    archived: bool
    held: bool  # by another process's live claim


@dataclass(frozen=True)
class StatsRow:
    media_type: str
    total: int
    archived: int


@dataclass(frozen=True)
class Page:
    """One page of rows, and the media_id the next one starts after (None: the last)."""

    rows: list[MediaRow]
    after: str | None


async def pages(
    fetch: Callable[[str | None, int], Awaitable[Page]],
    *,
    limit: int | None,
    page_rows: int,
) -> AsyncIterator[list[MediaRow]]:
    """Pages of rows in media_id order (keyset paging: `fetch(after, size)`), at most `limit`
    rows in all. The one paging loop of plain reads and of claims."""
    remaining = limit
    after: str | None = None
    while remaining is None or remaining > 0:
        size = page_rows if remaining is None else min(page_rows, remaining)
        page = await fetch(after, size)
        if page.rows:
            yield page.rows
        if remaining is not None:
            remaining -= len(page.rows)
        if page.after is None:
            return
        after = page.after


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
                reset=_keep_session,
            )
        except Exception as exc:  # whatever the driver makes of a DSN: one line, no secret
            detail = scrub(str(exc), dsn) or exc.__class__.__name__
            if isinstance(exc, TimeoutError):  # a server that accepts and never answers
                detail = (
                    f"no answer within {CONNECT_TIMEOUT_S:.0f} s (is the host and port a "
                    "PostgreSQL server or pooler, reachable from here?)"
                )
            # A wrong password, an unknown or refused role: not an outage (28000, 28P01).
            refused = isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError)
            raise (DatabaseAuthFailed if refused else DatabaseUnavailable)(
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
        await self._fetch("checking post_media", f"SELECT {row_columns()} FROM post_media LIMIT 0")

    async def count_rows(self, row_filter: RowFilter, *, limit: int | None = None) -> int:
        """How many rows match, at most `limit`."""
        return min((await self.totals(row_filter))[0], limit or 2**63)

    async def totals(self, row_filter: RowFilter) -> tuple[int, int | None]:
        """How many rows match, and the sum of their file_size when every one has it (what
        a progress display's ETA goes by; None when some row has none)."""
        query = count_query(row_filter)
        rows = await self._fetch("counting rows", query.sql, *query.args)
        count, sized, total_bytes = rows[0]
        return int(count), int(total_bytes) if count and sized == count else None

    async def fetch_page(
        self, row_filter: RowFilter, *, after: str | None, limit: int
    ) -> list[MediaRow]:
        """The next `limit` matching rows after `after` in media_id order."""
        query = page_query(row_filter, limit=limit, after=after)
        return [_row(r) for r in await self._fetch("reading rows", query.sql, *query.args)]

    async def retrying(self, retry: RetryPolicy, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, asked again under `retry` while it fails for a transient reason
        (connection lost, server restarting)."""
        return await retrying(retry, call)

    async def row_pages(
        self,
        row_filter: RowFilter,
        *,
        limit: int | None = None,
        page_rows: int = 500,
        retry: RetryPolicy | None = None,
    ) -> AsyncIterator[list[MediaRow]]:
        """Every matching row in media_id order, at most `limit`, a page at a time; a page
        that fails for a transient reason is asked for again under `retry`."""
        policy = retry or RetryPolicy()

        async def fetch(after: str | None, size: int) -> Page:
            page = await self.retrying(
                policy, functools.partial(self.fetch_page, row_filter, after=after, limit=size)
            )
            return Page(page, page[-1].media_id if len(page) == size else None)

        async for rows in pages(fetch, limit=limit, page_rows=page_rows):
            yield rows

    async def rows(
        self,
        row_filter: RowFilter,
        *,
        limit: int | None = None,
        page_rows: int = 500,
        retry: RetryPolicy | None = None,
    ) -> AsyncIterator[MediaRow]:
        """`row_pages`, a row at a time."""
        async for rows in self.row_pages(row_filter, limit=limit, page_rows=page_rows, retry=retry):
            for row in rows:
                yield row

    async def record(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        force: bool,
        owner: str | None = None,
        problems: Sequence[ProblemNote] = (),
    ) -> int:
        """Write `archive_url` for (media_id, url) pairs in one statement; with `owner`
        (claims in use), in the same statement release its claims on them, forget their
        recorded problems and note `problems`. The number of rows updated."""
        update = RECORD_SQL if force else RECORD_SQL + RECORD_GUARD
        ids = [p[0] for p in pairs]
        urls = [p[1] for p in pairs]
        try:
            if owner is None:
                return _updated_count(await self._pool.execute(update, ids, urls))
            latest = list({n.media_id: n for n in problems}.values())  # one per row
            sql = RECORD_AND_RELEASE_SQL.format(update=update.strip())
            return int(
                await self._pool.fetchval(
                    sql,
                    ids,
                    urls,
                    owner,
                    [n.media_id for n in latest],
                    [n.kind for n in latest],
                    [n.detail for n in latest],
                    [n.file_size for n in latest],
                    [n.file_mtime for n in latest],
                    [n.fingerprint for n in latest],
                )
            )
        except _DB_ERRORS as exc:
            raise _translate(exc, "recording archive URLs") from exc

    async def _execute(self, doing: str, sql: str, *args: Any) -> str:
        try:
            return str(await self._pool.execute(sql, *args))
        except _DB_ERRORS as exc:
            raise _translate(exc, doing) from exc

    async def _existing(self, *relations: str) -> set[str]:
        """Which of `relations` exist (one round trip)."""
        rows = await self._fetch(
            "checking",
            "SELECT r FROM unnest($1::text[]) AS r WHERE to_regclass(r) IS NOT NULL",
            list(relations),
        )
        return {r[0] for r in rows}

    async def access(self) -> dict[str, Any]:
        """What `archiver check` reports: the server, the user, post_media's rows, and the
        privileges upload needs (on post_media, archiver's tables or the schema)."""
        rows = await self._fetch(
            "checking privileges",
            """
            SELECT current_user AS user, current_database() AS database,
                   current_setting('server_version') AS version,
                   has_table_privilege('post_media', 'SELECT') AS can_select,
                   has_table_privilege('post_media', 'UPDATE') AS can_update,
                   has_schema_privilege(current_schema(), 'CREATE') AS can_create,
                   (SELECT count(*) FROM post_media) AS total,
                   (SELECT count(*) FROM post_media WHERE archive_url IS NULL) AS unarchived
            """,
        )
        tables = await self._fetch(
            "checking privileges on archiver's tables",
            "SELECT t, CASE WHEN to_regclass(t) IS NOT NULL THEN ARRAY("
            "  SELECT p FROM unnest($2::text[]) AS p WHERE has_table_privilege(t, p)) END "
            "FROM unnest($1::text[]) AS t",
            [name for name, _ in ARCHIVER_TABLES],
            ["SELECT", "INSERT", "UPDATE", "DELETE"],
        )
        # name -> the privileges held on it, or None when the table is absent
        found = dict(rows[0])
        found["tables"] = {t: None if grants is None else list(grants) for t, grants in tables}
        return found

    async def require_privileges(self, tables: Sequence[str], privileges: Sequence[str]) -> None:
        """ConfigError naming the GRANT to run when one of `tables` exists but this role lacks
        one of `privileges` on it (an absent table is created, or done without)."""
        rows = await self._fetch(
            "checking privileges on archiver's tables",
            "SELECT current_user, t, ARRAY(SELECT p FROM unnest($2::text[]) AS p "
            "  WHERE NOT has_table_privilege(t, p)) "
            "FROM unnest($1::text[]) AS t WHERE to_regclass(t) IS NOT NULL",
            list(tables),
            list(privileges),
        )
        for user, table, lacking in rows:
            if lacking:
                raise ConfigError(
                    f"the database role {user} lacks {', '.join(lacking)} on {table}: as the "
                    f"table's owner, run `{grant_statement(table, user)}`"
                )

    async def ensure_tables(self) -> bool:
        """Create archiver_claims and archiver_problems when absent; False when one is
        missing and we may not create it (then upload runs unclaimed and unrecorded);
        ConfigError naming the GRANT when one exists but this role may not use it."""
        names = [name for name, _ in ARCHIVER_TABLES]
        await self.require_privileges(names, TABLE_PRIVILEGES)
        existing = await self._existing(*names)
        for name, ddl in ARCHIVER_TABLES:
            if name in existing:
                continue
            try:
                await self._pool.execute(ddl)
            except asyncpg.InsufficientPrivilegeError:
                return False
            except (
                asyncpg.DuplicateObjectError,
                asyncpg.DuplicateTableError,
                asyncpg.UniqueViolationError,
            ):
                # Processes starting together race in CREATE TABLE IF NOT EXISTS (the loser
                # can fail on the table's row type): the table exists, which is what we want.
                pass
            except _DB_ERRORS as exc:
                raise _translate(exc, f"creating {name}") from exc
        return True

    async def init(self) -> list[tuple[str, bool]]:
        """`archiver db init`: (what, created?) for the paging index and the tables."""
        made = []
        for name, ddl in (
            (
                "index idx_post_media_unarchived (post_media rows not yet archived)",
                PAGING_INDEX_DDL,
            ),
            ("table archiver_claims (leases of processes running at once)", CLAIMS_DDL),
            ("table archiver_problems (rows that could not be archived)", PROBLEMS_DDL),
        ):
            relation = name.split()[1]
            existed = await self._existing(relation)
            await self._execute(f"creating {relation}", ddl)
            made.append((name, not existed))
        return made

    async def claim_page(
        self,
        row_filter: RowFilter,
        *,
        owner: str,
        lease_s: float,
        after: str | None,
        limit: int,
    ) -> list[MediaRow]:
        """Claim the next rows for `owner`; the rows claimed (see `claim_query`)."""
        query = claim_query(row_filter, limit=limit, owner=owner, lease_s=lease_s, after=after)
        return [_row(r) for r in await self._fetch("claiming rows", query.sql, *query.args)]

    async def candidates(
        self, row_filter: RowFilter, *, owner: str, after: str | None, limit: int
    ) -> list[MediaRow]:
        """The next `limit` rows to claim from (see `candidates_query`)."""
        query = candidates_query(row_filter, limit=limit, owner=owner, after=after)
        return [_row(r) for r in await self._fetch("reading rows", query.sql, *query.args)]

    async def live_owners(self) -> list[str]:
        """Owners holding claims that have not expired."""
        rows = await self._fetch(
            "reading claims",
            "SELECT DISTINCT owner FROM archiver_claims WHERE expires_at > now()",
        )
        return [r["owner"] for r in rows]

    async def expire(self, owner: str) -> None:
        """End `owner`'s leases now (its process is known to be dead)."""
        await self._execute(
            "expiring claims",
            "UPDATE archiver_claims SET expires_at = now() - interval '1 second' WHERE owner = $1",
            owner,
        )

    async def renew(self, owner: str, media_ids: Sequence[str], lease_s: float) -> None:
        """Extend the leases of the rows `owner` still works on."""
        await self._execute("renewing claims", RENEW_SQL, owner, list(media_ids), float(lease_s))

    async def release(self, owner: str) -> None:
        """Drop `owner`'s claims (and claims that expired long ago)."""
        await self._execute("releasing claims", RELEASE_SQL, owner)

    async def held_elsewhere(
        self, row_filter: RowFilter, owner: str
    ) -> list[tuple[str, int, datetime]]:
        """(owner, rows, last lease end) of every other owner with live claims on rows
        `row_filter` selects."""
        query = held_elsewhere_query(row_filter, owner)
        rows = await self._fetch("reading claims", query.sql, *query.args)
        return [(r["owner"], int(r["rows"]), r["lease_ends"]) for r in rows]

    async def known_problems(self, media_ids: Sequence[str]) -> list[KnownProblem]:
        """The recorded problems of these rows."""
        rows = await self._fetch("reading problems", KNOWN_PROBLEMS_SQL, list(media_ids))
        return [_problem(r) for r in rows]

    async def has_problems(self) -> bool:
        """Whether any problem is recorded (False when the table does not exist)."""
        if not await self._existing("archiver_problems"):
            return False
        sql = "SELECT EXISTS (SELECT FROM archiver_problems)"
        return bool((await self._fetch("reading problems", sql))[0][0])

    async def problems(
        self, kinds: Sequence[str] = (), limit: int | None = None
    ) -> list[KnownProblem]:
        """Recorded problems of rows not yet archived, in media_id order (of `kinds` when
        given, at most `limit`); none when the table does not exist."""
        if not await self._existing("archiver_problems"):
            return []
        rows = await self._fetch("reading problems", LIST_PROBLEMS_SQL, list(kinds), limit)
        return [_problem(r) for r in rows]

    async def clear_urls(self, pairs: Sequence[tuple[str, str]]) -> int:
        """Set archive_url to NULL for (media_id, url) pairs whose archive_url is still
        that url; how many rows changed."""
        status = await self._execute(
            "clearing archive URLs",
            CLEAR_URLS_SQL,
            [p[0] for p in pairs],
            [p[1] for p in pairs],
        )
        return _updated_count(status)

    async def row_states(self, media_ids: Sequence[str], owner: str | None) -> dict[str, RowState]:
        """What each existing row of `media_ids` is: archived, and (with `owner`, claims in
        use) held by another owner's live claim."""
        held = "false"
        args: list[Any] = [list(media_ids)]
        if owner is not None:
            held = (
                "EXISTS (SELECT 1 FROM archiver_claims c WHERE c.media_id = m.media_id "
                "AND c.expires_at > now() AND c.owner <> $2)"
            )
            args.append(owner)
        rows = await self._fetch(
            "reading rows",
            f"SELECT m.media_id, m.archive_url IS NOT NULL AS archived, {held} AS held "
            "FROM post_media m WHERE m.media_id = ANY($1::text[])",
            *args,
        )
        return {r["media_id"]: RowState(bool(r["archived"]), bool(r["held"])) for r in rows}

    async def unarchived_md5s(self) -> set[bytes]:
        """The MD5s (16-byte digests) of every row not yet archived: their files are still
        needed. About 60 bytes of memory each."""
        rows = await self._fetch("reading unarchived rows", UNARCHIVED_MD5S_SQL)
        return {bytes.fromhex(r[0]) for r in rows}

    async def stats(self) -> list[StatsRow]:
        """Totals and archived counts per media type, in one aggregate query."""
        rows = await self._fetch("computing statistics", STATS_SQL)
        return [StatsRow(r["media_type"], int(r["total"]), int(r["archived"])) for r in rows]
