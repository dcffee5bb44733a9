"""What the user sees while a job runs: a tqdm bar, a periodic log line, or nothing;
per-file lines with -v; warnings for rows that need a look; the end-of-run summary."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TextIO

from tqdm import tqdm

from archiver.errors import ConfigError
from archiver.localfs import why
from archiver.models import Holder, Outcome, Problem, RowResult, Summary

LOG_INTERVAL_S = 10.0  # periodic progress line when stderr is not a terminal
POSTFIX_INTERVAL_S = 0.25  # how often the bar's byte counter is refreshed
MAX_WARNINGS = 20  # problem rows listed without -v
MAX_DRY_RUN_LINES = 20  # rows listed by --dry-run
RULE = "=" * 80

_MARKS = {
    Outcome.UPLOADED: "✓",
    Outcome.SKIPPED_EXISTING: "=",
    Outcome.MISSING_LOCAL: "?",
    Outcome.INVALID: "✗",
    Outcome.CORRUPT: "✗",
    Outcome.FAILED: "✗",
    Outcome.WOULD_UPLOAD: "→",
    Outcome.KNOWN_PROBLEM: "·",
}


def printable(text: str) -> str:
    """Text from a row or a file name, safe to print: control characters (a terminal's
    escape sequences) and bytes that are not UTF-8 are shown escaped, e.g. `\\x1b`, `\\udcff`."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def describe(result: RowResult) -> str:
    """One line for one row: `✓ med-1: abc.jpg → cache/2025/12/abc.jpg`."""
    mark = _MARKS[result.outcome]
    media_id = printable(result.media_id)
    if result.outcome is Outcome.UPLOADED or result.outcome is Outcome.WOULD_UPLOAD:
        name = printable(result.path.rsplit("/", 1)[-1]) if result.path else "?"
        return f"  {mark} {media_id}: {name} → {result.key}"
    if result.outcome is Outcome.SKIPPED_EXISTING:
        return f"  {mark} {media_id}: already stored → {result.key}"
    return f"  {mark} {media_id}: {result.outcome.value}: {printable(result.reason)}"


