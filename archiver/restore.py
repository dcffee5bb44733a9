"""`archiver restore`: download archived objects back into the cache.

Each object is streamed (a chunk at a time) into a temporary file in its final directory,
hashed as it arrives; only when the MD5 equals `md5_sum` does it take its final name,
`{cache_root}/{media_type}s/{md5}{ext}`, and then without ever replacing a file that is
already there (a hard link, which fails when the name exists, then the temporary name is
removed). A file already in place with the right content counts as `already_present`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from archiver.db import RowFilter
from archiver.errors import ArchiverError, ConfigError
from archiver.keys import normalize_md5, split_archive_url
from archiver.models import MediaRow
from archiver.pipeline import for_each
from archiver.progress import Counter
from archiver.resolve import Found, NotFound, media_dir, resolve_cache_root, resolve_file
from archiver.services import connected
from archiver.settings import Settings
from archiver.storage import Storage

MAX_LISTED = 20


@dataclass(frozen=True)
class RestoreOptions:
    media_ids: tuple[str, ...] = ()
    all_missing: bool = False
    concurrency: int = 8
    dry_run: bool = False

    def __post_init__(self) -> None:
        if bool(self.media_ids) == self.all_missing:
            raise ConfigError("restore needs --media-id ID (repeatable) or --all-missing")


@dataclass
class RestoreReport:
    dry_run: bool
    selected: int = 0
    restored: int = 0
    already_present: int = 0
    failed: int = 0
    bytes: int = 0
    would_restore: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def fail(self, media_id: str, why: str) -> None:
        self.failed += 1
        self.failures.append((media_id, why))

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "selected": self.selected,
            "restored": self.restored,
            "already_present": self.already_present,
            "failed": self.failed,
            "dry_run": self.dry_run,
        }
        if self.dry_run:
            data["would_restore"] = len(self.would_restore)
        data["failures"] = [{"media_id": m, "why": why} for m, why in self.failures]
        return data


def target_path(row: MediaRow, md5: str, key: str, root: Path) -> Path | None:
    """`{root}/{media_type}s/{md5}{ext}` with the object key's extension, or None when the
    row cannot name a place inside the cache root."""
    directory = media_dir(root, row.media_type)
    if directory is None:
        return None
    suffix = PurePosixPath(key).suffix.lower()
    if suffix and not suffix[1:].isalnum():
        return None
    return directory / f"{md5}{suffix}"


def _md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


async def run_restore(
    settings: Settings,
    options: RestoreOptions,
    progress: Counter,
    *,
    cwd: Path | None = None,
    stop: asyncio.Event | None = None,
) -> RestoreReport:
    """Download what is asked; the report of what happened."""
    cwd = cwd or Path.cwd()
    root = resolve_cache_root(settings)
    report = RestoreReport(dry_run=options.dry_run)
    row_filter = RowFilter(
        archived=None if options.media_ids else True, media_ids=options.media_ids
    )
    async with connected(settings, concurrency=options.concurrency) as (db, store):
        assert store is not None
        progress.start(len(options.media_ids) or await db.count_rows(row_filter))
        seen: set[str] = set()

        async def restore(row: MediaRow) -> None:
            seen.add(row.media_id)
            nbytes = await _restore_row(row, store, root, cwd, report, options)
            progress.step(nbytes)

        try:
            await for_each(db.rows(row_filter), restore, concurrency=options.concurrency, stop=stop)
        finally:
            progress.close()
        for media_id in sorted(set(options.media_ids) - seen):
            report.selected += 1
            report.fail(media_id, "no such row")
    return report


def plan(row: MediaRow, md5: str | None, root: Path) -> tuple[tuple[str, str], Path] | str:
    """Where the row's object is and where its file goes, or why it cannot be restored."""
    if md5 is None:
        return "md5_sum is not 32 hex digits"
    if row.archive_url is None:
        return "not archived"
    parsed = split_archive_url(row.archive_url)
    if parsed is None:
        return f"archive_url {row.archive_url!r} is not an s3:// URL"
    target = target_path(row, md5, parsed[1], root)
    if target is None:
        return "the row names no place inside the cache root"
    return parsed, target


async def _restore_row(
    row: MediaRow,
    store: Storage,
    root: Path,
    cwd: Path,
    report: RestoreReport,
    options: RestoreOptions,
) -> int:
    md5 = normalize_md5(row.md5_sum)
    found = await asyncio.to_thread(resolve_file, row, md5, root, cwd) if md5 else None
    if options.all_missing and not isinstance(found, NotFound):
        return 0  # not missing (or not a row we may touch): not selected
    report.selected += 1
    where = plan(row, md5, root)
    if isinstance(where, str):
        report.fail(row.media_id, where)
        return 0
    if isinstance(found, Found):
        if await asyncio.to_thread(_md5_of, found.path) == md5:
            report.already_present += 1
        else:
            report.fail(row.media_id, f"a different file is at {found.path} (not replaced)")
        return 0
    parsed, target = where
    if options.dry_run:
        report.would_restore.append(f"{row.archive_url} -> {target}")
        return 0
    try:
        nbytes, fresh = await _download(store, parsed, target, md5 or "")
    except (RestoreFailed, OSError) as exc:
        report.fail(row.media_id, str(exc))
        return 0
    except ArchiverError as exc:
        if exc.exit_code == 2:
            raise
        report.fail(row.media_id, str(exc))
        return 0
    if not fresh:
        report.already_present += 1
        return 0
    report.restored += 1
    report.bytes += nbytes
    return nbytes


class RestoreFailed(Exception):
    """This row's download cannot become its file."""


async def _download(
    store: Storage, parsed: tuple[str, str], target: Path, md5: str
) -> tuple[int, bool]:
    """Stream the object to a temporary name beside `target`, check its MD5, publish it;
    (bytes, whether the file is new)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.restore-{uuid.uuid4().hex[:8]}")
    digest = hashlib.md5()
    f = await asyncio.to_thread(temp.open, "xb")
    try:

        async def sink(chunk: bytes) -> None:
            digest.update(chunk)
            await asyncio.to_thread(f.write, chunk)

        nbytes = await store.download(parsed[1], sink, bucket=parsed[0])
        await asyncio.to_thread(f.close)
        if digest.hexdigest() != md5:
            raise RestoreFailed(f"downloaded bytes hash to {digest.hexdigest()}, not {md5}")
        return nbytes, await asyncio.to_thread(_publish, temp, target, md5)
    finally:
        f.close()
        temp.unlink(missing_ok=True)


def _publish(temp: Path, target: Path, md5: str) -> bool:
    """Give the verified download its final name without replacing anything; False when
    the same content was already there."""
    try:
        os.link(temp, target)  # fails if the name exists: never overwrites
    except FileExistsError:
        if _md5_of(target) == md5:
            return False
        raise RestoreFailed(f"a different file is already at {target}") from None
    return True


def format_restore(report: RestoreReport) -> str:
    lines = [f"  would restore {line}" for line in report.would_restore[:MAX_LISTED]]
    if len(report.would_restore) > MAX_LISTED:
        lines.append(f"  ... and {len(report.would_restore) - MAX_LISTED:,} more")
    lines += [f"  failed {m}: {why}" for m, why in report.failures[:MAX_LISTED]]
    verb = "Would restore" if report.dry_run else "Restored"
    count = len(report.would_restore) if report.dry_run else report.restored
    lines.append(
        f"Selected {report.selected:,}. {verb} {count:,} files "
        f"({report.bytes / 1e6:,.1f} MB); {report.already_present:,} already present; "
        f"{report.failed:,} failed."
    )
    return "\n".join(lines)
