"""`archiver restore`: download archived objects back into the cache.

Only objects archiver itself would have made for a row are read: the configured bucket, the
key prefix, the row's own MD5 and month (`keys.archived_key`); a row whose `archive_url`
names anything else is reported and skipped. Each object is streamed (a chunk at a time)
into an unnamed file in its final directory (`localfs.NewFile`), hashed as it arrives; only
when the MD5 equals `md5_sum` is it linked to its final name,
`{cache_root}/{media_type}s/{md5}{ext}`, and never over an existing name. A crash at any
point leaves nothing behind. A file already in place with the right content counts as
`already_present`; anything else in the way (another file, a FIFO) is reported, not touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from archiver.errors import ConfigError, RestoreFailed, StorageError
from archiver.integrity import content_mismatch
from archiver.keys import NotOurs, row_key
from archiver.localfs import CacheRoot, NewFile, why
from archiver.models import MediaRow, Problem, ProblemKind
from archiver.pipeline import Interrupt, for_each
from archiver.progress import Progress, counted, human_bytes, listed, printable, problem_lines
from archiver.resolve import (
    Found,
    NotFound,
    Resolver,
    media_dir_name,
    open_cache_root,
    resolver_for,
)
from archiver.services import connected
from archiver.settings import DEFAULT_CONCURRENCY, Settings
from archiver.sql import RowFilter
from archiver.storage import Storage

MAX_LISTED = 20


@dataclass(frozen=True)
class RestoreOptions:
    media_ids: tuple[str, ...] = ()
    all_missing: bool = False
    concurrency: int = DEFAULT_CONCURRENCY
    dry_run: bool = False

    def __post_init__(self) -> None:
        if self.media_ids and self.all_missing:
            raise ConfigError("restore takes --media-id ID or --all-missing, not both")
        if not self.media_ids and not self.all_missing:
            raise ConfigError("restore needs --media-id ID (repeatable) or --all-missing")


@dataclass
class RestoreReport:
    dry_run: bool
    selected: int = 0
    restored: int = 0
    already_present: int = 0
    bytes: int = 0
    would_restore: list[str] = field(default_factory=list)
    failures: list[Problem] = field(default_factory=list)  # invalid, failed, no_such_row
    say: Callable[[str], None] = field(default=lambda _line: None, repr=False)  # -v lines
    error: str | None = None  # what stopped the command, when something did

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def fail(self, row: MediaRow, why: str, *, kind: ProblemKind = ProblemKind.FAILED) -> int:
        """The row's file was not restored (`kind` "invalid": the row itself is unusable)."""
        self.failures.append(Problem(row.media_id, kind, why, url=row.archive_url))
        self.say(f"{kind} {row.media_id}: {why}")
        return 0

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
        data["failures"] = [p.as_json() for p in self.failures]
        return data


@dataclass(frozen=True)
class Target:
    """Where a row's object is, and where its file goes."""

    md5: str
    key: str
    directories: tuple[str, ...]  # below the cache root, e.g. (`{media_type}s`,)
    name: str  # e.g. `{md5}{ext}`
    row_path: bool = False  # the row's own local_file_path

    def path(self, root: Path) -> Path:
        return root.joinpath(*self.directories, self.name)


def plan(row: MediaRow, settings: Settings, resolver: Resolver) -> Target | str:
    """Where the row's object is and where its file goes, or why it cannot be restored:
    the row's `local_file_path` when it names a file inside the cache root (where the app
    looks for it), else `{media_type}s/{md5}{ext}`."""
    ours = row_key(row, bucket=settings.bucket, prefix=settings.key_prefix)
    if isinstance(ours, NotOurs):
        return ours.reason
    md5, key = ours
    given = _inside_root(row.local_file_path, resolver)
    if given is not None:
        return Target(md5, key, given[:-1], given[-1], row_path=True)
    directory = media_dir_name(row.media_type)
    if directory is None:
        return f"media_type {row.media_type!r} is not a plain word"
    return Target(md5, key, (directory,), f"{md5}{PurePosixPath(key).suffix}")


def _inside_root(local_file_path: str | None, resolver: Resolver) -> tuple[str, ...] | None:
    """The parts of `local_file_path` below the cache root, when it names a file there
    (written with plain names only: no symlink but the root's own is followed when the
    file is created, `localfs.CacheRoot.open_dir`)."""
    if not local_file_path:
        return None
    try:
        given = Path(local_file_path)
        path = resolver.below_root(given if given.is_absolute() else resolver.cwd / given)
        parts = path.relative_to(resolver.root).parts
    except (ValueError, OSError):  # outside the root, a NUL byte
        return None
    if not parts or any(p in ("", ".", "..") for p in parts):
        return None
    return tuple(parts)


