"""PostgreSQL adapter: the only module that imports asyncpg.

Statements are sent without asyncpg's named prepared-statement cache
(`statement_cache_size=0`) so that archiver works through a transaction-mode pooler
(PgBouncer, Supabase's pooler), and nothing relies on session state.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from archiver.errors import ConfigError, DatabaseAuthFailed, DatabaseError, DatabaseUnavailable
from archiver.models import KnownProblem, MediaRow, ProblemNote
from archiver.policies import RetryPolicy
from archiver.settings import redact_dsn, scrub

T = TypeVar("T")

CONNECT_TIMEOUT_S = 15.0
COMMAND_TIMEOUT_S = 60.0

_PLAIN_COLUMNS = (
    "media_id",
    "media_type",
    "local_file_path",
    "md5_sum",
    "mime_type",
    "archive_url",
    "file_size",
)


def row_columns(alias: str = "") -> str:
    """The select list a MediaRow is made of, from table alias `alias` (e.g. `p`).

    created_at is decoded by the driver only inside the range a Python datetime holds (a day
    of margin each side for any time zone). A value outside it (`infinity`, a year BC or after
    9999) would break the decoding of its whole page, so it comes as text instead, and the
    row is judged on its own."""
    a = f"{alias}." if alias else ""
    in_range = f"{a}created_at BETWEEN '0001-01-02' AND '9999-12-30'"
    return (
        ", ".join(f"{a}{c}" for c in _PLAIN_COLUMNS)
        + f", CASE WHEN {in_range} THEN {a}created_at END AS created_at"
        + f", CASE WHEN NOT ({in_range}) THEN {a}created_at::text END AS created_at_bad"
    )


@dataclass(frozen=True)
class RowFilter:
    """Which rows a job pages over."""

    archived: bool | None = False  # False: archive_url IS NULL; True: IS NOT NULL; None: all
    media_types: tuple[str, ...] = ()
    created_before: datetime | None = None
    created_since: datetime | None = None
    media_ids: tuple[str, ...] = ()

    def where(self, first_arg: int, alias: str = "") -> tuple[list[str], list[Any]]:
        """SQL conditions numbered from `$first_arg` (on columns of table alias `alias`,
        e.g. `m`), and their arguments."""
        a = f"{alias}." if alias else ""
        conditions: list[str] = []
        args: list[Any] = []
        if self.archived is False:
            conditions.append(f"{a}archive_url IS NULL")
        elif self.archived is True:
            conditions.append(f"{a}archive_url IS NOT NULL")
        for column, value, op in (
            ("media_type", list(self.media_types), "= ANY(${}::text[])"),
            ("created_at", self.created_before, "< ${}"),
            ("created_at", self.created_since, ">= ${}"),
            ("media_id", list(self.media_ids), "= ANY(${}::text[])"),
        ):
            if value:
                args.append(value)
                conditions.append(f"{a}{column} {op.format(first_arg + len(args) - 1)}")
        return conditions, args


def page_query(row_filter: RowFilter, *, after: bool) -> tuple[str, int]:
    """Keyset paging by `media_id` (never OFFSET, which skips rows while others change);
    the SQL and the number of its filter arguments. `$1` is the page size, `$2` the last
    media_id seen (when `after`), then the filter's arguments."""
    conditions, args = row_filter.where(3 if after else 2)
    if after:
        conditions.insert(0, "media_id > $2")
    where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
    return f"SELECT {row_columns()} FROM post_media {where}ORDER BY media_id LIMIT $1", len(args)


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

# -- claims: leases on rows, so that several processes share one backlog --------------------
# Every statement is one implicit transaction (no session state), so this works through a
# transaction-mode pooler. Privileges: SELECT, UPDATE on post_media; SELECT, INSERT, UPDATE,
# DELETE on archiver_claims; CREATE on the schema the first time (or run `archiver db init`).

CLAIMS_DDL = """
CREATE TABLE IF NOT EXISTS archiver_claims (
    media_id   TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
)
"""
PAGING_INDEX_DDL = """
CREATE INDEX IF NOT EXISTS idx_post_media_unarchived
    ON post_media (media_id) WHERE archive_url IS NULL
"""

# -- problems: rows that could not be archived, so that re-runs do not fail on them forever --
# file_size / file_mtime describe the file the row resolved to when it failed (NULL: none),
# row_fingerprint the row's columns then (`problems.row_fingerprint`): a corrupt or invalid
# row is tried again only when one of them changed.
PROBLEMS_DDL = """
CREATE TABLE IF NOT EXISTS archiver_problems (
    media_id        TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    detail          TEXT NOT NULL,
    first_seen      TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen       TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts        INTEGER NOT NULL DEFAULT 1,
    file_size       BIGINT,
    file_mtime      DOUBLE PRECISION,
    row_fingerprint TEXT NOT NULL
)
"""
ARCHIVER_TABLES = (("archiver_claims", CLAIMS_DDL), ("archiver_problems", PROBLEMS_DDL))
PROBLEM_COLUMNS = (
    "p.media_id, p.kind, p.detail, p.first_seen, p.last_seen, p.attempts, p.file_size, "
    "p.file_mtime, p.row_fingerprint AS fingerprint"
)


