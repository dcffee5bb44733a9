"""archiver's SQL: the statements it sends and the builders that make a statement and its
arguments together (`Query`). Nothing here talks to a database; `db.py` sends them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

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


@dataclass(frozen=True)
class Query:
    """A statement and its arguments, built together so that placeholders and arguments
    cannot drift apart."""

    sql: str
    args: tuple[Any, ...]


def page_query(row_filter: RowFilter, *, limit: int, after: str | None) -> Query:
    """Keyset paging by `media_id` (never OFFSET, which skips rows while others change):
    `$1` is the page size, `$2` the last media_id seen (when `after`), then the filter's
    arguments."""
    lead: list[Any] = [limit, *([after] if after is not None else [])]
    conditions, args = row_filter.where(len(lead) + 1)
    if after is not None:
        conditions.insert(0, "media_id > $2")
    where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
    sql = f"SELECT {row_columns()} FROM post_media {where}ORDER BY media_id LIMIT $1"
    return Query(sql, (*lead, *args))


# Row `m` holds no live claim of an owner other than `$2`.
HELD_BY_NO_OTHER = (
    "NOT EXISTS (SELECT 1 FROM archiver_claims c WHERE c.media_id = m.media_id"
    " AND c.expires_at > now() AND c.owner <> $2)"
)


def candidates_query(row_filter: RowFilter, *, limit: int, owner: str, after: str | None) -> Query:
    """The next `$1` rows `row_filter` selects after media_id `$3` (when `after`) that no
    other owner than `$2` holds a live claim on: what a run looks at before it claims (it
    claims only the rows whose file is there). A plain read: nothing is locked."""
    lead: list[Any] = [limit, owner, *([after] if after is not None else [])]
    conditions, args = row_filter.where(len(lead) + 1, "m")
    if after is not None:
        conditions.insert(0, "m.media_id > $3")
    conditions.append(HELD_BY_NO_OTHER)
    sql = (
        f"SELECT {row_columns('m')} FROM post_media m WHERE {' AND '.join(conditions)} "
        "ORDER BY m.media_id LIMIT $1"
    )
    return Query(sql, (*lead, *args))


def count_query(row_filter: RowFilter) -> Query:
    conditions, args = row_filter.where(1)
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return Query(
        f"SELECT count(*), count(file_size), sum(file_size) FROM post_media{where}", tuple(args)
    )


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
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")  # what upload needs on each


def quote_ident(name: str) -> str:
    """`name` as a PostgreSQL identifier: double-quoted unless plainly lower-case."""
    if (
        name.isascii()
        and name.replace("_", "a").isalnum()
        and name == name.lower()
        and not name[0].isdigit()
    ):
        return name
    return '"' + name.replace('"', '""') + '"'


def grant_statement(table: str, role: str) -> str:
    """The statement a table's owner runs so that `role` may do what upload does on it."""
    return f"GRANT {', '.join(TABLE_PRIVILEGES)} ON {table} TO {quote_ident(role)};"


PROBLEM_COLUMNS = (
    "p.media_id, p.kind, p.detail, p.first_seen, p.last_seen, p.attempts, p.file_size, "
    "p.file_mtime, p.row_fingerprint AS fingerprint"
)


def claim_query(
    row_filter: RowFilter, *, limit: int, owner: str, lease_s: float, after: str | None
) -> Query:
    """Claim up to $1 rows for owner $2 for $3 seconds, after media_id $4 (when `after`).

    Candidates are locked FOR UPDATE SKIP LOCKED, so processes claiming at once take
    different rows; ON CONFLICT decides races with claims committed meanwhile (a claim is
    taken over only when it expired or is already ours). Returns the claimed rows."""
    lead: list[Any] = [limit, owner, float(lease_s), *([after] if after is not None else [])]
    conditions, args = row_filter.where(len(lead) + 1, "m")
    if after is not None:
        conditions.insert(0, "m.media_id > $4")
    where = " AND ".join(conditions) if conditions else "TRUE"
    columns = row_columns("p")
    sql = f"""
WITH candidates AS (
    SELECT m.media_id FROM post_media m
     WHERE {where} AND {HELD_BY_NO_OTHER}
     ORDER BY m.media_id
     LIMIT $1
       FOR UPDATE OF m SKIP LOCKED
), claimed AS (
    INSERT INTO archiver_claims AS c (media_id, owner, expires_at)
    SELECT media_id, $2, now() + make_interval(secs => $3) FROM candidates
    ON CONFLICT (media_id) DO UPDATE SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at
     WHERE c.expires_at <= now() OR c.owner = EXCLUDED.owner
    RETURNING c.media_id
)
SELECT {columns} FROM post_media p WHERE p.media_id IN (SELECT media_id FROM claimed)
 ORDER BY p.media_id
"""
    return Query(sql, (*lead, *args))


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


def held_elsewhere_query(row_filter: RowFilter, owner: str) -> Query:
    """Owners other than `owner` with live claims on rows `row_filter` selects: each owner,
    its row count and when its last lease ends."""
    conditions, args = row_filter.where(2, "m")
    where = "".join(f" AND {c}" for c in conditions)
    return Query(
        f"""
SELECT c.owner, count(*) AS rows, max(c.expires_at) AS lease_ends
  FROM archiver_claims c JOIN post_media m ON m.media_id = c.media_id
 WHERE c.expires_at > now() AND c.owner <> $1{where}
 GROUP BY c.owner
 ORDER BY c.owner
""",
        (owner, *args),
    )


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
