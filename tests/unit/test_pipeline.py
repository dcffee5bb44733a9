"""The pipeline's mechanics and policies, with plain fakes (no database, no S3)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from archiver.budget import ByteBudget
from archiver.errors import BucketMissing, DatabaseError, Interrupted
from archiver.models import MediaRow, Outcome, ProblemNote, RowResult
from archiver.pipeline import Interrupt, Pipeline
from archiver.policies import BatchPolicy, RetryPolicy


@pytest.mark.parametrize(
    ("pending", "oldest", "now", "due"),
    [
        (0, None, 100.0, False),
        (49, 99.5, 100.0, False),
        (50, 99.9, 100.0, True),  # full
        (51, 100.0, 100.0, True),
        (1, 99.0, 100.0, True),  # old enough
        (1, 99.01, 100.0, False),
        (0, 0.0, 100.0, False),  # nothing to flush, however old
    ],
)
def test_batch_policy(pending: int, oldest: float | None, now: float, due: bool) -> None:
    assert BatchPolicy(max_rows=50, max_age_s=1.0).due(pending, oldest, now) is due


@pytest.mark.parametrize(
    ("attempt", "elapsed", "delay"),
    [
        (1, 0.0, 0.5),
        (2, 0.0, 1.0),
        (3, 0.0, 2.0),
        (5, 0.0, 5.0),  # capped
        (9, 0.0, 5.0),
        (1, 59.6, None),  # past the deadline
        (3, 58.5, None),
    ],
)
def test_retry_policy(attempt: int, elapsed: float, delay: float | None) -> None:
    assert RetryPolicy(0.5, 5.0, 60.0).delay(attempt, 100.0, 100.0 + elapsed) == delay


def rows(n: int) -> list[MediaRow]:
    return [MediaRow(f"m{i:05d}", "image", None, None, None, None) for i in range(n)]


async def aiter(items: list[MediaRow]) -> AsyncIterator[MediaRow]:
    for item in items:
        yield item


class FakeDb:
    def __init__(self, fail_times: int = 0) -> None:
        self.batches: list[list[tuple[str, str]]] = []
        self.notes: list[str] = []
        self.fail_times = fail_times

    async def record(self, results: Sequence[RowResult]) -> int:
        if self.fail_times:
            self.fail_times -= 1
            raise DatabaseError("connection reset")
        pairs = [(r.media_id, r.url) for r in results if r.outcome.recordable and r.url]
        self.batches.append(pairs)
        self.notes += [r.note.media_id for r in results if r.note is not None]
        return len(pairs)


class VirtualTime:
    """The pipeline's clock and sleep: a sleep moves the clock on and only yields, so that
    batch ages and database retries take no real time."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


