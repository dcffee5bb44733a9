"""`archiver verify`: archive statistics, and optional checks of S3 objects and local files.

Statistics come from one aggregate query. `--verify-s3` HEADs every archived row's object
(concurrently, bounded) and compares it with the row: present; size equal to the local
file's (or, without one, the recorded `file_size`); for a single-part object the ETag
equal to `md5_sum`, for a multipart one the MD5 archiver recorded in its metadata (or the
size alone when nothing else exists). Only objects archiver would have made for the row are
asked for (`keys.archived_key`): a row whose `archive_url` names another bucket or key is
reported `invalid`. `--check-local` looks for every row's local file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archiver.db import Database, RowFilter, StatsRow
from archiver.errors import ArchiverError
from archiver.keys import NotOurs, normalize_md5, row_key
from archiver.models import MediaRow
from archiver.pipeline import for_each
from archiver.progress import printable
from archiver.resolve import Found, NotFound, Resolver, resolve_cache_root
from archiver.services import connected
from archiver.settings import Settings
from archiver.storage import ObjectInfo, Storage

RULE = "=" * 80
MAX_LISTED = 100  # problems listed in the text report (JSON lists them all)


@dataclass(frozen=True)
class VerifyOptions:
    verify_s3: bool = False
    check_local: bool = False
    limit: int | None = None
    concurrency: int = 32


@dataclass
class Problem:
    media_id: str
    kind: str  # missing, mismatched, error, invalid, missing_local
    url: str | None
    detail: str


@dataclass
class S3Check:
    checked: int = 0
    ok: int = 0
    missing: int = 0
    mismatched: int = 0
    errors: int = 0
    invalid: int = 0  # rows whose archive_url is not an object archiver made for them

    def as_json(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class LocalCheck:
    checked: int = 0
    missing: int = 0
    invalid: int = 0  # rows whose file must not be read (outside the root, bad md5_sum, ...)

    def as_json(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class VerifyReport:
    stats: list[StatsRow]
    s3: S3Check | None = None
    local: LocalCheck | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(s.total for s in self.stats)

    @property
    def archived(self) -> int:
        return sum(s.archived for s in self.stats)

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0

    def as_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "archived": self.archived,
            "not_archived": self.total - self.archived,
            "by_type": {
                s.media_type: {
                    "total": s.total,
                    "archived": s.archived,
                    "not_archived": s.total - s.archived,
                }
                for s in self.stats
            },
            "s3": self.s3.as_json() if self.s3 else None,
            "local": self.local.as_json() if self.local else None,
            "problems": [p.__dict__ for p in self.problems],
        }


def compare(info: ObjectInfo | None, md5: str | None, expected_size: int | None) -> str | None:
    """Why an object does not match its row ("missing", or a mismatch), or None when it does."""
    if info is None:
        return "missing"
    if expected_size is not None and info.size != expected_size:
        return f"size {info.size} differs from {expected_size}"
    if md5 is None:
        return "md5_sum of the row is not 32 hex digits"
    if not info.is_multipart:
        if info.etag != md5:
            return f"ETag {info.etag} differs from md5_sum {md5}"
    elif "md5" in info.metadata and info.metadata["md5"] != md5:
        return f"recorded MD5 {info.metadata['md5']} differs from md5_sum {md5}"
    return None


def _local_size(row: MediaRow, md5: str, resolver: Resolver) -> int | None:
    found = resolver.resolve(row, md5)
    return found.size if isinstance(found, Found) else row.file_size


async def run_verify(
    settings: Settings,
    options: VerifyOptions,
    *,
    cwd: Path | None = None,
    stop: asyncio.Event | None = None,
    on_progress: Callable[[], None] | None = None,
) -> VerifyReport:
    """Statistics, then the checks asked for."""
    cwd = cwd or Path.cwd()
    root = resolve_cache_root(settings) if options.check_local or options.verify_s3 else None
    async with connected(settings, concurrency=options.concurrency, storage=options.verify_s3) as (
        db,
        store,
    ):
        report = VerifyReport(stats=await db.stats())
        resolver = Resolver(root, cwd) if root is not None else None
        if store is not None:
            assert resolver is not None
            report.s3 = S3Check()
            await _check_s3(db, store, settings, options, report, resolver, stop, on_progress)
        if options.check_local:
            assert resolver is not None
            report.local = LocalCheck()
            await _check_local(db, options, report, resolver, stop, on_progress)
    return report


async def _check_s3(
    db: Database,
    store: Storage,
    settings: Settings,
    options: VerifyOptions,
    report: VerifyReport,
    resolver: Resolver,
    stop: asyncio.Event | None,
    on_progress: Callable[[], None] | None,
) -> None:
    s3 = report.s3
    assert s3 is not None

    def problem(row: MediaRow, kind: str, detail: str) -> None:
        report.problems.append(Problem(row.media_id, kind, row.archive_url, detail))
        if on_progress:
            on_progress()

    def error(row: MediaRow, detail: str) -> None:
        s3.checked += 1
        s3.errors += 1
        problem(row, "error", detail)

    async def check(row: MediaRow) -> None:
        ours = row_key(row, bucket=settings.bucket, prefix=settings.key_prefix)
        if isinstance(ours, NotOurs):
            s3.checked += 1
            s3.invalid += 1
            return problem(row, "invalid", ours.reason)
        md5, key = ours
        try:
            size = await asyncio.to_thread(_local_size, row, md5, resolver)
            verdict = compare(await store.head_object(key), md5, size)
        except ArchiverError as exc:  # a 403 or an error on this object: this row's problem
            return error(row, str(exc))
        s3.checked += 1
        if verdict is None:
            s3.ok += 1
            if on_progress:
                on_progress()
        elif verdict == "missing":
            s3.missing += 1
            problem(row, "missing", "no such object")
        else:
            s3.mismatched += 1
            problem(row, "mismatched", verdict)

    rows = db.rows(RowFilter(archived=True), limit=options.limit)
    await for_each(rows, check, concurrency=options.concurrency, stop=stop, on_error=error)


async def _check_local(
    db: Database,
    options: VerifyOptions,
    report: VerifyReport,
    resolver: Resolver,
    stop: asyncio.Event | None,
    on_progress: Callable[[], None] | None,
) -> None:
    local = report.local
    assert local is not None

    def invalid(row: MediaRow, reason: str) -> None:
        local.checked += 1
        local.invalid += 1
        report.problems.append(Problem(row.media_id, "invalid", None, reason))
        if on_progress:
            on_progress()

    async def check(row: MediaRow) -> None:
        md5 = normalize_md5(row.md5_sum)
        if md5 is None:
            return invalid(row, f"md5_sum {row.md5_sum!r} is not 32 hex digits")
        found = await asyncio.to_thread(resolver.resolve, row, md5)
        if not isinstance(found, Found | NotFound):
            return invalid(row, found.reason)
        local.checked += 1
        if isinstance(found, NotFound):
            local.missing += 1
            report.problems.append(Problem(row.media_id, "missing_local", None, found.reason))
        if on_progress:
            on_progress()

    rows = db.rows(RowFilter(archived=None), limit=options.limit)
    await for_each(
        rows, check, concurrency=min(options.concurrency, 8), stop=stop, on_error=invalid
    )


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "0.0%"


def format_report(report: VerifyReport) -> str:
    """The text report, in the layout of the design notes' example."""
    lines = [RULE, "S3 Archive Statistics", RULE, "", "Overall:"]
    lines += [
        f"  {'Total Media:':<19}{report.total:,}",
        f"  {'Archived:':<19}{report.archived:,} ({_pct(report.archived, report.total)})",
        f"  {'Not Archived:':<19}{report.total - report.archived:,}",
        "",
        "By Type:",
    ]
    for s in report.stats:
        lines += [
            f"  {s.media_type.capitalize()}:",
            f"    {'Total:':<17}{s.total:,}",
            f"    {'Archived:':<17}{s.archived:,} ({_pct(s.archived, s.total)})",
            f"    {'Not Archived:':<17}{s.total - s.archived:,}",
        ]
    if report.s3 is not None:
        c = report.s3
        lines += ["", "S3 Verification:"]
        lines += [
            f"  {label + ':':<19}{value:,}"
            for label, value in (
                ("Checked", c.checked),
                ("OK", c.ok),
                ("Missing", c.missing),
                ("Mismatched", c.mismatched),
                ("Errors", c.errors),
                ("Invalid", c.invalid),
            )
        ]
    if report.local is not None:
        lines += ["", "Local Files:"]
        lines += [
            f"  {'Checked:':<19}{report.local.checked:,}",
            f"  {'Missing:':<19}{report.local.missing:,}",
            f"  {'Invalid:':<19}{report.local.invalid:,}",
        ]
    if report.problems:
        lines += ["", "Problems:"]
        for p in sorted(report.problems, key=lambda p: p.media_id)[:MAX_LISTED]:
            where = f" {printable(p.url)}" if p.url else ""
            lines.append(f"  {p.kind:<14}{printable(p.media_id)}{where}: {printable(p.detail)}")
        if len(report.problems) > MAX_LISTED:
            lines.append(f"  ... and {len(report.problems) - MAX_LISTED:,} more (--json lists all)")
    lines.append(RULE)
    return "\n".join(lines)
