"""`archiver upload`: the run that wires database, S3, the uploader and the pipeline; what
one row means is `uploader`, the multipart path `multipart`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from archiver.claims import Claims, Settle, within_limit
from archiver.db import Database
from archiver.errors import (
    ArchiverError,
)
from archiver.ledger import Ledger
from archiver.models import (
    MediaRow,
    Problem,
    ProblemKind,
    RowResult,
    Summary,
)
from archiver.pipeline import Interrupt, Pipeline
from archiver.policies import BatchPolicy, RetryPolicy
from archiver.resolve import open_cache_root
from archiver.services import connected
from archiver.settings import Settings, UploadOptions
from archiver.signals import starting
from archiver.sql import RowFilter
from archiver.storage import Storage
from archiver.uploader import Uploader

PAGE_ROWS = 1000  # rows read per statement
CLAIM_ROWS_MIN = 100  # rows claimed per statement, at least (those whose file is there)


class Reporter(Protocol):
    """Where progress goes (see progress.py)."""

    @property
    def wants_total(self) -> bool: ...

    def start(self, total: int | None, *, total_bytes: int | None = None) -> None: ...

    def result(self, result: RowResult) -> None: ...

    def close(self, *, completed: bool = True, interrupted: bool = False) -> None: ...


@dataclass
class _Run:
    """What an upload run opened: database, store, the uploader and where its rows come from."""

    db: Database
    uploader: Uploader
    rows: AsyncIterator[MediaRow | RowResult]
    claims: Claims | None
    retry: RetryPolicy
    total: tuple[int | None, int | None]  # rows and bytes ahead, when known


async def run_upload(
    settings: Settings,
    options: UploadOptions,
    reporter: Reporter,
    *,
    interrupt: Interrupt | None = None,
    cwd: Path | None = None,
    db_retry: RetryPolicy | None = None,
    on_result: Callable[[RowResult], None] | None = None,
) -> Summary:
    """Archive the selected rows; the summary of what happened."""
    started = time.monotonic()
    interrupt = interrupt or Interrupt()
    summary = Summary(dry_run=options.dry_run)
    async with AsyncExitStack() as stack:
        async with starting("starting the run; nothing was uploaded"):
            run = await _open(stack, settings, options, reporter, cwd, db_retry or RetryPolicy())
        claims = run.claims
        owner = claims.owner if claims else None
        handled: set[str] = set()
        told = _Told(on_result)

        def collect(result: RowResult) -> None:
            summary.add(result)
            reporter.result(result)
            if claims is not None:
                claims.finished(result.media_id)
            if options.media_ids:
                handled.add(result.media_id)
            told.result(result)

        async def record(results: Sequence[RowResult]) -> int:
            pairs = [(r.media_id, r.url) for r in results if r.outcome.recordable and r.url]
            noted = [r.note for r in results if r.note is not None]
            updated = await run.db.record(pairs, force=options.force, owner=owner, problems=noted)
            told.recorded(results)
            return updated

        pipeline = Pipeline(
            handle=run.uploader.handle,
            record=record,
            concurrency=options.concurrency,
            batch=BatchPolicy(options.batch_size, options.flush_interval_s),
            on_result=collect,
            stop=interrupt.stop,
            background=[claims.keep] if claims else [],
            db_retry=run.retry,
        )
        try:
            await _pipe(run, pipeline, summary, reporter, interrupt)
        finally:
            told.unrecorded()
        summary.elapsed_s = time.monotonic() - started
        await _summarise(run, summary, options, sorted(set(options.media_ids) - handled), owner)
    return summary


class _Told:
    """What `on_result` (`--report`) is told of each row: a stored object only once the
    statement writing its archive_url committed (`recorded=True`), or at the end of the run,
    `recorded=False`, when none did (the database gave up); every other row at once."""

    def __init__(self, on_result: Callable[[RowResult], None] | None) -> None:
        self._on_result = on_result
        self._waiting: dict[str, RowResult] = {}

    def result(self, result: RowResult) -> None:
        if self._on_result is None:
            return
        if result.outcome.recordable and result.url:
            self._waiting[result.media_id] = result
        else:
            self._on_result(result)

    def recorded(self, results: Sequence[RowResult]) -> None:
        for r in results:
            waiting = self._waiting.pop(r.media_id, None)
            if waiting is not None and self._on_result is not None:
                self._on_result(replace(waiting, recorded=True))

    def unrecorded(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for r in waiting.values():
            if self._on_result is not None:
                why = "stored, not recorded: the database did not take its archive_url"
                self._on_result(replace(r, recorded=False, reason=r.reason or why))


async def _open(
    stack: AsyncExitStack,
    settings: Settings,
    options: UploadOptions,
    reporter: Reporter,
    cwd: Path | None,
    retry: RetryPolicy,
) -> _Run:
    """The opening step: cache root, database and store, the rows to handle, the uploader."""
    cache = stack.enter_context(open_cache_root(settings))
    db, store = await stack.enter_async_context(
        connected(settings, concurrency=options.concurrency, storage=not options.dry_run)
    )
    if store is not None:
        await _prepare_store(store, options)
    row_filter = RowFilter(
        archived=None if options.force else False,
        media_types=options.media_types,
        media_ids=options.media_ids,
        created_since=options.created_since,
        created_before=options.created_until,
    )
    total = await _total(db, row_filter, reporter, options.limit)
    # Claims and problem notes need their tables; a dry run writes nothing.
    tables = not options.dry_run and await db.ensure_tables()
    ledger: Ledger | None = None
    if not (options.retry_problems or options.media_ids):  # named rows are always tried
        ledger = await Ledger.open(db, retry)
    uploader = Uploader(
        settings,
        options,
        store,
        cache=cache,
        cwd=cwd or Path.cwd(),
        ledger=ledger,
        record_problems=tables,
    )
    rows, claims = _row_source(db, options, row_filter, uploader, retry, claimed=tables)
    return _Run(db, uploader, rows, claims, retry, total)


async def _pipe(
    run: _Run, pipeline: Pipeline, summary: Summary, reporter: Reporter, interrupt: Interrupt
) -> None:
    """Run the rows through the pipeline; what it did goes into `summary`, even when it
    stopped early."""
    interrupt.on_abandon(pipeline.abandon)
    reporter.start(run.total[0], total_bytes=run.total[1])
    completed = False
    try:
        await pipeline.run(run.rows)
        completed = True
    except ArchiverError as exc:
        # Stopped early (the database gone for good, the bucket gone): what was done is
        # still reported, with the confirmed uploads the database never took.
        summary.error = str(exc)
        summary.error_exit_code = exc.exit_code
    finally:
        interrupt.forget(pipeline.abandon)
        reporter.close(completed=completed, interrupted=interrupt.triggered)
        if run.claims is not None:
            await asyncio.shield(run.claims.release())
        summary.db_updated = pipeline.stats.db_updated
        summary.db_writes = pipeline.stats.statements
        summary.unrecorded = pipeline.stats.unrecorded
        summary.interrupted = interrupt.triggered
        summary.notes = run.uploader.access_notes()


async def _summarise(
    run: _Run,
    summary: Summary,
    options: UploadOptions,
    unhandled: list[str],
    owner: str | None,
) -> None:
    """The summarising step: who else holds rows, and why named rows were not handled."""
    if run.claims is not None and not summary.error:
        summary.holders = await run.claims.elsewhere()
    if unhandled and not (summary.error or summary.interrupted):
        summary.not_selected = await _not_selected(run.db, unhandled, owner)


async def _prepare_store(store: Storage, options: UploadOptions) -> None:
    """What the run's PUTs need to know of the bucket and the options."""
    store.storage_class = options.storage_class
    await store.learn_encryption()
    if not options.force:
        await store.learn_versioning()


