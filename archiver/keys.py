"""Object keys and archive URLs (pure)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_MD5_RE = re.compile(r"^[0-9a-f]{32}$")


def normalize_md5(md5_sum: str | None) -> str | None:
    """`md5_sum` lower-cased and stripped when it is 32 hex digits, else None."""
    if md5_sum is None:
        return None
    value = md5_sum.strip().lower()
    return value if _MD5_RE.match(value) else None


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


def split_archive_url(url: str) -> tuple[str, str] | None:
    """(bucket, key) of an `s3://bucket/key` URL, or None when it is not one."""
    if not url.startswith("s3://"):
        return None
    bucket, _, key = url[5:].partition("/")
    return (bucket, key) if bucket and key else None
