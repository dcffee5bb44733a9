"""`archiver prune-local`: free disk space by deleting local files that are safely archived.

A local file is the only copy until it is proved archived, so a file is deleted only when
all of these hold, proved in this run:
1. the row's `archive_url` names the object archiver itself would make for it (the
   configured bucket and prefix, the row's own MD5 and month: `keys.archived_key`);
2. the file's own bytes hash to `md5_sum` (read from the opened file that is then deleted);
3. no row that is not yet archived has the same MD5 (its upload still needs the file);
4. the object at that key is present and intact by the integrity rule (`integrity.py`);
5. the name still names the same unchanged file when it is deleted, by name relative to the
   directory descriptor held since it was opened (`localfs`): a symlink swapped in for a
   directory meanwhile cannot redirect the delete outside the cache root.
The database is not changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from archiver.errors import StorageError
from archiver.integrity import content_mismatch, mismatch
from archiver.keys import NotOurs, row_key
from archiver.localfs import CacheRoot, LocalFile, why
from archiver.models import MediaRow, ObjectInfo, Problem, ProblemKind
from archiver.pipeline import Interrupt, for_each, to_the_end
from archiver.progress import Progress, counted, human_bytes, listed, printable, problem_lines
from archiver.resolve import Found, NotFound, Resolver, open_cache_root, resolver_for
from archiver.services import connected
from archiver.settings import DEFAULT_CONCURRENCY, Settings
from archiver.sql import RowFilter

MAX_LISTED = 20


@dataclass(frozen=True)
class PruneOptions:
    older_than_days: float | None = None
    media_types: tuple[str, ...] = ()
    limit: int | None = None
    dry_run: bool = False
    concurrency: int = DEFAULT_CONCURRENCY


@dataclass
class PruneReport:
    dry_run: bool
    checked: int = 0
    deleted: int = 0
    bytes_freed: int = 0
    missing_local: int = 0
    would_delete: dict[str, int] = field(default_factory=dict)  # dry run: path -> size
    kept: list[Problem] = field(default_factory=list)  # every row whose file stayed, and why
    say: Callable[[str], None] = field(default=lambda _line: None, repr=False)  # -v lines
    error: str | None = None  # what stopped the command, when something did

    @property
    def kept_unverified(self) -> int:
        """Rows whose file or object could not be proved: kept."""
        return self._count(ProblemKind.KEPT_UNVERIFIED)

    @property
    def kept_needed(self) -> int:
        """Rows whose file a row not yet archived needs (same MD5): kept for its upload."""
        return self._count(ProblemKind.KEPT_NEEDED)

    @property
    def kept_symlink(self) -> int:
        """Rows whose file is reached through a symlink below the cache root: never deleted."""
        return self._count(ProblemKind.KEPT_SYMLINK)

    @property
    def invalid(self) -> int:
        """Rows that are unusable themselves (archive_url, md5_sum, created_at, path)."""
        return self._count(ProblemKind.INVALID)

    def _count(self, kind: ProblemKind) -> int:
        return sum(1 for p in self.kept if p.kind == kind)

    @property
    def exit_code(self) -> int:
        return 1 if self.kept_unverified or self.invalid else 0

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "checked": self.checked,
            "deleted": self.deleted,
            "bytes_freed": self.bytes_freed,
            "kept_unverified": self.kept_unverified,
            "kept_needed": self.kept_needed,
            "kept_symlink": self.kept_symlink,
            "invalid": self.invalid,
            "missing_local": self.missing_local,
            "dry_run": self.dry_run,
        }
        if self.dry_run:
            data["would_delete"] = len(self.would_delete)
            data["bytes_would_free"] = sum(self.would_delete.values())
        data["kept"] = [p.as_json() for p in self.kept]
        return data

    def keep(
        self, row: MediaRow, why: str, *, kind: ProblemKind = ProblemKind.KEPT_UNVERIFIED
    ) -> int:
        """The row's file stays (`kind`: kept_unverified, kept_needed for a row not yet
        archived, kept_symlink); nothing freed."""
        self.kept.append(Problem(row.media_id, kind, why, url=row.archive_url))
        self.say(f"{kind} {row.media_id}: {why}")
        return 0

    def refuse(self, row: MediaRow, why: str) -> int:
        """The row cannot be judged (bad archive_url, md5_sum, created_at, path)."""
        self.kept.append(Problem(row.media_id, ProblemKind.INVALID, why, url=row.archive_url))
        self.say(f"invalid {row.media_id}: {why}")
        return 0


class ObjectHeads(Protocol):
    """The one S3 call prune-local makes (`storage.Storage` has it)."""

    async def head_object(self, key: str) -> ObjectInfo | None: ...


@dataclass
class _Pruner:
    settings: Settings
    store: ObjectHeads
    cache: CacheRoot
    resolver: Resolver
    needed: set[bytes]  # MD5s of rows not yet archived
    report: PruneReport
    room: int | None = None  # files left to prove under --limit (None: no limit)

    @property
    def full(self) -> bool:
        """--limit files have been taken to be proved: no more rows are needed."""
        return self.room == 0

    async def prune(self, row: MediaRow) -> int:
        """Check one row and delete its file when everything is proved; bytes freed. Only
        a file taken to be proved counts towards --limit: a row without a local file (pruned
        already), an invalid row, a file kept as a symlink or for a row not yet archived
        does not, so that pruning in batches moves on."""
        report = self.report
        if self.full:
            return 0  # in flight when the limit was reached: left for the next run
        report.checked += 1
        ours = row_key(row, bucket=self.settings.bucket, prefix=self.settings.key_prefix)
        if isinstance(ours, NotOurs):
            return report.refuse(row, ours.reason)
        md5, key = ours
        found = await self.resolver.locate(row)
        if isinstance(found, NotFound):
            report.missing_local += 1
            return 0
        if not isinstance(found, Found):
            return report.refuse(row, found.reason)
        if found.through_link:
            reason = f"{found.path} is reached through a symlink below the cache root: not deleted"
            return report.keep(row, reason, kind=ProblemKind.KEPT_SYMLINK)
        if bytes.fromhex(md5) in self.needed:
            reason = "a row not yet archived has the same file"
            return report.keep(row, reason, kind=ProblemKind.KEPT_NEEDED)
        if self.room is not None:
            if self.room == 0:
                report.checked -= 1  # not looked at after all: left for the next run
                return 0
            self.room -= 1
        try:
            f = await asyncio.to_thread(self.cache.open_file, found.path)
        except OSError as exc:
            return report.keep(row, f"cannot open {found.path}: {why(exc)}")
        try:
            return await self._prove_and_delete(row, md5, key, f)
        finally:
            f.close()

    async def _prove_and_delete(self, row: MediaRow, md5: str, key: str, f: LocalFile) -> int:
        report = self.report
        try:
            actual = await asyncio.to_thread(f.md5)
        except OSError as exc:
            return report.keep(row, f"cannot read {f.path}: {why(exc)}")
        wrong = content_mismatch(actual, md5)
        if wrong is not None:
            return report.keep(row, f"the local file's {wrong}")
        try:
            info = await self.store.head_object(key)
        except StorageError as exc:  # a 403 or an error on this object: this row's problem
            return report.keep(row, str(exc))
        verdict = mismatch(info, md5, f.size)
        if verdict is not None:
            return report.keep(row, f"object {key}: {verdict}")
        if report.dry_run:
            if str(f.path) in report.would_delete:
                # A row sharing a file another row would delete: a real run finds it gone.
                report.missing_local += 1
                return 0
            report.would_delete[str(f.path)] = f.size  # rows sharing a file: listed once
            report.say(f"would delete {row.media_id}: {f.path} ({f.size:,} bytes)")
            return f.size  # what the display counts: the bytes it would free
        # Once begun, a delete is seen to its end and counted, even when a second Ctrl-C
        # abandons the work in flight: the report must say what was deleted.
        return await to_the_end(self._delete(row, f))

    async def _delete(self, row: MediaRow, f: LocalFile) -> int:
        report = self.report
        outcome = await asyncio.to_thread(f.unlink_if_unchanged)
        if outcome == "gone":  # deleted for another row sharing the file
            report.missing_local += 1
            return 0
        if outcome == "changed":
            return report.keep(row, f"{f.path} changed since it was checked: not deleted")
        report.deleted += 1
        report.bytes_freed += f.size
        report.say(f"deleted {row.media_id}: {f.path} ({f.size:,} bytes)")
        return f.size


async def run_prune(
    settings: Settings,
    options: PruneOptions,
    progress: Progress,
    *,
    cwd: Path | None = None,
    interrupt: Interrupt | None = None,
) -> PruneReport:
    """Check and delete; the report of what happened (or would happen, on a dry run)."""
    cwd = cwd or Path.cwd()
    report = PruneReport(dry_run=options.dry_run, say=progress.say)
    cutoff = None
    if options.older_than_days is not None:
        cutoff = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=options.older_than_days)
    row_filter = RowFilter(archived=True, media_types=options.media_types, created_before=cutoff)
    with open_cache_root(settings) as cache:
        async with connected(settings, concurrency=options.concurrency) as (db, store):
            assert store is not None
            # With --limit the rows are not known ahead (rows without a file take none).
            total = None if options.limit else await db.count_rows(row_filter)
            pruner = _Pruner(
                settings,
                store,
                cache,
                resolver_for(settings, cache.path, cwd),
                needed=await db.unarchived_md5s(),
                report=report,
                room=options.limit,
            )

            async def rows() -> AsyncIterator[MediaRow]:
                async for row in db.rows(row_filter):
                    if pruner.full:
                        return
                    yield row

            async def prune(row: MediaRow) -> None:
                progress.step(await pruner.prune(row))

            def failed(row: MediaRow, reason: str) -> None:
                report.keep(row, reason)
                progress.step(0)

            with progress.running(total, interrupt):
                await for_each(
                    rows(),
                    prune,
                    concurrency=options.concurrency,
                    interrupt=interrupt,
                    on_error=failed,
                )
    return report


def format_prune(report: PruneReport) -> str:
    would = [
        f"  would delete {printable(path)} ({size:,} bytes)"
        for path, size in report.would_delete.items()
    ]
    lines = listed(would, MAX_LISTED) if report.dry_run else []
    lines += problem_lines(report.kept, MAX_LISTED)
    freed = sum(report.would_delete.values()) if report.dry_run else report.bytes_freed
    verb = "Would delete" if report.dry_run else "Deleted"
    count = len(report.would_delete) if report.dry_run else report.deleted
    lines.append(
        f"Checked {counted(report.checked, 'archived row')}. {verb} "
        f"{counted(count, 'local file')}, {human_bytes(freed)}. Kept {report.kept_unverified:,} "
        f"whose file or object could not be proved, {report.kept_needed:,} still needed by rows "
        f"not yet archived, {report.kept_symlink:,} reached through a symlink; "
        f"{counted(report.invalid, 'invalid row')}; {report.missing_local:,} had no local file."
    )
    return "\n".join(lines)
