"""`archiver verify`: archive statistics, and optional checks of S3 objects and local files.

Statistics come from one aggregate query. `--verify-s3` HEADs every archived row's object
(concurrently, bounded) and judges it by the integrity rule (`integrity.py`), against the
size of the local file when there is one (the app's `file_size` column proves nothing): an
object shown to hold something else is `mismatched`; one that carries nothing to judge it
by (another tool's multipart copy, an SSE-KMS object without archiver's recorded MD5) is
`unverifiable`, reported and never cleared. Only objects archiver would have made for the
row are asked for (`keys.archived_key`): a row whose `archive_url` names another bucket or
key is reported `invalid`. `--check-local` looks for every row's local file.

`--repair` clears `archive_url` only where that sends the file again: the object is missing
or shown bad, AND the row's local file is there (upload proves it against `md5_sum` before
a byte is sent). A row with no local file is never cleared: clearing it would lose the
only pointer to what the bucket holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archiver.db import Database, StatsRow
from archiver.errors import ConfigError, StorageError
from archiver.integrity import Judgement, Verdict, judge
from archiver.keys import NotOurs, row_key
from archiver.models import MediaRow, Problem, ProblemKind
from archiver.pipeline import Interrupt, for_each
from archiver.progress import Progress, counted, listed, printable, problem_lines
from archiver.resolve import Found, NotFound, Resolver, resolve_cache_root, resolver_for
from archiver.services import connected
from archiver.settings import DEFAULT_CONCURRENCY, Settings
from archiver.sql import RowFilter
from archiver.storage import Storage

RULE = "=" * 80
ARCHIVED = RowFilter(archived=True)  # what --verify-s3 checks
EVERY_ROW = RowFilter(archived=None)  # what --check-local checks
MAX_LISTED = 100  # problems listed in the text report (JSON lists them all)


@dataclass(frozen=True)
class VerifyOptions:
    verify_s3: bool = False
    check_local: bool = False
    limit: int | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    repair: bool = False  # clear archive_url of rows whose object is missing or mismatched
    dry_run: bool = False  # with repair: only say what would be cleared

    def __post_init__(self) -> None:
        if self.repair and not self.verify_s3:
            raise ConfigError("--repair needs --verify-s3 (it acts on what that check finds)")
        if self.dry_run and not self.repair:
            raise ConfigError("--dry-run applies to --repair only (verify itself writes nothing)")


@dataclass
class S3Check:
    checked: int = 0
    ok: int = 0
    missing: int = 0
    mismatched: int = 0
    errors: int = 0
    invalid: int = 0  # rows whose archive_url is not an object archiver made for them
    unverifiable: int = 0  # present, but nothing it carries shows what it holds

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
class Repair:
    """`--repair`: rows whose archive_url was cleared (or would be, on a dry run), and why;
    rows found bad or missing that were left linked, and why."""

    dry_run: bool
    candidates: list[tuple[str, str]] = field(default_factory=list)  # (media_id, url)
    reasons: dict[str, str] = field(default_factory=dict)  # media_id -> why it is cleared
    no_local_file: dict[str, str] = field(default_factory=dict)  # media_id -> what was found
    cleared: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "would_clear" if self.dry_run else "cleared": (
                len(self.candidates) if self.dry_run else self.cleared
            ),
            "media_ids": sorted(m for m, _ in self.candidates),
            "reasons": dict(sorted(self.reasons.items())),
            "no_local_file": sorted(self.no_local_file),
            "left_linked": dict(sorted(self.no_local_file.items())),
        }


@dataclass
class VerifyReport:
    stats: list[StatsRow]
    s3: S3Check | None = None
    local: LocalCheck | None = None
    # kinds: missing, mismatched, error, invalid, missing_local
    problems: list[Problem] = field(default_factory=list)
    repair: Repair | None = None
    error: str | None = None  # what stopped the command, when something did

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
            "problems": [p.as_json() for p in self.problems],
            "repair": self.repair.as_json() if self.repair else None,
        }


async def run_verify(
    settings: Settings,
    options: VerifyOptions,
    *,
    cwd: Path | None = None,
    interrupt: Interrupt | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Statistics, then the checks asked for (each with its own run of `progress`)."""
    progress = progress or Progress(mode="off", desc="verify")
    cwd = cwd or Path.cwd()
    root = resolve_cache_root(settings) if options.check_local or options.verify_s3 else None
    async with connected(settings, concurrency=options.concurrency, storage=options.verify_s3) as (
        db,
        store,
    ):
        report = VerifyReport(stats=await db.stats())
        resolver = resolver_for(settings, root, cwd) if root is not None else None
        if store is not None:
            assert resolver is not None
            report.s3 = S3Check()
            if options.repair:
                report.repair = Repair(dry_run=options.dry_run)
            progress.desc = "verify --verify-s3"
            progress.moves_bytes, progress.unit = False, "object"  # HEADs: no data moves
            with progress.running(await _total(db, ARCHIVED, options, progress), interrupt):
                await _check_s3(db, store, settings, options, report, resolver, interrupt, progress)
            if report.repair is not None and report.repair.candidates and not options.dry_run:
                report.repair.cleared = await db.clear_urls(report.repair.candidates)
        if options.check_local:
            assert resolver is not None
            report.local = LocalCheck()
            progress.desc = "verify --check-local"
            progress.moves_bytes, progress.unit = False, "row"
            with progress.running(await _total(db, EVERY_ROW, options, progress), interrupt):
                await _check_local(db, options, report, resolver, interrupt, progress)
    return report


