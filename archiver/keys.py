"""Object keys and archive URLs (pure).

The database is written by another program, so an `archive_url` is never used as it is:
`archived_key` checks that it names an object archiver itself would have made for the row
(the configured bucket, the key prefix, the row's own MD5, the month of its `created_at`)
and only then gives the key that the commands read, compare or restore.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from archiver.models import MediaRow

_MD5_RE = re.compile(r"^[0-9a-f]{32}\Z")
# A file suffix archiver puts in a key: a dot and a few ASCII letters or digits.
_PLAIN_EXT_RE = re.compile(r"^\.[a-z0-9]{1,16}\Z")
_DATED_NAME_RE = re.compile(r"^(\d{4})/(\d{2})/([0-9a-f]{32})(\.[a-z0-9]{1,16})\Z")


def normalize_md5(md5_sum: str | None) -> str | None:
    """`md5_sum` lower-cased and stripped when it is 32 hex digits, else None."""
    if md5_sum is None:
        return None
    value = md5_sum.strip().lower()
    return value if _MD5_RE.match(value) else None


def plain_ext(suffix: str) -> str | None:
    """`suffix` lower-cased when it is a plain one (`.jpg`, `.mp4`), else None: a file name
    with other characters (not UTF-8, spaces, controls) never reaches an object key."""
    value = suffix.lower()
    return value if _PLAIN_EXT_RE.match(value) else None


def as_utc(created_at: datetime | None, mtime_s: float) -> datetime:
    """`created_at` read as UTC (naive values are UTC), else the file's mtime in UTC."""
    if created_at is None:
        return datetime.fromtimestamp(mtime_s, tz=UTC)
    if created_at.tzinfo is None:
        return created_at.replace(tzinfo=UTC)
    return created_at.astimezone(UTC)


def object_key(prefix: str, when: datetime, md5: str, ext: str) -> str:
    """`{prefix}/{YYYY}/{MM}/{md5}{ext}` for a UTC timestamp."""
    return f"{prefix}/{when.year:04d}/{when.month:02d}/{md5}{ext}"


def archive_url(bucket: str, key: str) -> str:
    """`s3://{bucket}/{key}`."""
    return f"s3://{bucket}/{key}"


@dataclass(frozen=True, slots=True)
class NotOurs:
    """Why an `archive_url` does not name an object archiver made for its row."""

    reason: str


def archived_key(
    url: str | None, *, bucket: str, prefix: str, md5: str, created_at: datetime | None
) -> str | NotOurs:
    """The key of the row's object when `url` is `s3://{bucket}/{prefix}/{YYYY}/{MM}/{md5}{ext}`
    with the configured bucket and prefix, the row's own MD5, a plain suffix and (when the row
    has a `created_at`) its month; else why not. Nothing outside the bucket's prefix, and no
    object named after another file, is ever read on a row's word."""
    if url is None:
        return NotOurs("not archived")
    head = f"s3://{bucket}/{prefix}/"
    if not url.startswith(head):
        return NotOurs(f"archive_url is not under s3://{bucket}/{prefix}/")
    match = _DATED_NAME_RE.match(url[len(head) :])
    if match is None:
        return NotOurs(f"archive_url does not end in YYYY/MM/{{md5}}.{{ext}} under {prefix}/")
    year, month, named_md5, _ext = match.groups()
    if named_md5 != md5:
        return NotOurs(f"archive_url names another file's MD5 ({named_md5}), not md5_sum {md5}")
    if not 1 <= int(month) <= 12:
        return NotOurs(f"archive_url has no real month ({year}/{month})")
    if created_at is not None:
        when = as_utc(created_at, 0.0)
        if (int(year), int(month)) != (when.year, when.month):
            return NotOurs(
                f"archive_url is filed under {year}/{month}, created_at is "
                f"{when.year:04d}/{when.month:02d}"
            )
    return url[len(f"s3://{bucket}/") :]


def row_key(row: MediaRow, *, bucket: str, prefix: str) -> tuple[str, str] | NotOurs:
    """(md5, key) of an archived row's object, or why the row names no object archiver made
    for it: its `md5_sum` and `created_at` must be usable, then see `archived_key`."""
    md5 = normalize_md5(row.md5_sum)
    if md5 is None:
        return NotOurs(f"md5_sum {row.md5_sum!r} is not 32 hex digits")
    if row.created_at_bad is not None:
        return NotOurs(f"created_at {row.created_at_bad!r} is out of range")
    key = archived_key(
        row.archive_url, bucket=bucket, prefix=prefix, md5=md5, created_at=row.created_at
    )
    return key if isinstance(key, NotOurs) else (md5, key)
