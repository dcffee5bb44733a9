"""The row path: a page of rows settled in one lookup, claims only for rows with a file, missing
files counted rather than logged one by one."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from archiver.claims import Claims, within_limit
from archiver.commands import upload as upload_command
from archiver.ledger import Ledger, row_fingerprint
from archiver.models import KnownProblem, MediaRow, Outcome, RowResult
from archiver.pipeline import Pipeline
from archiver.policies import BatchPolicy
from archiver.progress import MAX_WARNINGS, RUN_LOG, Reporter
from archiver.resolve import Resolver, open_cache_root
from archiver.settings import Settings, UploadOptions
from archiver.sql import RowFilter
from archiver.uploader import Uploader


def md5(i: int) -> str:
    return hashlib.md5(str(i).encode()).hexdigest()


def row(i: int, **changes: Any) -> MediaRow:
    base = MediaRow(f"m{i:05d}", "image", None, md5(i), "image/jpeg", datetime(2025, 5, 1))
    return replace(base, **changes)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "cache"
    (root / "images").mkdir(parents=True)
    return root


@pytest.fixture
def uploader(root: Path) -> Iterator[Uploader]:
    settings = Settings(cache_root=root)
    with open_cache_root(settings) as cache:
        yield Uploader(settings, UploadOptions(dry_run=True), None, cache=cache, cwd=root)


class CountingResolver(Resolver):
    lookups: int = 0

    def resolve(self, row: MediaRow, md5: str):  # type: ignore[no-untyped-def]
        self.lookups += 1
        return super().resolve(row, md5)


def counting(uploader: Uploader) -> CountingResolver:
    resolver = CountingResolver(uploader.resolver.root, uploader.resolver.cwd)
    uploader.resolver = resolver
    return resolver


async def test_a_page_is_settled_in_one_pass_and_found_files_are_not_looked_up_again(
    uploader: Uploader, root: Path
) -> None:
    for i in (1, 3):
        (root / "images" / f"{md5(i)}.jpg").write_bytes(b"x" * i)
    page = [row(1), row(2), row(3), row(4, md5_sum="nothex"), row(5, created_at_bad="infinity")]
    resolver = counting(uploader)
    items = await uploader.settle(page)
    assert resolver.lookups == 3  # rows 1-3; the invalid rows are left to `handle`
    assert [isinstance(i, RowResult) for i in items] == [False, True, False, False, False]
    missing = items[1]
    assert isinstance(missing, RowResult) and missing.outcome is Outcome.MISSING_LOCAL
    assert missing.media_id == "m00002" and md5(2) in missing.reason

    results = {r.media_id: await uploader.handle(r) for r in items if isinstance(r, MediaRow)}
    # rows 1 and 3 use what settle found; 5 is looked up for the state its problem records
    assert resolver.lookups == 3 + 1
    assert results["m00001"].outcome is Outcome.WOULD_UPLOAD
    assert results["m00003"].outcome is Outcome.WOULD_UPLOAD
    assert results["m00004"].outcome is Outcome.INVALID
    assert results["m00005"].outcome is Outcome.INVALID


async def test_a_row_that_changed_since_its_page_was_settled_is_looked_up_again(
    uploader: Uploader, root: Path
) -> None:
    (root / "images" / f"{md5(1)}.jpg").write_bytes(b"one")
    (root / "images" / f"{md5(2)}.jpg").write_bytes(b"two!")
    resolver = counting(uploader)
    await uploader.settle([row(1)])
    changed = row(1, md5_sum=md5(2))  # claimed as the database holds it now
    result = await uploader.handle(changed)
    assert resolver.lookups == 2
    assert result.outcome is Outcome.WOULD_UPLOAD and result.size == 4


async def test_lookups_are_kept_for_two_pages_only(uploader: Uploader, root: Path) -> None:
    for i in range(3):
        (root / "images" / f"{md5(i)}.jpg").write_bytes(b"x")
    resolver = counting(uploader)
    for i in range(3):
        await uploader.settle([row(i)])
    assert resolver.lookups == 3
    for i in range(3):
        await uploader.handle(row(i))
    assert resolver.lookups == 4  # row 0's page was two pages back: looked up again


@dataclass
class FakeLedgerDb:
    problems: list[KnownProblem]
    asked: list[list[str]] = field(default_factory=list)

    async def retrying(self, _retry: object, call: Any) -> Any:
        return await call()

    async def known_problems(self, ids: list[str]) -> list[KnownProblem]:
        self.asked.append(list(ids))
        return [p for p in self.problems if p.media_id in ids]


async def test_a_known_problem_whose_file_is_unchanged_is_set_aside_when_settled(
    uploader: Uploader, root: Path
) -> None:
    path = root / "images" / f"{md5(1)}.jpg"
    path.write_bytes(b"corrupt")
    st = path.stat()
    known = KnownProblem(
        "m00001", "corrupt", "bytes differ", st.st_size, st.st_mtime,
        row_fingerprint(row(1), st.st_ctime),
    )  # fmt: skip
    db = FakeLedgerDb([known])
    uploader.ledger = Ledger(db, True, None)  # type: ignore[arg-type]
    items = await uploader.settle([row(1), row(2)])
    assert db.asked == [["m00001", "m00002"]]  # one query for the page
    assert [i.outcome for i in items if isinstance(i, RowResult)] == [
        Outcome.KNOWN_PROBLEM,
        Outcome.MISSING_LOCAL,
    ]


@dataclass
class FakeClaimDb:
    """Candidates from a list; claims grant every row but those `taken` by others."""

    rows: list[MediaRow]
    taken: set[str] = field(default_factory=set)
    calls: list[tuple[str, int]] = field(default_factory=list)

    async def retrying(self, _retry: object, call: Any) -> Any:
        return await call()

    async def live_owners(self) -> list[str]:
        return []

    async def candidates(
        self, _filter: RowFilter, *, owner: str, after: str | None, limit: int
    ) -> list[MediaRow]:
        self.calls.append(("candidates", limit))
        later = [r for r in self.rows if after is None or r.media_id > after]
        return later[:limit]

    async def claim_page(self, row_filter: RowFilter, **kw: Any) -> list[MediaRow]:
        self.calls.append(("claim", len(row_filter.media_ids)))
        assert kw["limit"] == len(row_filter.media_ids) and kw["after"] is None
        granted = [r for r in self.rows if r.media_id in row_filter.media_ids]
        granted = [r for r in granted if r.media_id not in self.taken]
        return granted


async def settle_odd_missing(rows: list[MediaRow]) -> list[MediaRow | RowResult]:
    return [
        RowResult(r.media_id, Outcome.MISSING_LOCAL) if int(r.media_id[1:]) % 2 else r for r in rows
    ]


async def test_claims_are_taken_only_for_rows_settle_left_and_a_batch_at_a_time() -> None:
    db = FakeClaimDb([row(i) for i in range(25)], taken={"m00004"})
    claims = Claims(db, RowFilter())  # type: ignore[arg-type]
    source = claims.rows(limit=None, page_rows=10, claim_rows=3, settle=settle_odd_missing)
    first = [await anext(source) for _ in range(6)]  # a page's settled rows come first
    assert all(isinstance(i, RowResult) for i in first[:5]) and isinstance(first[5], MediaRow)
    assert db.calls == [("candidates", 10), ("claim", 3)]  # claims run just ahead
    rest = [item async for item in source]
    items = first + rest
    work = [i.media_id for i in items if isinstance(i, MediaRow)]
    assert work == [f"m{i:05d}" for i in range(0, 25, 2) if i != 4]  # m00004: held elsewhere
    assert claims.held == set(work)
    missing = [i.media_id for i in items if isinstance(i, RowResult)]
    assert missing == [f"m{i:05d}" for i in range(1, 25, 2)]  # never claimed
    claimed = sum(n for what, n in db.calls if what == "claim")
    assert claimed == 13  # the 13 even rows, in claims of at most 3
    assert [c for c in db.calls if c[0] == "candidates"] == [("candidates", 10)] * 3


def kinds(text: str) -> list[MediaRow | RowResult]:
    """ "w" a row to work on, "m" a settled result (a missing file), in order."""
    return [
        row(i) if c == "w" else RowResult(f"m{i:05d}", Outcome.MISSING_LOCAL)
        for i, c in enumerate(text)
    ]


@pytest.mark.parametrize(
    ("settled", "room", "taken"),
    [
        ("wwww", None, 4),
        ("wwww", 2, 2),
        ("mmmm", 1, 4),  # settled results take no room
        ("mwmmwm", 1, 4),  # up to the next row to work on
        ("mwmmwm", 2, 6),
        ("mwmmwm", 5, 6),
        ("", 3, 0),
    ],
)
def test_within_limit_takes_rows_to_work_on_up_to_the_room_and_every_settled_result(
    settled: str, room: int | None, taken: int
) -> None:
    assert within_limit(kinds(settled), room) == taken


async def test_the_limit_counts_rows_worked_on_not_missing_files_or_known_problems() -> None:
    db = FakeClaimDb([row(i) for i in range(25)])
    claims = Claims(db, RowFilter())  # type: ignore[arg-type]
    items = [
        i async for i in claims.rows(limit=7, page_rows=10, claim_rows=3, settle=settle_odd_missing)
    ]
    work = [i.media_id for i in items if isinstance(i, MediaRow)]
    assert work == [f"m{i:05d}" for i in range(0, 14, 2)]  # 7 rows, behind 7 missing files
    missing = [i.media_id for i in items if isinstance(i, RowResult)]
    assert missing == [f"m{i:05d}" for i in range(1, 14, 2)]
    assert [c for c in db.calls if c[0] == "candidates"] == [("candidates", 10)] * 2


async def test_a_limited_run_goes_on_past_rows_claimed_elsewhere() -> None:
    db = FakeClaimDb([row(i) for i in range(12)], taken={"m00000", "m00002"})
    claims = Claims(db, RowFilter())  # type: ignore[arg-type]
    items = [
        i async for i in claims.rows(limit=3, page_rows=2, claim_rows=3, settle=settle_odd_missing)
    ]
    work = [i.media_id for i in items if isinstance(i, MediaRow)]
    assert work == ["m00004", "m00006", "m00008"]  # the 3 it could take


async def test_the_unclaimed_source_keeps_the_same_limit() -> None:
    async def pages() -> AsyncIterator[list[MediaRow]]:
        for start in range(0, 25, 10):
            yield [row(i) for i in range(start, min(start + 10, 25))]

    items = [i async for i in upload_command._settled(pages(), settle_odd_missing, 7)]
    work = [i.media_id for i in items if isinstance(i, MediaRow)]
    assert work == [f"m{i:05d}" for i in range(0, 14, 2)]
    assert len(items) == 14


async def source(items: list[MediaRow | RowResult]) -> AsyncIterator[MediaRow | RowResult]:
    for item in items:
        yield item


async def test_the_pipeline_reports_settled_rows_without_handing_them_to_a_worker() -> None:
    handled: list[str] = []
    recorded: list[str] = []

    async def handle(r: MediaRow) -> RowResult:
        handled.append(r.media_id)
        return RowResult(r.media_id, Outcome.UPLOADED, url=f"s3://b/{r.media_id}")

    async def record(results: Any) -> int:
        recorded.extend(r.media_id for r in results)
        return len(results)

    seen: list[RowResult] = []

    async def no_wait(_seconds: float) -> None:
        await asyncio.sleep(0)

    pipeline = Pipeline(handle, record, 2, BatchPolicy(10, 1.0), seen.append, sleep=no_wait)
    items: list[MediaRow | RowResult] = [
        row(0),
        RowResult("m00001", Outcome.MISSING_LOCAL),
        row(2),
        RowResult("m00003", Outcome.KNOWN_PROBLEM),
    ]
    stats = await pipeline.run(source(items))
    assert sorted(handled) == ["m00000", "m00002"]
    assert sorted(r.media_id for r in seen) == ["m00000", "m00001", "m00002", "m00003"]
    assert sorted(recorded) == ["m00000", "m00002"] and stats.db_updated == 2


def test_missing_files_are_counted_and_only_the_first_few_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    err = io.StringIO()
    reporter = Reporter(mode="off", verbose=False, dry_run=False, out=io.StringIO(), err=err)
    reporter.start(0)
    with caplog.at_level(logging.INFO, logger=RUN_LOG.name):
        for i in range(MAX_WARNINGS + 30):
            reporter.result(RowResult(f"x{i}", Outcome.MISSING_LOCAL, reason="no local file"))
        reporter.result(RowResult("bad", Outcome.CORRUPT, reason="bytes differ"))
        reporter.close()
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("row") == MAX_WARNINGS + 1  # the first 20 missing, and the corrupt one
    summary = [r for r in caplog.records if getattr(r, "event", None) == "missing"]
    assert len(summary) == 1 and summary[0].fields == {"rows": MAX_WARNINGS + 30}
    assert f"{MAX_WARNINGS + 30:,} rows have no local file" in summary[0].getMessage()
    assert reporter.missing == MAX_WARNINGS + 30