async def _total(
    db: Database, row_filter: RowFilter, options: VerifyOptions, progress: Progress
) -> int:
    """The rows a check counts towards; no display, no count(*) round trip."""
    return await db.count_rows(row_filter, limit=options.limit) if progress.wants_total else 0


def _counted(s3: S3Check, judgement: Judgement) -> tuple[ProblemKind, str]:
    """The problem kind of an object not shown intact, counted; and why."""
    if judgement.verdict is Verdict.UNKNOWN:
        s3.unverifiable += 1
        return ProblemKind.UNVERIFIABLE, judgement.reason or ""
    if judgement.verdict is Verdict.MISSING:
        s3.missing += 1
        return ProblemKind.MISSING, "no such object"
    s3.mismatched += 1
    return ProblemKind.MISMATCHED, judgement.reason or ""


def _note_for_repair(report: VerifyReport, row: MediaRow, found: object, reason: str) -> None:
    """With --repair: a row whose object is missing or not intact is cleared when its local
    file is there to send again, and left linked (with what was found) when it is not."""
    if report.repair is None or row.archive_url is None:
        return
    if isinstance(found, Found):
        report.repair.candidates.append((row.media_id, row.archive_url))
        report.repair.reasons[row.media_id] = reason
    else:
        report.repair.no_local_file[row.media_id] = reason


async def _check_s3(
    db: Database,
    store: Storage,
    settings: Settings,
    options: VerifyOptions,
    report: VerifyReport,
    resolver: Resolver,
    interrupt: Interrupt | None,
    progress: Progress,
) -> None:
    s3 = report.s3
    assert s3 is not None

    def problem(row: MediaRow, kind: ProblemKind, detail: str) -> None:
        report.problems.append(Problem(row.media_id, kind, detail, url=row.archive_url))
        progress.say(f"{kind} {row.media_id}: {detail}")
        progress.step(0)

    def error(row: MediaRow, detail: str) -> None:
        s3.checked += 1
        s3.errors += 1
        problem(row, ProblemKind.ERROR, detail)

    async def check(row: MediaRow) -> None:
        ours = row_key(row, bucket=settings.bucket, prefix=settings.key_prefix)
        if isinstance(ours, NotOurs):
            s3.checked += 1
            s3.invalid += 1
            return problem(row, ProblemKind.INVALID, ours.reason)
        md5, key = ours
        # The size the object must have is the local file's: `file_size` proves nothing.
        found = await resolver.locate(row)
        size = found.size if isinstance(found, Found) else None
        try:
            info = await store.head_object(key)
        except StorageError as exc:  # a 403 or an error on this object: this row's problem
            return error(row, str(exc))
        judgement = judge(info, md5, size)
        s3.checked += 1
        if judgement.verdict is Verdict.INTACT:
            s3.ok += 1
            progress.step(0)
            progress.say(f"ok {row.media_id}: {key}")
            return None
        kind, reason = _counted(s3, judgement)
        problem(row, kind, reason)
        if kind is not ProblemKind.UNVERIFIABLE:
            _note_for_repair(report, row, found, reason)
        return None

    rows = db.rows(ARCHIVED, limit=options.limit)
    await for_each(
        rows, check, concurrency=options.concurrency, interrupt=interrupt, on_error=error
    )


