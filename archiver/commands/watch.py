"""`archiver upload --watch`: keep archiving rows as the backfill adds them.

A watch is a loop of ordinary upload passes (`run_upload`, with all its guarantees: claims,
grouped writes, every confirmed upload recorded before it stops). Between passes it sleeps
`interval_s`; after a full `--limit` pass it goes on at once. It polls, with no LISTEN, so it
works through a transaction-mode pooler, and each pass opens its own connections, so a
database or S3 that went away is simply met again by the next pass.

A pass that could not start, or was stopped early, because the database or S3 is down is
retried with backoff (`backoff_s`), and the error is reported once per failed attempt. A
configuration error (no database configured, a bad option) ends the watch at once, exit 2.
Ctrl-C or SIGTERM ends it cleanly: the pass in flight finishes as a normal run would, or the
sleep ends at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from archiver.errors import (
    INTERRUPTED_EXIT_CODE,
    ArchiverError,
    AuthenticationFailed,
    ConfigError,
    DatabaseUnavailable,
    Interrupted,
    StorageUnavailable,
)
from archiver.models import Outcome, Summary
from archiver.pipeline import Interrupt
from archiver.progress import counted

BACKOFF_FIRST_S = 5.0  # first wait after a failed pass
BACKOFF_MAX_S = 300.0  # longest wait between failed passes (or the interval, if longer)


def backoff_s(interval_s: float, failures: int) -> float:
    """Seconds to wait before the next pass after `failures` failed passes in a row (0: the
    interval): doubling from BACKOFF_FIRST_S, at most BACKOFF_MAX_S or the interval."""
    if failures == 0:
        return interval_s
    return min(max(interval_s, BACKOFF_MAX_S), BACKOFF_FIRST_S * 2.0 ** (failures - 1))


def retryable(exc: ArchiverError) -> bool:
    """Whether a pass that failed so may work later: the database or S3 down, a database
    error mid-run. A configuration error stays one, and so does a refusal of who archiver
    is (a changed password, revoked keys): the supervisor restarts it with the new one."""
    if isinstance(exc, AuthenticationFailed):
        return False
    return isinstance(exc, DatabaseUnavailable | StorageUnavailable) or not isinstance(
        exc, ConfigError
    )


def did_work(summary: Summary, missing_before: int) -> bool:
    """Whether a pass is worth a line: it stored, recorded or failed something, or the number
    of rows whose file is not there yet changed (a backfill writes the row, then the file)."""
    c = summary.counts
    stored = c[Outcome.UPLOADED] + c[Outcome.SKIPPED_EXISTING] + summary.db_updated
    problems = sum(c[o] for o in Outcome if o.is_problem) + summary.unrecorded
    return bool(stored or problems or summary.error or c[Outcome.MISSING_LOCAL] != missing_before)


@dataclass
class WatchReport:
    """A watch's passes and their totals."""

    passes: int = 0
    failed_passes: int = 0
    totals: Summary = field(default_factory=Summary)
    interrupted: bool = False
    error: str | None = None  # the configuration error that ended it
    error_exit_code: int = 0

    def add(self, summary: Summary) -> None:
        t = self.totals
        t.counts.update(summary.counts)
        t.db_updated += summary.db_updated
        t.db_writes += summary.db_writes
        t.unrecorded += summary.unrecorded
        t.bytes_uploaded += summary.bytes_uploaded
        t.elapsed_s += summary.elapsed_s

    @property
    def exit_code(self) -> int:
        """130 when stopped by a signal (the normal end of a watch), 2 for a configuration
        error."""
        if self.error:
            return self.error_exit_code or 2
        return INTERRUPTED_EXIT_CODE

    def as_json(self) -> dict[str, object]:
        data = self.totals.as_json()
        data.update(watch=True, passes=self.passes, failed_passes=self.failed_passes)
        if self.interrupted:
            data["interrupted"] = True
        if self.error:
            data["error"] = self.error
        return data


async def run_watch(
    one_pass: Callable[[Interrupt], Awaitable[Summary]],
    *,
    interval_s: float,
    limit: int | None,
    interrupt: Interrupt,
    on_pass: Callable[[int, Summary, int], None],
    on_error: Callable[[int, str, float], None],
) -> WatchReport:
    """Upload passes (`one_pass`, an ordinary upload) until `interrupt`; `on_pass(n,
    summary, missing files of the pass before)` for each pass that did work, `on_error(n,
    message, wait_s)` for each that failed. A pass that worked on `limit` rows is followed
    by the next at once."""
    report = WatchReport()
    failures = 0
    missing = 0
    while not interrupt.triggered:
        report.passes += 1
        try:
            summary = await one_pass(interrupt)
        except Interrupted:
            break  # stopped while the pass was starting: the totals are what was done
        except ArchiverError as exc:
            if not retryable(exc):
                report.error, report.error_exit_code = str(exc), exc.exit_code
                break
            summary = Summary(error=str(exc))
        report.add(summary)
        if summary.error:
            failures += 1
            report.failed_passes += 1
            wait = backoff_s(interval_s, failures)
            on_error(report.passes, summary.error, wait)
        else:
            failures = 0
            wait = interval_s
            if did_work(summary, missing):
                on_pass(report.passes, summary, missing)
            missing = summary.counts[Outcome.MISSING_LOCAL]
            if full_pass(summary, limit):
                wait = 0  # more rows are waiting
        if summary.interrupted:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(interrupt.stop.wait(), wait)
    report.interrupted = interrupt.triggered
    return report


def full_pass(summary: Summary, limit: int | None) -> bool:
    """Whether a pass stopped at `--limit` (so more rows may be waiting): it worked on
    `limit` rows. Missing files and known problems take none of the limit."""
    return limit is not None and summary.worked >= limit


def pass_line(number: int, summary: Summary, missing_before: int = 0) -> str:
    """One pass that did work, in a line. The rows whose file is not there yet are named
    only when their number changed since the pass before: a file gone for good is not
    repeated in every line."""
    c = summary.counts
    parts = [f"{c[Outcome.UPLOADED]:,} uploaded"]
    for outcome, label in (
        (Outcome.SKIPPED_EXISTING, "already stored"),
        (Outcome.MISSING_LOCAL, "file not there yet"),
        (Outcome.INVALID, "invalid"),
        (Outcome.CORRUPT, "corrupt"),
        (Outcome.FAILED, "failed"),
    ):
        if outcome is Outcome.MISSING_LOCAL:
            if c[outcome] and c[outcome] != missing_before:
                parts.append(f"{counted(c[outcome], 'file')} not there yet")
        elif c[outcome]:
            parts.append(f"{c[outcome]:,} {label}")
    line = (
        f"pass {number}: {', '.join(parts)}; {summary.db_updated:,} recorded; "
        f"{summary.bytes_uploaded / 1e6:,.1f} MB in {summary.elapsed_s:,.1f} s"
    )
    if summary.unrecorded:
        line += f"; {summary.unrecorded:,} not recorded (the next pass records them)"
    return line


def format_watch(report: WatchReport) -> str:
    t = report.totals
    line = (
        f"watch stopped after {counted(report.passes, 'pass')}: "
        f"{t.counts[Outcome.UPLOADED]:,} uploaded, "
        f"{t.db_updated:,} recorded, {t.bytes_uploaded / 1e6:,.1f} MB"
    )
    if report.failed_passes:
        line += f"; {counted(report.failed_passes, 'pass')} failed"
    return line
