"""What a command shows and logs at the edge: the one way a command ends (its report as text
or JSON, its error line, its exit code), the run log of `--log-file`, library warnings on
stderr as one line, and the allocator setting every run starts with."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeVar

import click
from tqdm import tqdm

from archiver import __version__
from archiver.errors import INTERRUPTED_EXIT_CODE, ArchiverError
from archiver.models import RowResult, Summary
from archiver.pipeline import Interrupt
from archiver.progress import LOG_INTERVAL_S, RUN_LOG, Progress, Reporter, event, open_log_file
from archiver.settings import Settings, UploadOptions
from archiver.signals import run_async, run_job


class Report(Protocol):
    """What every command's report has: the object `--json` prints, the exit code, and what
    stopped the command early (None when nothing did)."""

    @property
    def exit_code(self) -> int: ...

    @property
    def error(self) -> str | None: ...

    def as_json(self) -> Any: ...


R = TypeVar("R", bound=Report)


def end(
    report: R,
    *,
    as_json: bool,
    text: Callable[[R], str],
    interrupted: bool = False,
    stderr_lines: Iterable[str] = (),
    indent: int | None = None,
    quiet: bool = False,
) -> int:
    """End a command: its report on stdout (one JSON object, or `text`), the lines meant for
    stderr (text mode only), its error line, the run log's last record; its exit code
    (INTERRUPTED_EXIT_CODE when a signal stopped it: what it had done is in the report).
    `quiet` (-q): no text at all when the exit code is 0 (nothing needs a person)."""
    data = report.as_json()
    if interrupted:
        data["interrupted"] = True
    code = INTERRUPTED_EXIT_CODE if interrupted else int(report.exit_code)
    log_outcome(code, report.error, data)
    if as_json:
        click.echo(json.dumps(data, indent=indent))
    elif quiet and code == 0:
        pass
    else:
        shown = text(report)
        if shown:
            click.echo(shown)
        if interrupted:
            click.echo("Interrupted: the counts above are what was done; run again to finish.")
        for line in stderr_lines:
            click.echo(f"archiver: {line}", err=True)
    if report.error:
        click.echo(f"archiver: error: {report.error}", err=True)
    return code


def log_outcome(code: int, error: str | None, report: dict[str, Any] | None = None) -> None:
    """The run log's last record: how the run ended (done, interrupted, failed and why),
    its exit code and, in text too, its counts: `done, exit code 0: uploaded 12, ...`."""
    outcome = "interrupted" if code == INTERRUPTED_EXIT_CODE else ("failed" if error else "done")
    message = f"{outcome}, exit code {code}"
    if error:
        message += f": {error}"
    counts = counts_text(report or {})
    if counts:
        message += f" ({counts})" if error else f": {counts}"
    level = logging.INFO if code == 0 else (logging.ERROR if error else logging.WARNING)
    fields: dict[str, Any] = {"outcome": outcome, "exit_code": code, "error": error}
    if report is not None:
        fields["report"] = report
    event("end", message, level=level, **fields)


def counts_text(report: dict[str, Any]) -> str:
    """A report's counts that are not 0, in its own order: `selected 9, uploaded 7, ...`."""
    return ", ".join(
        f"{name} {value:,}"
        for name, value in report.items()
        if isinstance(value, int) and not isinstance(value, bool) and value
    )


def failure(exc: BaseException) -> tuple[int, str]:
    """(exit code, message) of what stopped a command before it could end (`main` turns
    the same exceptions into the same exit codes)."""
    if isinstance(exc, ArchiverError):
        return exc.exit_code, str(exc)
    if isinstance(exc, click.ClickException):
        return exc.exit_code, exc.format_message()
    if isinstance(exc, KeyboardInterrupt | click.exceptions.Abort):
        return INTERRUPTED_EXIT_CODE, "interrupted"
    return 1, f"unexpected {exc.__class__.__name__}: {exc}"


class _Ended(logging.Filter):
    """Sees whether the run's `end` record has been written."""

    seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "event", None) == "end":
            self.seen = True
        return True


@dataclass(frozen=True)
class Display:
    """What a long job (upload, verify, prune-local, restore) shows and logs: its flags."""

    as_json: bool = False
    no_progress: bool = False
    verbose: bool = False
    quiet: bool = False  # -q: nothing printed unless something needs a person
    progress_interval: float = LOG_INTERVAL_S
    log_file: Path | None = None
    log_format: str = "text"

    @property
    def out(self) -> TextIO:
        """Where progress and per-row lines go: stderr when stdout carries the JSON."""
        return sys.stderr if self.as_json else sys.stdout

    @property
    def mode(self) -> str:
        return progress_mode(self.no_progress or self.quiet)

    def progress(self, desc: str) -> Progress:
        return Progress(
            mode=self.mode,
            desc=desc,
            verbose=self.verbose,
            out=self.out,
            interval=self.progress_interval,
        )

    def reporter(self, *, dry_run: bool) -> Reporter:
        return Reporter(
            mode=self.mode,
            verbose=self.verbose,
            dry_run=dry_run,
            out=self.out,
            interval=self.progress_interval,
            warn_missing=not self.quiet,
        )


