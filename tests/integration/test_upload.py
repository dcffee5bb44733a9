"""`archiver upload` against a real PostgreSQL and a real HTTP S3 server (moto)."""

from __future__ import annotations

import random
from datetime import datetime

import asyncpg
import pytest

from archiver.demo.sample import SampleRow, file_bytes, insert_rows
from archiver.errors import BucketMissing, DatabaseUnavailable
from archiver.models import Outcome
from tests.helpers import (
    all_objects,
    assert_archive_invariant,
    both_servers,
    build_bad_cases,
    build_contract_cases,
    insert_cases,
    md5,
    media_file,
    rows_by_id,
    upload,
)


@both_servers
async def test_every_contract_case_ends_as_the_contract_says(env, db, s3) -> None:
    cases = build_contract_cases(env, random.Random(1))
    await insert_cases(db, cases)

    summary = await upload(env, concurrency=4)

    rows = await rows_by_id(db)
    objects = all_objects(s3, env.bucket)
    expected_keys = {c.key for c in cases if c.key}
    assert set(objects) == expected_keys
    for case in cases:
        row = rows[case.row.media_id]
        if case.key is None:
            assert row["archive_url"] is None, case.row.media_id
            continue
        assert row["archive_url"] == f"s3://{env.bucket}/{case.key}", case.row.media_id
        assert row["updated_at"] is not None
        obj = s3.get_object(Bucket=env.bucket, Key=case.key)
        assert obj["Body"].read() == case.data
        assert obj["ContentType"] == case.content_type, case.row.media_id

    c = summary.counts
    assert c[Outcome.UPLOADED] == len(expected_keys)  # the duplicate pair caused one upload
    assert c[Outcome.SKIPPED_EXISTING] == 1
    assert c[Outcome.MISSING_LOCAL] == 1
    assert summary.selected == len(cases)
    assert summary.db_updated == len(cases) - 1
    assert summary.bytes_uploaded == sum(len(c.data or b"") for c in cases if c.key) - 60_000
    assert summary.exit_code == 0  # a missing local file alone does not fail a run
    assert await assert_archive_invariant(db, s3, env.bucket) == len(cases) - 1


@both_servers
async def test_bad_rows_are_reported_never_uploaded_and_the_run_goes_on(env, db, s3) -> None:
    rng = random.Random(2)
    bad = build_bad_cases(env, rng)
    good = build_contract_cases(env, rng)[:1]
    await insert_cases(db, bad + good)

    summary = await upload(env, concurrency=3)

    rows = await rows_by_id(db)
    for case in bad:
        assert rows[case.row.media_id]["archive_url"] is None, case.row.media_id
    assert rows[good[0].row.media_id]["archive_url"] is not None
    assert set(all_objects(s3, env.bucket)) == {good[0].key}
    c = summary.counts
    assert c[Outcome.INVALID] == 4  # bad md5, path outside, symlink out, traversal
    assert c[Outcome.CORRUPT] == 1
    assert c[Outcome.UPLOADED] == 1
    assert summary.exit_code == 1


@both_servers
async def test_already_archived_rows_untouched_without_force_rewritten_with_it(env, db, s3):
    rng = random.Random(3)
    data = file_bytes(".jpg", 2048, rng)
    media_file(env.cache_root / "images", f"{md5(data)}.jpg", data)
    old = datetime(2020, 1, 1)
    row = SampleRow(
        "a1",
        "image",
        md5(data),
        "image/jpeg",
        None,
        datetime(2025, 6, 1),
        archive_url="s3://elsewhere/old/key.jpg",
    )
    await insert_rows(db, [row])
    await db.execute("UPDATE post_media SET updated_at = $1", old)

    summary = await upload(env)
    assert summary.selected == 0
    r = await db.fetchrow("SELECT archive_url, updated_at FROM post_media")
    assert (r["archive_url"], r["updated_at"]) == ("s3://elsewhere/old/key.jpg", old)
    assert all_objects(s3, env.bucket) == {}

    summary = await upload(env, force=True)
    key = f"cache/2025/06/{md5(data)}.jpg"
    r = await db.fetchrow("SELECT archive_url, updated_at FROM post_media")
    assert r["archive_url"] == f"s3://{env.bucket}/{key}"
    assert r["updated_at"] > old
    assert summary.counts[Outcome.UPLOADED] == 1
    assert s3.get_object(Bucket=env.bucket, Key=key)["Body"].read() == data