async def _total(
    db: Database, row_filter: RowFilter, reporter: Reporter, limit: int | None
) -> tuple[int | None, int | None]:
    """The rows a progress display counts towards and their bytes (file_size, when every
    row has one); no display, no count(*) round trip. With --limit the rows are not known
    ahead (missing files and known problems take none of it)."""
    if not reporter.wants_total:
        return 0, None
    if limit is not None:
        return None, None
    return await db.totals(row_filter)


def _row_source(
    db: Database,
    options: UploadOptions,
    row_filter: RowFilter,
    uploader: Uploader,
    retry: RetryPolicy,
    *,
    claimed: bool,
) -> tuple[AsyncIterator[MediaRow | RowResult], Claims | None]:
    """The rows to handle, a page at a time, each page settled by the uploader first (rows
    whose file is missing need no work): claimed when the tables are there, else paged
    unclaimed (a dry run, or no right to create them)."""
    if claimed:
        claims = Claims(db, row_filter, lease_s=options.lease_s, retry=retry)
        # Claims run only a little ahead of the work, so that processes share the backlog.
        claim_rows = min(PAGE_ROWS, max(CLAIM_ROWS_MIN, 4 * options.concurrency))
        rows = claims.rows(
            limit=options.limit, page_rows=PAGE_ROWS, claim_rows=claim_rows, settle=uploader.settle
        )
        return rows, claims
    pages = db.row_pages(row_filter, page_rows=PAGE_ROWS, retry=retry)
    return _settled(pages, uploader.settle, options.limit), None


async def _settled(
    pages: AsyncIterator[list[MediaRow]], settle: Settle, limit: int | None
) -> AsyncIterator[MediaRow | RowResult]:
    """Settled pages, at most `limit` rows to work on (as `Claims.rows`)."""
    room = limit
    async for page in pages:
        settled = await settle(page)
        for item in settled[: within_limit(settled, room)]:
            if room is not None and not isinstance(item, RowResult):
                room -= 1
            yield item
        if room == 0:
            return


async def _not_selected(db: Database, media_ids: Sequence[str], owner: str | None) -> list[Problem]:
    """Why each of the rows named by --media-id was not handled."""
    states = await db.row_states(media_ids, owner)
    problems = []
    for media_id in media_ids:
        state = states.get(media_id)
        if state is None:
            problems.append(Problem(media_id, ProblemKind.NO_SUCH_ROW, "no such row"))
        elif state.archived:
            why = "already archived (--force uploads it again)"
            problems.append(Problem(media_id, ProblemKind.ALREADY_ARCHIVED, why))
        elif state.held:
            problems.append(
                Problem(media_id, ProblemKind.CLAIMED_ELSEWHERE, "held by another process")
            )
        else:
            why = "not selected (--media-type or --limit)"
            problems.append(Problem(media_id, ProblemKind.NOT_SELECTED, why))
    return problems
