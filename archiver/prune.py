"""`archiver prune-local`: free disk space by deleting local files that are safely archived.

A file is deleted only when, in this run, its row's object was found present and intact
(size equal to the file's, and the ETag, or for a multipart object the MD5 archiver
recorded, equal to `md5_sum`), and only when the file is inside the cache root and was
reached without a symlink. The database is not changed.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from archiver.db import RowFilter
from archiver.errors import ArchiverError
from archiver.keys import normalize_md5, split_archive_url
from archiver.models import MediaRow
from archiver.pipeline import for_each
from archiver.progress import Counter
from archiver.resolve import Found, NotFound, resolve_cache_root, resolve_file
from archiver.services import connected
from archiver.settings import Settings
from archiver.storage import ObjectInfo, Storage
from archiver.verify import compare

MAX_LISTED = 20


@dataclass(frozen=True)
class PruneOptions:
    older_than_days: float | None = None
    media_types: tuple[str, ...] = ()
    limit: int | None = None
    dry_run: bool = False
    concurrency: int = 32


@dataclass
class PruneReport:
    dry_run: bool
    checked: int = 0
    deleted: int = 0
    bytes_freed: int = 0
    kept_unverified: int = 0
    missing_local: int = 0
    would_delete: dict[str, int] = field(default_factory=dict)  # dry run: path -> size
    kept: list[tuple[str, str]] = field(default_factory=list)  # (media_id, why)

    @property
    def exit_code(self) -> int:
        return 1 if self.kept_unverified else 0

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "checked": self.checked,
            "deleted": self.deleted,
            "bytes_freed": self.bytes_freed,
            "kept_unverified": self.kept_unverified,
            "missing_local": self.missing_local,
            "dry_run": self.dry_run,
        }
        if self.dry_run:
            data["would_delete"] = len(self.would_delete)
            data["bytes_would_free"] = sum(self.would_delete.values())
        data["kept"] = [{"media_id": m, "why": why} for m, why in self.kept]
        return data


def strict_compare(info: ObjectInfo | None, md5: str, size: int) -> str | None:
    """Like verify's comparison, but a multipart object must carry the MD5 archiver
    recorded: its size alone is not enough to delete the only local copy."""
    verdict = compare(info, md5, size)
    if verdict is None and info is not None and info.is_multipart and "md5" not in info.metadata:
        return "multipart object without a recorded MD5: cannot be verified"
    return verdict


async def run_prune(
    settings: Settings,
    options: PruneOptions,
    progress: Counter,
    *,
    cwd: Path | None = None,
    stop: asyncio.Event | None = None,
) -> PruneReport:
    """Check and delete; the report of what happened (or would happen, on a dry run)."""
    cwd = cwd or Path.cwd()
    root = resolve_cache_root(settings)
    report = PruneReport(dry_run=options.dry_run)
    cutoff = None
    if options.older_than_days is not None:
        cutoff = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=options.older_than_days)
    row_filter = RowFilter(archived=True, media_types=options.media_types, created_before=cutoff)
    async with connected(settings, concurrency=options.concurrency) as (db, store):
        assert store is not None
        total = await db.count_rows(row_filter)
        progress.start(total if options.limit is None else min(total, options.limit))

        async def prune(row: MediaRow) -> None:
            freed = await _prune_row(row, store, root, cwd, report, options.dry_run)
            progress.step(freed)

        try:
            await for_each(
                db.rows(row_filter, limit=options.limit),
                prune,
                concurrency=options.concurrency,
                stop=stop,
            )
        finally:
            progress.close()
    return report


async def _prune_row(
    row: MediaRow, store: Storage, root: Path, cwd: Path, report: PruneReport, dry_run: bool
) -> int:
    report.checked += 1
    md5 = normalize_md5(row.md5_sum)
    found = await asyncio.to_thread(resolve_file, row, md5, root, cwd) if md5 else None
    if isinstance(found, NotFound):
        report.missing_local += 1
        return 0

    def keep(why: str) -> int:
        report.kept_unverified += 1
        report.kept.append((row.media_id, why))
        return 0

    if md5 is None or found is None:
        return keep("md5_sum is not 32 hex digits")
    if not isinstance(found, Found):
        return keep(found.reason)  # outside the cache root, not a regular file
    if found.through_link:
        return keep(f"{found.path} is reached through a symlink: not deleted")
    parsed = split_archive_url(row.archive_url or "")
    if parsed is None:
        return keep(f"archive_url {row.archive_url!r} is not an s3:// URL")
    size = found.size
    try:
        info = await store.head_object(parsed[1], bucket=parsed[0])
    except ArchiverError as exc:
        if exc.exit_code == 2:
            raise
        return keep(str(exc))
    verdict = strict_compare(info, md5, size)
    if verdict is not None:
        return keep(f"object {verdict}")
    if dry_run:
        report.would_delete[str(found.path)] = size  # rows sharing a file: listed once
        return 0
    try:
        os.unlink(found.path)
    except FileNotFoundError:
        report.missing_local += 1
        return 0
    report.deleted += 1
    report.bytes_freed += size
    return size


def format_prune(report: PruneReport) -> str:
    lines = []
    if report.dry_run:
        for path, size in list(report.would_delete.items())[:MAX_LISTED]:
            lines.append(f"  would delete {path} ({size:,} bytes)")
        if len(report.would_delete) > MAX_LISTED:
            lines.append(f"  ... and {len(report.would_delete) - MAX_LISTED:,} more")
    for media_id, why in report.kept[:MAX_LISTED]:
        lines.append(f"  kept {media_id}: {why}")
    if len(report.kept) > MAX_LISTED:
        lines.append(f"  ... and {len(report.kept) - MAX_LISTED:,} more kept (--json lists all)")
    freed = sum(report.would_delete.values()) if report.dry_run else report.bytes_freed
    verb = "Would delete" if report.dry_run else "Deleted"
    count = len(report.would_delete) if report.dry_run else report.deleted
    lines.append(
        f"Checked {report.checked:,} archived rows. {verb} {count:,} local files, "
        f"{freed / 1e6:,.1f} MB. Kept {report.kept_unverified:,} whose object could not be "
        f"verified; {report.missing_local:,} had no local file."
    )
    return "\n".join(lines)