@both_servers
async def test_dry_run_writes_nothing_anywhere(env, db, s3) -> None:
    cases = build_contract_cases(env, random.Random(4))
    await insert_cases(db, cases)
    before = await db.fetch("SELECT * FROM post_media ORDER BY media_id")

    summary = await upload(env, dry_run=True)

    assert await db.fetch("SELECT * FROM post_media ORDER BY media_id") == before
    assert all_objects(s3, env.bucket) == {}
    assert summary.counts[Outcome.UPLOADED] == 0
    assert summary.counts[Outcome.WOULD_UPLOAD] == len(cases) - 1  # all but the missing one
    assert summary.as_json()["would_upload"] == len(cases) - 1
    assert summary.as_json()["dry_run"] is True


@both_servers
async def test_limit_archives_exactly_that_many_and_a_second_run_uploads_nothing(env, db, s3):
    rng = random.Random(5)
    rows = []
    for i in range(12):
        data = file_bytes(".jpg", 1000 + i, rng)
        media_file(env.cache_root / "images", f"{md5(data)}.jpg", data)
        rows.append(
            SampleRow(f"r{i:02d}", "image", md5(data), "image/jpeg", None, datetime(2025, 1, 1))
        )
    await insert_rows(db, rows)

    first = await upload(env, limit=5, batch_size=2)
    assert first.counts[Outcome.UPLOADED] == 5
    assert await db.fetchval("SELECT count(archive_url) FROM post_media") == 5

    rest = await upload(env)
    assert rest.counts[Outcome.UPLOADED] == 7
    assert rest.selected == 7

    again = await upload(env)
    assert again.selected == 0 and again.bytes_uploaded == 0
    assert len(all_objects(s3, env.bucket)) == 12
    assert await assert_archive_invariant(db, s3, env.bucket) == 12


@both_servers
async def test_media_type_filter(env, db, s3) -> None:
    cases = build_contract_cases(env, random.Random(6))
    await insert_cases(db, cases)
    summary = await upload(env, media_types=("document",))
    archived = await db.fetch("SELECT media_type FROM post_media WHERE archive_url IS NOT NULL")
    assert {r["media_type"] for r in archived} == {"document"}
    assert summary.counts[Outcome.UPLOADED] == 2


@both_servers
async def test_missing_bucket_stops_the_run(env, db) -> None:
    cases = build_contract_cases(env, random.Random(7))[:2]
    await insert_cases(db, cases)
    with pytest.raises(BucketMissing):
        await upload(
            env.__class__(
                env.database_url, env.endpoint, "no-such-bucket-here", env.workdir, env.cache_root
            )
        )
    assert await db.fetchval("SELECT count(archive_url) FROM post_media") == 0


@both_servers
async def test_unreachable_database_is_a_config_error(env) -> None:
    env.database_url = "postgresql://archiver:s3cret-pw@127.0.0.1:1/nope"
    with pytest.raises(DatabaseUnavailable) as info:
        await upload(env)
    assert "s3cret-pw" not in str(info.value)
    assert "***" in str(info.value)


@both_servers
async def test_many_rows_with_small_batches_all_recorded(env, db, s3) -> None:
    rng = random.Random(8)
    rows = []
    for i in range(150):
        data = rng.randbytes(200 + i)
        media_file(env.cache_root / "images", f"{md5(data)}.jpg", data)
        rows.append(
            SampleRow(
                f"n{i:04d}", "image", md5(data), "image/jpeg", None, datetime(2025, 3, 1 + i % 28)
            )
        )
    await insert_rows(db, rows)
    summary = await upload(env, concurrency=16, batch_size=7)
    assert summary.counts[Outcome.UPLOADED] == 150
    assert summary.db_updated == 150
    assert await assert_archive_invariant(db, s3, env.bucket) == 150


async def test_conn_is_real_postgres(db: asyncpg.Connection) -> None:
    # The rig must be a real server, not a stand-in.
    assert "PostgreSQL" in await db.fetchval("SELECT version()")