@dataclass
class _Restorer:
    settings: Settings
    store: Storage
    cache: CacheRoot
    resolver: Resolver
    options: RestoreOptions
    report: RestoreReport

    async def restore(self, row: MediaRow) -> int | None:
        """Restore one row's file when it is missing (or named); bytes written, None when
        the row is not selected (--all-missing: its file is there)."""
        report = self.report
        found = await self.resolver.locate(row)
        where = plan(row, self.settings, self.resolver)
        if self.options.all_missing and isinstance(found, Found):
            # Present where every other command finds it (verify --check-local does not call
            # it missing): not selected, and no second copy is made under another name.
            return None
        if isinstance(found, Found) and isinstance(where, Target) and where.row_path:
            # A named row's file found elsewhere than where the app looks (its
            # local_file_path): restored there.
            found = found if found.via == "local_file_path" else NotFound("not at its path")
        report.selected += 1
        if isinstance(where, str):
            return report.fail(row, where, kind=ProblemKind.INVALID)
        if not isinstance(found, NotFound | Found):
            reason = f"its local file cannot be used: {found.reason}"
            return report.fail(row, reason, kind=ProblemKind.INVALID)
        if isinstance(found, Found):
            try:
                same = await asyncio.to_thread(self._holds, found.path, where.md5)
            except RestoreFailed as exc:
                return report.fail(row, str(exc))
            if same:
                report.already_present += 1
                return 0
            return report.fail(row, f"a different file is at {found.path} (not replaced)")
        if self.options.dry_run:
            target = where.path(self.cache.path)
            report.would_restore.append(f"s3://{self.settings.bucket}/{where.key} -> {target}")
            report.say(f"would restore {row.media_id}: {target}")
            return 0
        try:
            nbytes, fresh = await self._download(where)
        except (RestoreFailed, StorageError, OSError) as exc:
            reason = why(exc) if isinstance(exc, OSError) else str(exc)
            return report.fail(row, reason)
        if not fresh:
            report.already_present += 1
            return 0
        report.restored += 1
        report.bytes += nbytes
        report.say(f"restored {row.media_id}: {where.path(self.cache.path)} ({nbytes:,} bytes)")
        return nbytes

    def _holds(self, path: Path, md5: str) -> bool:
        """Whether the regular file at `path` has this MD5 (never blocks on a FIFO)."""
        try:
            with self.cache.open_file(path) as f:
                return content_mismatch(f.md5(), md5) is None
        except OSError as exc:
            raise RestoreFailed(f"{path}: {why(exc)}") from exc

    async def _download(self, where: Target) -> tuple[int, bool]:
        """Stream the object into an unnamed file in its directory, check its MD5, give it
        its name; (bytes, whether the file is new)."""
        dir_fd = await asyncio.to_thread(self.cache.open_dir, where.directories, create=True)
        try:
            new = await asyncio.to_thread(NewFile, dir_fd, where.name)
            try:
                digest = hashlib.md5()

                async def sink(chunk: bytes) -> None:
                    digest.update(chunk)
                    await asyncio.to_thread(new.write, chunk)

                nbytes = await self.store.download(where.key, sink)
                wrong = content_mismatch(digest.hexdigest(), where.md5)
                if wrong is not None:
                    raise RestoreFailed(f"the downloaded {wrong}: not restored")
                if await asyncio.to_thread(new.publish):
                    return nbytes, True
            finally:
                await asyncio.shield(asyncio.to_thread(new.close))
            # The name is taken: by the same content (restored meanwhile), or not.
            path = where.path(self.cache.path)
            if await asyncio.to_thread(self._holds, path, where.md5):
                return nbytes, False
            raise RestoreFailed(f"a different file is already at {path}")
        finally:
            with contextlib.suppress(OSError):
                os.close(dir_fd)


async def run_restore(
    settings: Settings,
    options: RestoreOptions,
    progress: Progress,
    *,
    cwd: Path | None = None,
    interrupt: Interrupt | None = None,
) -> RestoreReport:
    """Download what is asked; the report of what happened."""
    cwd = cwd or Path.cwd()
    report = RestoreReport(dry_run=options.dry_run, say=progress.say)
    row_filter = RowFilter(
        archived=None if options.media_ids else True, media_ids=options.media_ids
    )
    with open_cache_root(settings) as cache:
        async with connected(settings, concurrency=options.concurrency) as (db, store):
            assert store is not None
            restorer = _Restorer(
                settings, store, cache, resolver_for(settings, cache.path, cwd), options, report
            )
            # --all-missing: how many files are missing is known only at the end; the
            # display counts the rows selected (not every archived row looked at).
            total = len(options.media_ids) or None
            seen: set[str] = set()

            async def restore(row: MediaRow) -> None:
                seen.add(row.media_id)
                nbytes = await restorer.restore(row)
                if nbytes is not None:
                    progress.step(nbytes)

            def failed(row: MediaRow, reason: str) -> None:
                report.fail(row, reason)
                progress.step(0)

            with progress.running(total, interrupt):
                await for_each(
                    db.rows(row_filter),
                    restore,
                    concurrency=options.concurrency,
                    interrupt=interrupt,
                    on_error=failed,
                )
            if not (interrupt and interrupt.triggered):
                for media_id in sorted(set(options.media_ids) - seen):
                    report.selected += 1
                    report.failures.append(
                        Problem(media_id, ProblemKind.NO_SUCH_ROW, "no such row")
                    )
    return report


def format_restore(report: RestoreReport) -> str:
    would = [f"  would restore {printable(line)}" for line in report.would_restore]
    lines = listed(would, MAX_LISTED) + problem_lines(report.failures, MAX_LISTED)
    verb = "Would restore" if report.dry_run else "Restored"
    count = len(report.would_restore) if report.dry_run else report.restored
    lines.append(
        f"Selected {report.selected:,}. {verb} {counted(count, 'file')} "
        f"({human_bytes(report.bytes)}); {report.already_present:,} already present; "
        f"{report.failed:,} failed."
    )
    return "\n".join(lines)