def long_job(
    display: Display,
    command: str,
    job: Callable[[Progress, Interrupt], Coroutine[Any, Any, R]],
    text: Callable[[R], str],
) -> int:
    """Run a long job (verify, prune-local, restore) with its progress display and run
    log, Ctrl-C and SIGTERM turned into its `Interrupt`, and end it."""
    with run_log(display, command):
        progress = display.progress(command)
        report, interrupted = run_job(lambda interrupt: job(progress, interrupt))
        return end(
            report, as_json=display.as_json, text=text, interrupted=interrupted, quiet=display.quiet
        )


def progress_mode(no_progress: bool) -> str:
    return "off" if no_progress else ("bar" if sys.stderr.isatty() else "log")


@contextlib.contextmanager
def run_log(display: Display, command: str) -> Iterator[None]:
    """`--log-file`: the run's events (start, progress, warnings, summary) appended to it,
    the last of them its outcome (`end`) whatever ended it."""
    if display.log_file is None:
        yield
        return
    handler = open_log_file(display.log_file, display.log_format)
    ended = _Ended()
    handler.addFilter(ended)
    root = logging.getLogger()
    root.addHandler(handler)
    RUN_LOG.setLevel(logging.INFO)
    event("start", f"archiver {__version__} {command}", command=command, pid=os.getpid())
    try:
        yield
    except BaseException as exc:
        if not ended.seen:  # stopped before it could end: a start-up error, a signal
            log_outcome(*failure(exc))
        raise
    finally:
        root.removeHandler(handler)
        handler.close()
        RUN_LOG.setLevel(logging.NOTSET)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD_BYTES = 1024 * 1024


def pin_mmap_threshold() -> None:
    """Make glibc give every buffer over 1 MiB straight back to the system when it is freed.

    Its default threshold rises after the first large free, after which freed 8 MiB part
    buffers stay in the heaps of the reader threads: measured on the 300 MB + 40 x 20 MB
    benchmark, peak RSS 240 MB by default, 166 MB with the threshold pinned, same speed.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


class OneLineFormatter(logging.Formatter):
    """Library warnings as one line (asyncpg logs its reconnect attempts with a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            message = f"{message}: {exc.__class__.__name__}: {exc}"
        return f"archiver: {record.levelname.lower()}: {message}"


def quieten_stderr() -> None:
    """-q: library warnings (a database reconnect the run survived) stay out of stderr; they
    still go to --log-file. Errors still print."""
    for handler in logging.getLogger().handlers:
        if getattr(handler, "stream", None) is sys.stderr:
            handler.setLevel(logging.ERROR)


class BarSafeHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr lines written through tqdm, so that a warning never breaks a progress bar
    (tqdm clears the bar, prints the line, draws the bar again)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def for_stderr(record: logging.LogRecord) -> bool:
    """The run's own events go to --log-file only (stderr has its progress lines), and so
    do the database driver's: archiver says what they mean in plain words (`Outage`)."""
    return not record.name.startswith((RUN_LOG.name, "asyncpg"))


def configure_logging() -> None:
    handler = BarSafeHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter())
    handler.addFilter(for_stderr)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)


def watch_upload(
    settings: Settings,
    options: UploadOptions,
    display: Display,
    interval: float,
    on_result: Callable[[RowResult], None] | None,
) -> int:
    """`upload --watch`: a line (or a JSON object) for each pass that did work, one for each
    that failed, and the totals at the end."""
    from archiver.commands.upload import run_upload
    from archiver.commands.watch import format_watch, pass_line, run_watch
    from archiver.progress import utc_stamp

    if not display.quiet:
        click.echo(
            f"archiver: watch: archiving new rows every {interval:g} s into "
            f"s3://{settings.bucket}/{settings.key_prefix}/ (Ctrl-C or SIGTERM stops it)",
            err=True,
        )

    def on_pass(number: int, summary: Summary, missing_before: int) -> None:
        line = pass_line(number, summary, missing_before)
        event("pass", line, number=number, report=summary.as_json())
        now = utc_stamp(time.time())
        if display.as_json:
            click.echo(json.dumps({"pass": number, "at": now, **summary.as_json()}))
        elif not display.quiet or summary.exit_code != 0:
            click.echo(f"{now} archiver: watch: {line}")

    def on_error(number: int, message: str, wait_s: float) -> None:
        line = f"pass {number} failed: {message}; next pass in {wait_s:,.0f} s"
        event("pass", line, level=logging.WARNING, number=number, error=message)
        click.echo(f"{utc_stamp(time.time())} archiver: watch: {line}", err=True)

    def one_pass(interrupt: Interrupt) -> Any:
        reporter = Reporter(
            mode="off",
            verbose=display.verbose,
            dry_run=False,
            out=display.out,
            warn_missing=False,
        )
        return run_upload(settings, options, reporter, interrupt=interrupt, on_result=on_result)

    report = run_async(
        lambda interrupt: run_watch(
            one_pass,
            interval_s=interval,
            limit=options.limit,
            interrupt=interrupt,
            on_pass=on_pass,
            on_error=on_error,
        )
    )
    return end(report, as_json=display.as_json, text=format_watch, quiet=display.quiet)