def claim_query(row_filter: RowFilter, *, after: bool) -> str:
    """Claim up to $1 rows for owner $2 for $3 seconds, after media_id $4 (when `after`).

    Candidates are locked FOR UPDATE SKIP LOCKED, so processes claiming at once take
    different rows; ON CONFLICT decides races with claims committed meanwhile (a claim is
    taken over only when it expired or is already ours). Returns the claimed rows, plus on
    every row (and on a lone row of NULLs when nothing was claimed) the last candidate id
    and the candidate count, so that paging goes on past rows lost to other processes."""
    first = 5 if after else 4
    conditions, _ = row_filter.where(first, "m")
    if after:
        conditions.insert(0, "m.media_id > $4")
    where = " AND ".join(conditions) if conditions else "TRUE"
    columns = row_columns("p")
    return f"""
WITH candidates AS (
    SELECT m.media_id FROM post_media m
     WHERE {where}
       AND NOT EXISTS (SELECT 1 FROM archiver_claims c
                        WHERE c.media_id = m.media_id AND c.expires_at > now()
                          AND c.owner <> $2)
     ORDER BY m.media_id
     LIMIT $1
       FOR UPDATE OF m SKIP LOCKED
), claimed AS (
    INSERT INTO archiver_claims AS c (media_id, owner, expires_at)
    SELECT media_id, $2, now() + make_interval(secs => $3) FROM candidates
    ON CONFLICT (media_id) DO UPDATE SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at
     WHERE c.expires_at <= now() OR c.owner = EXCLUDED.owner
    RETURNING c.media_id
), seen AS (
    SELECT max(media_id) AS last_seen, count(*) AS candidates FROM candidates
)
SELECT {columns}, seen.last_seen, seen.candidates
  FROM seen LEFT JOIN post_media p ON p.media_id IN (SELECT media_id FROM claimed)
 ORDER BY p.media_id
"""


# With claims: record, release the recorded rows' claims, forget their problems and note
# the new problems ($4..$9), all in one statement (one round trip per batch).
RECORD_AND_RELEASE_SQL = """
WITH updated AS (
    {update} RETURNING m.media_id
), released AS (
    DELETE FROM archiver_claims c WHERE c.media_id = ANY($1::text[]) AND c.owner = $3
), solved AS (
    DELETE FROM archiver_problems p WHERE p.media_id IN (SELECT media_id FROM updated)
), noted AS (
    INSERT INTO archiver_problems AS p
           (media_id, kind, detail, file_size, file_mtime, row_fingerprint)
    SELECT * FROM unnest($4::text[], $5::text[], $6::text[], $7::bigint[], $8::float8[],
                         $9::text[])
    ON CONFLICT (media_id) DO UPDATE
       SET kind = EXCLUDED.kind, detail = EXCLUDED.detail, last_seen = now(),
           attempts = p.attempts + 1, file_size = EXCLUDED.file_size,
           file_mtime = EXCLUDED.file_mtime, row_fingerprint = EXCLUDED.row_fingerprint
)
SELECT count(*) FROM updated
"""
RENEW_SQL = """
UPDATE archiver_claims SET expires_at = now() + make_interval(secs => $3)
 WHERE owner = $1 AND media_id = ANY($2::text[])
"""
# At the end of a run: this process's claims, long-expired ones of processes that died, and
# the problems of rows archived by other means (or deleted) since.
RELEASE_SQL = """
WITH released AS (
    DELETE FROM archiver_claims WHERE owner = $1 OR expires_at < now() - interval '1 hour'
)
DELETE FROM archiver_problems p
 WHERE NOT EXISTS (SELECT 1 FROM post_media m
                    WHERE m.media_id = p.media_id AND m.archive_url IS NULL)
"""


def held_elsewhere_query(row_filter: RowFilter) -> str:
    """Owners other than $1 with live claims on rows `row_filter` selects (arguments from
    $2): each owner, its row count and when its last lease ends."""
    conditions, _ = row_filter.where(2, "m")
    where = "".join(f" AND {c}" for c in conditions)
    return f"""
SELECT c.owner, count(*) AS rows, max(c.expires_at) AS lease_ends
  FROM archiver_claims c JOIN post_media m ON m.media_id = c.media_id
 WHERE c.expires_at > now() AND c.owner <> $1{where}
 GROUP BY c.owner
 ORDER BY c.owner
"""