async def until(condition: Callable[[], object], *, turns: int = 10_000) -> None:
    """Let the event loop run until `condition()` holds (no real time passes)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def turns(n: int = 50) -> None:
    """Let the event loop run `n` times round."""
    for _ in range(n):
        await asyncio.sleep(0)


def uploaded(row: MediaRow) -> RowResult:
    return RowResult(row.media_id, Outcome.UPLOADED, url=f"s3://b/{row.media_id}")


def make(
    handle, db: FakeDb, *, concurrency: int = 4, max_rows: int = 10, max_age: float = 1.0, **kw
) -> tuple[Pipeline, list[RowResult]]:
    seen: list[RowResult] = []
    virtual = VirtualTime()
    kw.setdefault("clock", virtual.clock)
    kw.setdefault("sleep", virtual.sleep)
    pipeline = Pipeline(
        handle=handle,
        record=db.record,
        concurrency=concurrency,
        batch=BatchPolicy(max_rows, max_age),
        on_result=seen.append,
        **kw,
    )
    return pipeline, seen


async def test_every_row_handled_once_and_recorded_in_bounded_batches() -> None:
    async def handle(row: MediaRow) -> RowResult:
        await asyncio.sleep(0)
        return uploaded(row)

    db = FakeDb()
    pipeline, seen = make(handle, db, concurrency=8, max_rows=7)
    stats = await pipeline.run(aiter(rows(100)))
    assert sorted(r.media_id for r in seen) == [r.media_id for r in rows(100)]
    recorded = [p[0] for b in db.batches for p in b]
    assert sorted(recorded) == [r.media_id for r in rows(100)]
    assert max(len(b) for b in db.batches) <= 7
    assert stats.db_updated == 100 and stats.unrecorded == 0


async def test_only_confirmed_rows_are_recorded() -> None:
    async def handle(row: MediaRow) -> RowResult:
        n = int(row.media_id[1:])
        outcome = [
            Outcome.UPLOADED,
            Outcome.FAILED,
            Outcome.MISSING_LOCAL,
            Outcome.SKIPPED_EXISTING,
            Outcome.CORRUPT,
        ][n % 5]
        return RowResult(row.media_id, outcome, url=f"s3://b/{row.media_id}")

    db = FakeDb()
    pipeline, _ = make(handle, db)
    await pipeline.run(aiter(rows(50)))
    assert len([p for b in db.batches for p in b]) == 20


async def test_problem_notes_go_to_the_writer_but_are_never_counted_as_recorded() -> None:
    def note(media_id: str) -> ProblemNote:
        return ProblemNote(media_id, "corrupt", "differs", 10, 1.5, "f")

    async def handle(row: MediaRow) -> RowResult:
        if int(row.media_id[1:]) % 2:
            return RowResult(row.media_id, Outcome.CORRUPT, note=note(row.media_id))
        return uploaded(row)

    db = FakeDb()
    pipeline, _ = make(handle, db)
    stats = await pipeline.run(aiter(rows(20)))
    assert sorted(db.notes) == [f"m{i:05d}" for i in range(1, 20, 2)]
    assert stats.db_updated == 10 and stats.unrecorded == 0

    gone = FakeDb(fail_times=10**6)
    pipeline, seen = make(handle, gone, concurrency=1, db_retry=RetryPolicy(0.01, 0.01, 0.05))
    with pytest.raises(DatabaseError):
        await pipeline.run(aiter(rows(20)))
    uploads = sum(1 for r in seen if r.outcome is Outcome.UPLOADED)
    assert uploads and any(r.note for r in seen)
    assert pipeline.stats.unrecorded == uploads  # uploads only: a lost note is not an upload


async def test_a_small_batch_is_flushed_by_age_while_work_goes_on() -> None:
    release = asyncio.Event()

    async def handle(row: MediaRow) -> RowResult:
        if row.media_id != "m00000":
            await release.wait()
        return uploaded(row)

    db = FakeDb()
    pipeline, _ = make(handle, db, concurrency=2, max_rows=100, max_age=0.2)
    task = asyncio.create_task(pipeline.run(aiter(rows(2))))
    await until(lambda: db.batches)
    assert db.batches == [[("m00000", "s3://b/m00000")]]  # flushed before the run ended
    release.set()
    await task
    assert len(db.batches) == 2


async def test_stop_drops_rows_not_started_and_records_those_finished() -> None:
    interrupt = Interrupt()
    started: list[str] = []

    async def handle(row: MediaRow) -> RowResult:
        started.append(row.media_id)
        if len(started) == 5:
            interrupt.trigger()
        await asyncio.sleep(0)
        return uploaded(row)

    db = FakeDb()
    pipeline, seen = make(handle, db, concurrency=2, stop=interrupt.stop)
    await pipeline.run(aiter(rows(1000)))
    assert len(started) < 10
    assert {p[0] for b in db.batches for p in b} == set(started) == {r.media_id for r in seen}


async def test_abandon_cancels_in_flight_work_and_still_records_finished_rows() -> None:
    interrupt = Interrupt()
    hang = asyncio.Event()

    async def handle(row: MediaRow) -> RowResult:
        if row.media_id >= "m00003":
            await hang.wait()  # never set: only abandoning ends these
        return uploaded(row)

    db = FakeDb()
    pipeline, seen = make(handle, db, concurrency=4, max_rows=100, stop=interrupt.stop)
    interrupt.on_abandon(pipeline.abandon)
    task = asyncio.create_task(pipeline.run(aiter(rows(50))))
    await until(lambda: len(seen) == 3)
    await turns()
    interrupt.trigger()
    interrupt.trigger()
    await asyncio.wait_for(task, 5)
    assert {p[0] for b in db.batches for p in b} == {"m00000", "m00001", "m00002"}
    assert len(seen) == 3


async def test_an_infrastructure_error_stops_the_run_after_recording_what_finished() -> None:
    async def handle(row: MediaRow) -> RowResult:
        if row.media_id == "m00020":
            raise BucketMissing("bucket gone")
        return uploaded(row)

    db = FakeDb()
    pipeline, seen = make(handle, db, concurrency=1)
    with pytest.raises(BucketMissing):
        await pipeline.run(aiter(rows(100)))
    assert len([p for b in db.batches for p in b]) == len(seen) == 20


async def test_database_retries_then_gives_up_and_counts_unrecorded() -> None:
    async def handle(row: MediaRow) -> RowResult:
        return uploaded(row)

    db = FakeDb(fail_times=2)
    pipeline, _ = make(handle, db, concurrency=1, max_rows=5, db_retry=RetryPolicy(0.01, 0.01, 1.0))
    stats = await pipeline.run(aiter(rows(10)))
    assert stats.db_updated == 10 and stats.unrecorded == 0  # two failures were retried

    db = FakeDb(fail_times=10**6)
    pipeline, _ = make(
        handle, db, concurrency=1, max_rows=5, db_retry=RetryPolicy(0.01, 0.01, 0.05)
    )
    with pytest.raises(DatabaseError):
        await pipeline.run(aiter(rows(100)))
    assert pipeline.stats.db_updated == 0
    assert pipeline.stats.unrecorded >= 5


async def test_byte_budget_bounds_what_is_held_at_once() -> None:
    budget = ByteBudget(100)

    async def use(n: int) -> None:
        async with budget.hold(n):
            assert budget.used <= 100
            await asyncio.sleep(0)

    await asyncio.gather(*(use(n) for n in [30, 60, 90, 10, 500, 40] * 5))
    assert budget.peak <= 100 and budget.used == 0


def test_dead_here() -> None:
    import os
    import subprocess

    from archiver.claims import dead_here, here, new_owner

    host = here()
    finished = subprocess.Popen(["true"])
    finished.wait()
    assert dead_here(f"{host}:{finished.pid}:abcd")  # ran here, gone
    assert not dead_here(new_owner())  # this very process
    assert not dead_here(f"{host}:{os.getppid()}:abcd")
    assert not dead_here(f"other-host-{host}:{finished.pid}:abcd")  # elsewhere: the lease decides
    assert not dead_here("garbage")


def test_dead_here_for_owners_no_process_can_have() -> None:

    from archiver.claims import dead_here, here

    host = here()
    # Written into archiver_claims by anyone: on this host, no such process can be alive.
    for pid in ("99999999999999999999", "\u00b2", "0", "", "-5", "12a"):
        assert dead_here(f"{host}:{pid}:x"), pid
    assert not dead_here(f"elsewhere-{host}:99999999999999999999:x")  # the lease decides


async def test_a_row_whose_handling_raises_fails_alone_and_the_run_goes_on() -> None:
    async def handle(row: MediaRow) -> RowResult:
        if row.media_id == "m00003":
            raise OverflowError("date value out of range")
        return uploaded(row)

    db = FakeDb()
    pipeline, seen = make(handle, db)
    await pipeline.run(aiter(rows(10)))
    by_id = {r.media_id: r for r in seen}
    assert by_id["m00003"].outcome is Outcome.FAILED
    assert "OverflowError: date value out of range" in by_id["m00003"].reason
    assert sorted(p[0] for b in db.batches for p in b) == sorted(
        r.media_id for r in rows(10) if r.media_id != "m00003"
    )


async def test_for_each_hands_a_failing_item_to_on_error_and_goes_on() -> None:
    from archiver.errors import ConfigError
    from archiver.pipeline import for_each

    done: list[int] = []
    failed: dict[int, str] = {}

    async def work(n: int) -> None:
        if n == 4:
            raise OSError(36, "File name too long")
        done.append(n)

    await for_each(
        aiter(range(10)), work, concurrency=3, on_error=lambda n, why: failed.update({n: why})
    )
    assert sorted(done) == [n for n in range(10) if n != 4]
    assert "File name too long" in failed[4]

    async def doomed(n: int) -> None:
        raise ConfigError("no credentials")  # dooms every item: still stops the run

    with pytest.raises(ConfigError):
        await for_each(aiter(range(5)), doomed, concurrency=2, on_error=lambda n, why: None)


async def test_for_each_stops_then_abandons_like_upload() -> None:
    from archiver.pipeline import for_each, to_the_end

    interrupt = Interrupt()
    hang = asyncio.Event()
    started: list[int] = []
    finished: list[int] = []
    counted: list[int] = []

    deleted = asyncio.Event()

    async def delete_and_count(n: int) -> None:
        await deleted.wait()  # the delete, in a thread
        counted.append(n)  # the report is updated in the same step

    async def work(n: int) -> None:
        started.append(n)
        if n == 0:
            await to_the_end(delete_and_count(n))  # prune's delete: seen to its end
        elif n < 3:
            await hang.wait()  # never set: only abandoning ends these
        finished.append(n)

    job = for_each(aiter(range(100)), work, concurrency=3, interrupt=interrupt)
    task = asyncio.create_task(job)
    await until(lambda: sorted(started) == [0, 1, 2])
    interrupt.trigger()  # stop: nothing new starts, the work in flight may finish
    await turns()
    assert not task.done() and sorted(started) == [0, 1, 2]
    interrupt.trigger()  # abandon: what is in flight is cancelled...
    await turns()
    deleted.set()  # ... and the delete begun ends
    await asyncio.wait_for(task, 5)
    assert sorted(started) == [0, 1, 2] and finished == []
    assert counted == [0]  # ... but a step begun with to_the_end ended, and was counted


async def test_a_stopped_for_each_reads_no_items() -> None:
    from archiver.pipeline import for_each

    stopped = Interrupt()
    stopped.trigger()
    seen: list[int] = []

    async def work(n: int) -> None:
        seen.append(n)

    async def items() -> AsyncIterator[int]:
        raise AssertionError("a stopped job reads no items")
        yield 0

    await for_each(items(), work, concurrency=2, interrupt=stopped)
    assert seen == []


async def test_a_signal_stops_a_start_up_step_at_once_and_a_run_in_flight_gracefully() -> None:
    interrupt = Interrupt()
    hung = asyncio.Event()  # a step that would wait for its deadline

    async def start_up() -> None:
        async with interrupt.starting("connecting"):
            await hung.wait()

    task = asyncio.create_task(start_up())
    await asyncio.sleep(0)
    assert interrupt.in_startup
    interrupt.trigger("SIGTERM")
    with pytest.raises(Interrupted, match=r"^stopped by SIGTERM while connecting$"):
        await task
    assert not interrupt.in_startup
    # Once triggered, a later start-up step does not even begin.
    with pytest.raises(Interrupted, match="before connecting"):
        async with interrupt.starting("connecting"):
            pass
    interrupt.abandon()  # (the grace timer of the first trigger)


async def test_a_cancel_that_is_not_the_signals_is_left_alone() -> None:
    interrupt = Interrupt()

    async def start_up() -> None:
        async with interrupt.starting("connecting"):
            await asyncio.Event().wait()

    task = asyncio.create_task(start_up())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