def _rate(n: float, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


RUN_LOG = logging.getLogger("archiver.run")  # events for --log-file (never on stderr)


def counted(n: int, noun: str) -> str:
    """`1 file`, `2 files`, `1 known problem`, `3 passes`: a count and its noun, in
    agreement (the last word of `noun` takes the plural)."""
    if n == 1:
        return f"{n:,} {noun}"
    head, _, last = noun.rpartition(" ")
    plural = last + ("es" if last.endswith(("s", "sh", "ch", "x")) else "s")
    return f"{n:,} {head + ' ' if head else ''}{plural}"


def _were(n: int) -> str:
    return "was" if n == 1 else "were"


def human_bytes(n: float) -> str:
    """`2.0 KB`, `417.0 MB`: bytes in the unit that shows them (0.0 MB says nothing)."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} bytes" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} GB"


def utc_stamp(wall: float) -> str:
    """`2026-11-30T12:00:03Z`: the time a progress line was written."""
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event(name: str, message: str, *, level: int = logging.INFO, **fields: object) -> None:
    """One record for the run log (`--log-file`), with `fields` for `--log-format json`."""
    emit(name, message, level, fields)


def emit(name: str, message: str, level: int, fields: Mapping[str, object]) -> None:
    RUN_LOG.log(level, message, extra={"event": name, "fields": dict(fields)})


class _RunLogText(logging.Formatter):
    """`2026-11-30T12:00:03.120Z warning upload: 120/1,000 files ...` (library warnings too)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        message = printable(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            message = f"{message}: {exc.__class__.__name__}: {exc}"
        return f"{stamp.replace('+00:00', 'Z')} {record.levelname.lower()} {message}"


class _RunLogJson(logging.Formatter):
    """One JSON object per line: `ts, level, event, message` and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        data: dict[str, object] = {
            "ts": stamp.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
            "message": record.getMessage(),
        }
        data.update(getattr(record, "fields", {}))
        return json.dumps(data, default=str)


def open_log_file(path: Path, fmt: str) -> logging.Handler:
    """A handler appending to `path` (line by line), or ConfigError when it cannot."""
    try:
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the log file {path}: {why(exc)}") from exc
    handler.setFormatter(_RunLogJson() if fmt == "json" else _RunLogText())
    handler.setLevel(logging.INFO)
    return handler


class Interruptible(Protocol):
    """What a progress display asks of the job's `Interrupt`."""

    @property
    def triggered(self) -> bool: ...


class Progress:
    """The one progress display of every long job (upload, verify --verify-s3,
    prune-local, restore): items, bytes, rates and ETA, as a tqdm bar when `mode` is "bar",
    as a timestamped line every `interval` seconds when it is "log", not at all when "off".
    The same line goes to the run log (`--log-file`) whatever the mode. `close` shows the
    final figures."""

    def __init__(
        self,
        *,
        mode: str,
        desc: str,
        err: TextIO | None = None,
        out: TextIO | None = None,
        verbose: bool = False,
        interval: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.mode = mode
        self.desc = desc
        self.interval = interval
        self.err = err or sys.stderr
        self.out = out or sys.stdout
        self.verbose = verbose
        self.clock = clock
        self.wall = wall
        self.total: int | None = 0  # None: not known ahead (restore --all-missing)
        self.total_bytes: int | None = None  # when known: the ETA goes by bytes
        self.done = 0
        self.bytes = 0
        self.moves_bytes = True  # False: no MB or MB/s (verify's HEADs move no data)
        self.unit = "file"
        self._bar: tqdm | None = None
        self._started = self._last_log = self._last_postfix = clock()

    @property
    def wants_total(self) -> bool:
        """Whether `start` needs a real total (a bar, log lines or a run log show it)."""
        return self.mode != "off" or RUN_LOG.isEnabledFor(logging.INFO)

    @contextlib.contextmanager
    def running(
        self, total: int | None, interrupt: Interruptible | None = None
    ) -> Iterator[Progress]:
        """`start(total)`, then `close`: with the final figures when the block completes
        (`stopped` when `interrupt` was triggered), without them when an error stops it (the
        error's line is the last word)."""
        self.start(total)
        try:
            yield self
        except BaseException:
            self.close(completed=False)
            raise
        self.close(interrupted=interrupt is not None and interrupt.triggered)

    def start(self, total: int | None, *, total_bytes: int | None = None) -> None:
        """A new count of `total` items (None: not known ahead; verify counts each of its
        checks anew), of `total_bytes` bytes when known (the ETA then goes by bytes, which
        is right under --max-bandwidth)."""
        self.total = total
        self.total_bytes = total_bytes if total_bytes and self.moves_bytes else None
        self.done = self.bytes = 0
        self._started = self._last_log = self.clock()
        if self.mode == "bar":
            self._bar = tqdm(
                total=total,
                unit=self.unit,
                file=self.err,
                dynamic_ncols=True,
                smoothing=0.1,
                desc=self.desc,
            )

    def write(self, text: str, stream: TextIO) -> None:
        """A line that does not break the bar."""
        if self._bar is not None:
            self._bar.write(text, file=stream)
        else:
            print(text, file=stream, flush=True)

    def say(self, line: str) -> None:
        """A line about one item, printed with -v only (text from rows made printable)."""
        if self.verbose:
            self.write(f"  {printable(line)}", self.out)

    def step(self, nbytes: int = 0) -> None:
        """One item done, `nbytes` moved for it."""
        self.done += 1
        self.bytes += nbytes
        now = self.clock()
        if self._bar is not None:
            self._bar.update(1)
            if self.moves_bytes and now - self._last_postfix >= POSTFIX_INTERVAL_S:
                self._last_postfix = now
                self._bar.set_postfix_str(self._bytes_text(now), refresh=False)
        if now - self._last_log >= self.interval:
            self._last_log = now
            self._log(now)

    def _bytes_text(self, now: float) -> str:
        mb = self.bytes / 1e6
        return f"{mb:,.1f} MB, {_rate(mb, now - self._started):,.1f} MB/s"

    def figures(self, now: float) -> dict[str, float | int | None]:
        elapsed = now - self._started
        rate = _rate(self.done, elapsed)
        byte_rate = _rate(self.bytes, elapsed)
        eta: float | None = None
        if self.total_bytes is not None and byte_rate and self.total_bytes > self.bytes:
            eta = (self.total_bytes - self.bytes) / byte_rate
        elif self.total is not None and rate and self.total > self.done:
            eta = (self.total - self.done) / rate
        figures: dict[str, float | int | None] = {
            "done": self.done,
            "total": self.total,
            "bytes": self.bytes,
            "elapsed_s": round(elapsed, 1),
            "files_per_s": round(rate, 1),
            "bytes_per_s": round(byte_rate),
            "eta_s": None if eta is None else int(eta),
        }
        if not self.moves_bytes:
            del figures["bytes"], figures["bytes_per_s"]
        return figures

    def _count(self) -> str:
        """`120/1,000 files`, or `120 files` when the total is not known."""
        if self.total is None:
            return counted(self.done, self.unit)
        return f"{self.done:,}/{counted(self.total, self.unit)}"

    def progress_line(self, now: float) -> str:
        """`upload: 120/1,000 files (12.0%), 45.1 MB, 1.5 MB/s, 30.2 files/s, ETA 29s`."""
        f = self.figures(now)
        pct = ""
        if self.total is not None:
            pct = f" ({100.0 * self.done / self.total if self.total else 100.0:.1f}%)"
        eta = f", ETA {f['eta_s']}s" if f["eta_s"] is not None else ""
        moved = f", {self._bytes_text(now)}" if self.moves_bytes else ""
        return (
            f"{self.desc}: {self._count()}{pct}{moved}, {f['files_per_s']:,.1f} {self.unit}s/s{eta}"
        )

    def _log(self, now: float, *, final: bool = False, stopped: bool = False) -> None:
        if final:
            how = "stopped at" if stopped else "done in"
            moved = f", {self._bytes_text(now)}" if self.moves_bytes else ""
            line = f"{self.desc}: {self._count()} {how} {now - self._started:,.1f} s{moved}"
        else:
            line = self.progress_line(now)
        fields = {"job": self.desc, **self.figures(now)}
        name = ("stopped" if stopped else "done") if final else "progress"
        emit(name, line, logging.INFO, fields)
        if self.mode == "log":
            print(f"{utc_stamp(self.wall())} archiver: {line}", file=self.err, flush=True)

    def close(self, *, completed: bool = True, interrupted: bool = False) -> None:
        """The final figures: the bar's byte count brought up to date, and a last log line
        when the job `completed`: `done`, or `stopped` when a signal interrupted it (a job
        stopped by an error ends with that error's line)."""
        now = self.clock()
        if self._bar is not None:
            if self.moves_bytes:
                self._bar.set_postfix_str(self._bytes_text(now), refresh=True)
            self._bar.close()
            self._bar = None
        if completed and self.wants_total:
            self._log(now, final=True, stopped=interrupted)


class Reporter:
    """Progress for one upload run (a `Progress`), plus per-file lines with -v and the
    warnings for rows that need a look. Lines go to `out` (-v and --dry-run listings) and
    `err` (warnings, progress)."""

    def __init__(
        self,
        *,
        mode: str,
        verbose: bool,
        dry_run: bool,
        out: TextIO | None = None,
        err: TextIO | None = None,
        interval: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        warn_missing: bool = True,
    ) -> None:
        self.mode = mode
        self.verbose = verbose
        self.dry_run = dry_run
        # A watch meets a row whose file is not there yet on every pass: its pass line
        # counts them instead.
        self.warn_missing = warn_missing
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.warnings = 0
        self.listed = 0
        self.missing = 0  # rows whose file is missing
        self.progress = Progress(
            mode=mode,
            desc="dry run" if dry_run else "upload",
            err=self.err,
            interval=interval,
            clock=clock,
            wall=wall,
        )

    @property
    def wants_total(self) -> bool:
        return self.progress.wants_total

    @property
    def done(self) -> int:
        return self.progress.done

    @property
    def bytes(self) -> int:
        return self.progress.bytes

    def start(self, total: int | None, *, total_bytes: int | None = None) -> None:
        self.progress.start(total, total_bytes=None if self.dry_run else total_bytes)

    def result(self, result: RowResult) -> None:
        flagged = result.outcome.is_problem or (
            result.outcome is Outcome.MISSING_LOCAL and self.warn_missing
        )
        if self.verbose:
            self.progress.write(describe(result), self.out)
        elif result.outcome is Outcome.WOULD_UPLOAD:
            self.listed += 1
            if self.listed <= MAX_DRY_RUN_LINES:
                self.progress.write(describe(result), self.out)
        elif flagged:
            self.warnings += 1
            if self.warnings <= MAX_WARNINGS:
                self.progress.write(f"warning:{describe(result)[3:]}", self.err)
        if result.outcome is Outcome.MISSING_LOCAL:
            self.missing += 1
        # A missing file is counted, and only the first few logged one by one: a backlog
        # run may meet hundreds of thousands (`close` logs how many in all).
        if flagged and (result.outcome.is_problem or self.missing <= MAX_WARNINGS):
            event(
                "row",
                describe(result).strip(),
                level=logging.WARNING,
                media_id=result.media_id,
                outcome=result.outcome.value,
                detail=result.reason,
            )
        # A dry run counts the bytes it would send, a run those S3 accepted.
        would = result.size if result.outcome is Outcome.WOULD_UPLOAD else 0
        self.progress.step(result.bytes_sent or would)

    def close(self, *, completed: bool = True, interrupted: bool = False) -> None:
        self.progress.close(completed=completed, interrupted=interrupted)
        if self.warn_missing and self.missing > MAX_WARNINGS:
            event(
                "missing",
                f"{counted(self.missing, 'row')} have no local file (the first {MAX_WARNINGS} are "
                "logged above; `archiver upload --dry-run -v` lists them all)",
                level=logging.WARNING,
                rows=self.missing,
            )
        if not self.verbose and self.listed > MAX_DRY_RUN_LINES:
            print(f"  ... and {self.listed - MAX_DRY_RUN_LINES:,} more", file=self.out)
        if not self.verbose and self.warnings > MAX_WARNINGS:
            print(
                f"warning: ... and {counted(self.warnings - MAX_WARNINGS, 'more row')} with "
                "problems (-v lists every row)",
                file=self.err,
            )


def listed(lines: Sequence[str], limit: int, *, more: str = "more") -> list[str]:
    """The first `limit` lines, then `  ... and N more` for the rest."""
    shown = list(lines[:limit])
    if len(lines) > limit:
        shown.append(f"  ... and {len(lines) - limit:,} {more}")
    return shown


def problem_lines(problems: Sequence[Problem], limit: int) -> list[str]:
    """A report's problems, one per line (`kind media_id url: detail`), at most `limit`."""
    width = max((len(p.kind) for p in problems), default=0)
    lines = [
        f"  {p.kind:<{width}} {printable(p.media_id)}"
        f"{' ' + printable(p.url) if p.url else ''}: {printable(p.detail)}"
        for p in problems
    ]
    return listed(lines, limit, more="more (--json lists all)")


def format_summary(summary: Summary, *, bucket: str) -> str:
    """The end-of-run table ("Upload Summary", as in the README)."""
    c = summary.counts
    rows = [("Selected", summary.selected)]
    if summary.dry_run:
        rows.append(("Would upload", c[Outcome.WOULD_UPLOAD]))
    rows += [
        ("Uploaded", c[Outcome.UPLOADED]),
        ("Already stored", c[Outcome.SKIPPED_EXISTING]),
        ("Missing local", c[Outcome.MISSING_LOCAL]),
        ("Invalid", c[Outcome.INVALID]),
        ("Corrupt", c[Outcome.CORRUPT]),
        ("Failed", c[Outcome.FAILED]),
        ("DB updated", summary.db_updated),
    ]
    if summary.unrecorded:
        rows.append(("Not recorded", summary.unrecorded))
    if summary.resent:
        rows.append(("Sent again", summary.resent))
    if c[Outcome.KNOWN_PROBLEM]:
        rows.append(("Known problems", c[Outcome.KNOWN_PROBLEM]))
    if summary.claimed_elsewhere:
        rows.append(("Claimed elsewhere", summary.claimed_elsewhere))
    title = "Upload Summary (dry run: nothing was written)" if summary.dry_run else "Upload Summary"
    lines = [RULE, title, RULE, f"Bucket:  s3://{bucket}"]
    lines += [f"  {label + ':':<19}{value:>8,}" for label, value in rows]
    moved = summary.bytes_would_upload if summary.dry_run else summary.bytes_uploaded
    lines.append(
        f"  {'Would send:' if summary.dry_run else 'Data:':<19}{moved / 1e6:>8,.1f} MB in "
        f"{summary.elapsed_s:,.1f} s ({summary.files_per_s:,.1f} files/s)"
    )
    if summary.interrupted:
        lines.append("  Interrupted: completed uploads were recorded; run again to finish.")
    if summary.error:
        lines.append(f"  Stopped early: {summary.error}")
    if summary.unrecorded:
        lines.append(
            f"  {counted(summary.unrecorded, 'upload')} {_were(summary.unrecorded)} not recorded: "
            "the next run records them "
            "without uploading them again."
        )
    if known := c[Outcome.KNOWN_PROBLEM]:
        lines.append(
            f"  {counted(known, 'known problem')} {_were(known)} set aside, unchanged since they "
            "failed: `archiver problems` lists them, `--retry-problems` tries them again."
        )
    lines += holder_lines(summary.holders)
    lines += [f"  Note: {note}" for note in summary.notes]
    if summary.not_selected:
        lines.append("  Not handled (--media-id):")
        lines += problem_lines(summary.not_selected, MAX_WARNINGS)
    lines.append(RULE)
    return "\n".join(lines)


def holder_lines(holders: Sequence[Holder]) -> list[str]:
    """Who holds the rows this run could not take, and until when."""
    lines = []
    for h in holders:
        until = h.lease_ends.astimezone(UTC).strftime("%H:%M:%S UTC")
        state = "running" if h.running else "no longer running: the next run takes them over"
        owner = printable(h.owner)
        rows = f"{h.rows:,} row{'' if h.rows == 1 else 's'}"
        lines.append(f"  {rows} held by {owner} ({state}; lease ends {until})")
    return listed(lines, MAX_WARNINGS)


class RowLog:
    """`upload --report FILE`: one JSON line per row handled, written as it goes (line
    buffered, so a crash loses no line of a row already handled); a stored object's line
    once its archive_url is recorded, or at the end as not recorded."""

    def __init__(self, path: Path) -> None:
        try:
            self._file: TextIO = open(path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
        except OSError as exc:
            raise ConfigError(f"cannot write the report {path}: {why(exc)}") from exc

    def write(self, result: RowResult) -> None:
        line = {
            "media_id": result.media_id,
            "outcome": result.outcome.value,
            "key": result.key,
            "bytes": result.bytes_sent,
            "size": result.size if result.path is not None else None,
            "detail": result.reason or None,
            "recorded": result.recorded,
        }
        self._file.write(json.dumps(line) + "\n")

    def close(self) -> None:
        self._file.close()