# Problems of rows still waiting to be archived (a record of an archived row is stale).
LIST_PROBLEMS_SQL = f"""
SELECT {PROBLEM_COLUMNS} FROM archiver_problems p
  JOIN post_media m ON m.media_id = p.media_id AND m.archive_url IS NULL
 WHERE cardinality($1::text[]) = 0 OR p.kind = ANY($1::text[])
 ORDER BY p.media_id
 LIMIT $2
"""
KNOWN_PROBLEMS_SQL = f"""
SELECT {PROBLEM_COLUMNS} FROM archiver_problems p WHERE p.media_id = ANY($1::text[])
"""
# verify --repair: forget the URL of rows whose object is gone or damaged, unless the row
# changed meanwhile.
CLEAR_URLS_SQL = """
UPDATE post_media AS m
   SET archive_url = NULL, updated_at = now()
  FROM unnest($1::text[], $2::text[]) AS v(id, url)
 WHERE m.media_id = v.id AND m.archive_url = v.url
"""


@dataclass(frozen=True)
class ClaimedPage:
    rows: list[MediaRow]
    last_seen: str | None  # the last candidate, claimed by us or not
    candidates: int


UNARCHIVED_MD5S_SQL = """
SELECT DISTINCT lower(btrim(md5_sum)) FROM post_media
 WHERE archive_url IS NULL AND lower(btrim(md5_sum)) ~ '^[0-9a-f]{32}$'
"""

STATS_SQL = """
SELECT coalesce(media_type, '(null)') AS media_type,
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
        _, args = row_filter.where(1)
        rows = await self._fetch("counting rows", count_query(row_filter), *args)
        total = int(rows[0][0])
        return total if limit is None else min(total, limit)

    async def fetch_page(
        self, row_filter: RowFilter, *, after: str | None, limit: int
    ) -> list[MediaRow]:
        """The next `limit` matching rows after `after` in media_id order."""
        sql, _ = page_query(row_filter, after=after is not None)
        _, filter_args = row_filter.where(0)
        args: list[Any] = [limit, *([after] if after is not None else []), *filter_args]
        return [_row(r) for r in await self._fetch("reading rows", sql, *args)]

    async def retrying(self, retry: RetryPolicy, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, asked again under `retry` while it fails for a transient reason
        (connection lost, server restarting)."""
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                return await call()
            except DatabaseError:
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
        on_page: Callable[[list[MediaRow]], Awaitable[None]] | None = None,
    ) -> AsyncIterator[MediaRow]:
        """Every matching row in media_id order, at most `limit`, a page at a time; a page
        that fails for a transient reason is asked for again under `retry`. `on_page` sees
        each page before its rows are yielded."""
        retry = retry or RetryPolicy()
        remaining = limit
        after: str | None = None
        while remaining is None or remaining > 0:
            size = page_rows if remaining is None else min(page_rows, remaining)
            page = await self.retrying(
                retry, functools.partial(self.fetch_page, row_filter, after=after, limit=size)
            )
            if on_page is not None and page:
                await on_page(page)
            for row in page:
                yield row
            if remaining is not None:
                remaining -= len(page)
            if len(page) < size:
                return
            after = page[-1].media_id

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
            notes = list({n.media_id: n for n in problems}.values())  # one per row
            sql = RECORD_AND_RELEASE_SQL.format(update=update.strip())
            return int(
                await self._pool.fetchval(
                    sql,
                    ids,
                    urls,
                    owner,
                    [n.media_id for n in notes],
                    [n.kind for n in notes],
                    [n.detail for n in notes],
                    [n.file_size for n in notes],
                    [n.file_mtime for n in notes],
                    [n.fingerprint for n in notes],
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

    async def ensure_tables(self) -> bool:
        """Create archiver_claims and archiver_problems when absent; False when one is
        missing and we may not create it (then upload runs unclaimed and unrecorded)."""
        existing = await self._existing(*(name for name, _ in ARCHIVER_TABLES))
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
    ) -> ClaimedPage:
        """Claim the next rows for `owner` (see `claim_query`)."""
        sql = claim_query(row_filter, after=after is not None)
        _, filter_args = row_filter.where(0)
        args: list[Any] = [limit, owner, float(lease_s)]
        if after is not None:
            args.append(after)
        args += filter_args
        records = await self._fetch("claiming rows", sql, *args)
        rows = [_row(r) for r in records if r["media_id"] is not None]
        first = records[0] if records else None
        return ClaimedPage(
            rows=rows,
            last_seen=first["last_seen"] if first else None,
            candidates=int(first["candidates"]) if first else 0,
        )

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
        _, args = row_filter.where(2)
        rows = await self._fetch("reading claims", held_elsewhere_query(row_filter), owner, *args)
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
