"""Producer -> bounded queue -> N workers -> batching writer. No SQL, no boto, no tqdm.

The pipeline only applies policies; what a row means (`handle`) and where results go
(`record`) are injected, so it is tested with plain fakes and used with the real adapters.

Stopping: `stop` (an Event) ends paging and makes workers drop rows they have not
started; rows already being handled finish. `abandon()` cancels in-flight work (a second
Ctrl-C). Whatever happens, every confirmed result is handed to the writer, and the
writer's final flush is shielded from cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from archiver.errors import ArchiverError, ConfigError, DatabaseError, Interrupted
from archiver.models import MediaRow, Outcome, RowResult
from archiver.policies import BatchPolicy, RetryPolicy, retrying

log = logging.getLogger(__name__)

Handler = Callable[[MediaRow], Awaitable[RowResult]]
# Writes a batch of results (rows to record, problems to note); how many rows it recorded.
Recorder = Callable[[Sequence[RowResult]], Awaitable[int]]
Clock = Callable[[], float]

QUEUE_ROWS_PER_WORKER = 2  # the row queue holds about 2 x concurrency rows


GRACE_S = 30.0  # after a first Ctrl-C, how long uploads in flight may take to finish


class Interrupt:
    """Ctrl-C / SIGTERM as a value: the first stops paging and lets the work in flight finish
    for up to `grace_s`; the second (or the end of the grace period) abandons it."""

    def __init__(self, grace_s: float = GRACE_S) -> None:
        self.stop = asyncio.Event()
        self.count = 0
        self.grace_s = grace_s
        self.signal_name = "Ctrl-C"  # what stopped it: Ctrl-C or SIGTERM
        self._abandon: list[Callable[[], None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._starting: dict[asyncio.Task[Any], str] = {}  # task -> what it is doing
        self._cut: set[asyncio.Task[Any]] = set()  # starting tasks a signal cancelled

    @property
    def in_startup(self) -> bool:
        """Whether a start-up step runs (then a signal stops it at once)."""
        return bool(self._starting)

    @contextlib.asynccontextmanager
    async def starting(self, doing: str) -> AsyncIterator[None]:
        """A start-up step (`doing`: "connecting", "setting up the bucket"): a signal stops it
        at once with Interrupted (exit 130), as nothing is in flight that could be finished:
        it does not wait out the step's deadline."""
        task = asyncio.current_task()
        if task is None or task in self._starting:  # nested: the outer step answers
            yield
            return
        if self.triggered:
            raise Interrupted(f"stopped by {self.signal_name} before {doing}")
        self._starting[task] = doing
        try:
            yield
        except asyncio.CancelledError:
            if task not in self._cut:
                raise
            self._cut.discard(task)
            task.uncancel()
            raise Interrupted(f"stopped by {self.signal_name} while {doing}") from None
        finally:
            self._starting.pop(task, None)

    @property
    def triggered(self) -> bool:
        return self.count > 0

    def on_abandon(self, callback: Callable[[], None]) -> None:
        self._abandon.append(callback)

    def forget(self, callback: Callable[[], None]) -> None:
        """No longer call `callback` (its job ended; a watch runs many on one interrupt)."""
        with contextlib.suppress(ValueError):
            self._abandon.remove(callback)

    def trigger(self, signal_name: str = "Ctrl-C") -> None:
        self.count += 1
        self.signal_name = signal_name
        self.stop.set()
        for task in self._starting:
            if task not in self._cut:
                self._cut.add(task)
                task.cancel()
        if self.count == 1:
            self._timer = asyncio.get_running_loop().call_later(self.grace_s, self.abandon)
        else:
            self.abandon()

    def abandon(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for callback in self._abandon:
            callback()


@dataclass
class WriteStats:
    """What the writer did."""

    db_updated: int = 0
    statements: int = 0  # grouped UPDATEs that succeeded (database round trips of write-back)
    unrecorded: int = 0  # confirmed uploads never recorded (database gave up)


_STOP = object()
_TICK = object()


@dataclass
class Pipeline:
    """One run: wire it, then `await run(rows)`."""

    handle: Handler
    record: Recorder
    concurrency: int
    batch: BatchPolicy
    on_result: Callable[[RowResult], None]
    db_retry: RetryPolicy = field(default_factory=RetryPolicy)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    clock: Clock = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    stats: WriteStats = field(default_factory=WriteStats)
    # Background duties for the length of the run (e.g. renewing leases); each gets an
    # Event set when the workers are done.
    background: Sequence[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = ()
    fatal: BaseException | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _db_dead: bool = False

    def abandon(self) -> None:
        """Cancel the uploads in flight (their rows are not recorded)."""
        self.stop.set()
        _cancel_all(self._tasks)

    async def run(self, rows: AsyncIterator[MediaRow | RowResult]) -> WriteStats:
        """Process every row of `rows` (a RowResult there is a row the source settled
        itself: it is only reported); raise the first infrastructure error, if any."""
        queue: asyncio.Queue[MediaRow | None] = asyncio.Queue(
            maxsize=max(1, QUEUE_ROWS_PER_WORKER * self.concurrency)
        )
        results: asyncio.Queue[object] = asyncio.Queue()
        workers_done = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            producer = tg.create_task(self._produce(rows, queue, results), name="producer")
            workers = [
                tg.create_task(self._work(queue, results), name=f"worker-{i}")
                for i in range(self.concurrency)
            ]
            self._tasks = [producer, *workers]
            tg.create_task(self._tick(results, workers_done), name="flush-ticker")
            for i, duty in enumerate(self.background):
                tg.create_task(duty(workers_done), name=f"background-{i}")
            writer = tg.create_task(self._write(results), name="writer")
            try:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            finally:
                workers_done.set()
                results.put_nowait(_STOP)
                await asyncio.shield(writer)
        if self.fatal is not None:
            raise self.fatal
        return self.stats

    def _fail(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc
        self.stop.set()

    async def _produce(
        self,
        rows: AsyncIterator[MediaRow | RowResult],
        queue: asyncio.Queue[MediaRow | None],
        results: asyncio.Queue[object],
    ) -> None:
        try:
            async for row in rows:
                if self.stop.is_set():
                    break
                if isinstance(row, RowResult):
                    self._done(row, results)
                    continue
                await queue.put(row)
                if self.stop.is_set():
                    break
        except ArchiverError as exc:
            self._fail(exc)
        except asyncio.CancelledError:
            return  # abandoned: the workers are being cancelled too
        for _ in range(self.concurrency):
            await queue.put(None)

    async def _work(
        self, queue: asyncio.Queue[MediaRow | None], results: asyncio.Queue[object]
    ) -> None:
        while (row := await queue.get()) is not None:
            if self.stop.is_set():
                continue  # not started: drop it, the next run takes it
            try:
                result = await self.handle(row)
            except ConfigError as exc:  # no bucket, no credentials: every row would fail
                self._fail(exc)
                continue
            except Exception as exc:  # anything else is this row's failure: the run goes on
                result = RowResult(row.media_id, Outcome.FAILED, reason=unexpected(exc))
            self._done(result, results)

    def _done(self, result: RowResult, results: asyncio.Queue[object]) -> None:
        self.on_result(result)
        if (result.outcome.recordable and result.url is not None) or result.note:
            results.put_nowait(result)

    async def _tick(self, results: asyncio.Queue[object], done: asyncio.Event) -> None:
        # Wakes the writer so that a batch older than max_age_s is flushed even when no
        # new result arrives (avoids wait_for on Queue.get).
        while not done.is_set():
            await self.sleep(self.batch.max_age_s / 4)
            results.put_nowait(_TICK)

    async def _write(self, results: asyncio.Queue[object]) -> None:
        pending: list[RowResult] = []
        oldest_at: float | None = None
        try:
            while (item := await results.get()) is not _STOP:
                if item is not _TICK:
                    assert isinstance(item, RowResult)
                    pending.append(item)
                    oldest_at = oldest_at if oldest_at is not None else self.clock()
                if self.batch.due(len(pending), oldest_at, self.clock()):
                    batch, pending, oldest_at = pending, [], None
                    await self._flush(batch)
        finally:
            if pending:
                await asyncio.shield(self._flush(pending))

    async def _flush(self, batch: list[RowResult]) -> None:
        if self._db_dead:
            self.stats.unrecorded += _recordable(batch)  # the database is gone: count, don't wait
            return
        for start in range(0, len(batch), self.batch.max_rows):
            chunk = batch[start : start + self.batch.max_rows]
            try:
                self.stats.db_updated += await self._record_with_retry(chunk)
                self.stats.statements += 1
            except DatabaseError as exc:
                self.stats.unrecorded += _recordable(chunk)
                self._db_dead = True
                self._fail(exc)

    async def _record_with_retry(self, chunk: list[RowResult]) -> int:
        return await retrying(
            self.db_retry, lambda: self.record(chunk), clock=self.clock, sleep=self.sleep
        )


T = TypeVar("T")


def _recordable(results: Sequence[RowResult]) -> int:
    return sum(1 for r in results if r.outcome.recordable)


def unexpected(exc: BaseException) -> str:
    """The reason a row failed for a reason no code path foresaw (it is logged too)."""
    log.warning("a row failed unexpectedly", exc_info=exc)
    return f"unexpected {exc.__class__.__name__}: {exc}"


def _guarded(
    work: Callable[[T], Awaitable[None]], on_error: Callable[[T, str], None]
) -> Callable[[T], Awaitable[None]]:
    async def guarded(item: T) -> None:
        try:
            await work(item)
        except ConfigError:
            raise
        except Exception as exc:
            on_error(item, unexpected(exc))

    return guarded


async def for_each(
    items: AsyncIterator[T],
    work: Callable[[T], Awaitable[None]],
    *,
    concurrency: int,
    interrupt: Interrupt | None = None,
    on_error: Callable[[T, str], None] | None = None,
) -> None:
    """Call `work` on every item with at most `concurrency` calls in flight, reading
    `items` only as fast as they are consumed (a bounded queue).

    Ctrl-C as for upload (`Interrupt`): once it stops, items not started are dropped and
    the calls in flight finish; when it abandons, they are cancelled. With `on_error`, an
    item whose work raises anything but a ConfigError (which dooms every item) is handed to
    it with the reason, and the rest go on: no one item stops the run."""
    interrupt = interrupt or Interrupt()
    stop = interrupt.stop
    if stop.is_set():  # stopped before it began: not even a first page is read
        return
    if on_error is not None:
        work = _guarded(work, on_error)
    queue: asyncio.Queue[T | object] = asyncio.Queue(maxsize=QUEUE_ROWS_PER_WORKER * concurrency)
    tasks: list[asyncio.Task[None]] = []

    async def consume() -> None:
        while (item := await queue.get()) is not _STOP:
            if not stop.is_set():
                await work(item)  # type: ignore[arg-type]

    interrupt.on_abandon(functools.partial(_cancel_all, tasks))
    try:
        async with asyncio.TaskGroup() as tg:
            feed = _feed(items, queue, stop, consumers=concurrency)
            tasks.append(tg.create_task(feed, name="for-each-producer"))
            for i in range(concurrency):
                tasks.append(tg.create_task(consume(), name=f"for-each-worker-{i}"))
    except BaseExceptionGroup as group:
        raise first_archiver_error(group) from None


def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:  # a TaskGroup lets a child that was cancelled end quietly
        task.cancel()


async def _feed(
    items: AsyncIterator[T],
    queue: asyncio.Queue[T | object],
    stop: asyncio.Event,
    *,
    consumers: int,
) -> None:
    # No `finally`: if anything fails, the TaskGroup cancels every task anyway.
    async for item in items:
        if stop.is_set():
            break
        await queue.put(item)
    for _ in range(consumers):
        await queue.put(_STOP)


async def to_the_end(step: Awaitable[T]) -> T:
    """Await `step` to its end even when the caller is cancelled meanwhile (then re-raise
    the cancellation): for a step whose effect must be counted once it has begun, such as
    a delete."""
    task = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def first_archiver_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first ArchiverError in a TaskGroup's exception group (else the group itself), so
    that callers see one clear error, as if the work had run in one task."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            exc = first_archiver_error(exc)
        if isinstance(exc, ArchiverError):
            return exc
    return group