async def _check_local(
    db: Database,
    options: VerifyOptions,
    report: VerifyReport,
    resolver: Resolver,
    interrupt: Interrupt | None,
    progress: Progress,
) -> None:
    local = report.local
    assert local is not None

    def invalid(row: MediaRow, reason: str) -> None:
        local.checked += 1
        local.invalid += 1
        report.problems.append(Problem(row.media_id, ProblemKind.INVALID, reason))
        progress.step(0)

    async def check(row: MediaRow) -> None:
        found = await resolver.locate(row)
        if not isinstance(found, Found | NotFound):
            return invalid(row, found.reason)
        local.checked += 1
        if isinstance(found, NotFound):
            local.missing += 1
            report.problems.append(Problem(row.media_id, ProblemKind.MISSING_LOCAL, found.reason))
        progress.step(0)

    rows = db.rows(EVERY_ROW, limit=options.limit)
    await for_each(
        rows,
        check,
        concurrency=min(options.concurrency, 8),
        interrupt=interrupt,
        on_error=invalid,
    )


def repair_lines(repair: Repair) -> list[str]:
    """What --repair did (or would do) and why, and which rows it left linked."""
    n = len(repair.candidates)
    if not n:
        lines = [
            "Repair: nothing to clear: no row whose object is missing or shown bad has its "
            "local file here."
        ]
    elif repair.dry_run:
        lines = [
            f"Repair (dry run): would clear archive_url of {counted(n, 'row')} whose object is "
            "missing or shown bad and whose local file is here:"
        ]
    else:
        lines = [
            f"Repair: cleared archive_url of {counted(repair.cleared, 'row')} whose object is "
            "missing or shown bad and whose local file is here; the next `archiver upload` sends "
            "them again:"
        ]
    cleared = sorted(m for m, _ in repair.candidates)
    lines += listed(
        [f"    {printable(m)}: {printable(repair.reasons[m])}" for m in cleared], MAX_LISTED
    )
    if not repair.dry_run and repair.cleared < n:
        lines.append(f"  {counted(n - repair.cleared, 'row')} changed meanwhile and left alone.")
    if repair.no_local_file:
        lines.append(
            f"  Left linked: {counted(len(repair.no_local_file), 'row')} whose object is missing "
            "or shown bad have no local file to send again, and clearing them would lose the "
            "only pointer to what the bucket holds. Put each file back in the cache (from a "
            "backup, or an earlier version of the object if the bucket keeps versions), then run "
            "`archiver verify --verify-s3 --repair` again:"
        )
        lines += listed(
            [
                f"    {printable(m)}: {printable(why)}"
                for m, why in sorted(repair.no_local_file.items())
            ],
            MAX_LISTED,
        )
    return lines


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "0.0%"


def format_report(report: VerifyReport) -> str:
    """The text report, in the layout of the original script's statistics."""
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
                ("Unverifiable", c.unverifiable),
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
        lines += problem_lines(sorted(report.problems, key=lambda p: p.media_id), MAX_LISTED)
    if report.repair is not None:
        lines += ["", *repair_lines(report.repair)]
    lines.append(RULE)
    return "\n".join(lines)
