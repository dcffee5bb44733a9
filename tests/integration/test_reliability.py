"""Faults: the real command, the real services, a fault-injecting proxy between them.

After every scenario the same invariant holds: each row with an archive_url has its
object, with the right bytes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter

import pytest

from tests.helpers import (
    all_objects,
    assert_archive_invariant,
    make_rows,
    md5,
    run_cli,
    start_cli,
    wait_for,
)
from tests.proxy import Corrupt, Drop, Request, Respond


def selected(key: str, percent: int) -> bool:
    return int(md5(key.encode()), 16) % 100 < percent


async def recorded_keys(db, bucket: str) -> set[str]:
    rows = await db.fetch("SELECT archive_url FROM post_media WHERE archive_url IS NOT NULL")
    return {r["archive_url"].removeprefix(f"s3://{bucket}/") for r in rows}


async def test_slowdown_on_30_percent_of_puts_is_retried(penv, db, s3, proxy) -> None:
    rows = await make_rows(penv, db, 60)
    attempts: Counter[str] = Counter()

    def slow_down(r: Request):
        if not r.is_object_put:
            return None
        key = r.key
        attempts[key] += 1
        # 30% of the keys are refused once; a third of those twice.
        limit = 2 if selected(key + "x", 33) else 1
        if selected(key, 30) and attempts[key] <= limit:
            return Respond(503, "SlowDown", "Please reduce your request rate.")
        return None

    proxy.rule = slow_down
    out = run_cli(penv, "upload", "--json", "--concurrency", "8")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["uploaded"] == 60
    refused = proxy.count(lambda r: r.is_object_put, "answered 503")
    puts = proxy.count(lambda r: r.is_object_put)
    assert 0.2 <= refused / puts <= 0.4, (refused, puts)
    assert await assert_archive_invariant(db, s3, penv.bucket) == len(rows)


async def test_connections_dropped_mid_body_are_retried(penv, db, s3, proxy) -> None:
    await make_rows(penv, db, 30, size=50_000)
    dropped: set[str] = set()

    def drop_once(r: Request):
        if r.is_object_put and selected(r.key, 40) and r.key not in dropped:
            dropped.add(r.key)
            return Drop()
        return None

    proxy.rule = drop_once
    out = run_cli(penv, "upload", "--json", "--concurrency", "4")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["uploaded"] == 30
    assert proxy.count(lambda r: r.is_object_put, "dropped") == len(dropped) > 0
    assert await assert_archive_invariant(db, s3, penv.bucket) == 30


async def test_bytes_corrupted_in_transit_are_never_recorded(penv, db, s3, proxy) -> None:
    rows = await make_rows(penv, db, 12)
    always = f"cache/{rows[3].created_at:%Y/%m}/{rows[3].md5_sum}.jpg"
    once = f"cache/{rows[7].created_at:%Y/%m}/{rows[7].md5_sum}.jpg"
    seen: Counter[str] = Counter()

    def corrupt(r: Request):
        if r.is_object_put:
            seen[r.key] += 1
            if r.key == always or (r.key == once and seen[once] == 1):
                return Corrupt()
        return None

    proxy.rule = corrupt
    out = run_cli(penv, "upload", "--json")
    assert out.returncode == 1, out.stderr
    result = json.loads(out.stdout)
    assert (result["uploaded"], result["failed"]) == (11, 1)
    urls = {r["media_id"]: r["archive_url"] for r in await db.fetch("SELECT * FROM post_media")}
    assert urls[rows[3].media_id] is None  # damaged every time: not recorded
    assert urls[rows[7].media_id] == f"s3://{penv.bucket}/{once}"  # sent again, then intact
    assert await assert_archive_invariant(db, s3, penv.bucket) == 11


async def test_s3_going_away_mid_run_then_a_rerun_completes(penv, db, s3, proxy) -> None:
    await make_rows(penv, db, 80)
    proxy.delay_s = 0.05
    run = start_cli(penv, "upload", "--json", "--concurrency", "4", AWS_MAX_ATTEMPTS="2")
    wait_for(lambda: proxy.count(lambda r: r.is_object_put) >= 15)
    proxy.stop()
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 1, stderr
    first = json.loads(stdout)
    assert first["failed"] > 0 and first["uploaded"] >= 15
    assert await assert_archive_invariant(db, s3, penv.bucket) == first["uploaded"]

    proxy.start()
    proxy.delay_s = 0
    out = run_cli(penv, "upload", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["uploaded"] + first["uploaded"] == 80
    assert await assert_archive_invariant(db, s3, penv.bucket) == 80


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_interrupt_records_every_finished_upload_and_exits_130(penv, db, s3, proxy, sig):
    await make_rows(penv, db, 150)
    proxy.delay_s = 0.1
    run = start_cli(penv, "upload", "--json", "--concurrency", "8")
    wait_for(lambda: proxy.count(lambda r: r.is_object_put) >= 20)
    run.send_signal(sig)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr
    result = json.loads(stdout)
    assert result["interrupted"] is True
    assert 20 <= result["uploaded"] < 150
    stored = set(all_objects(s3, penv.bucket))
    assert stored == await recorded_keys(db, penv.bucket)  # every finished upload recorded
    assert result["db_updated"] == len(stored)
    assert await assert_archive_invariant(db, s3, penv.bucket) == len(stored)


async def test_sigkill_mid_run_then_a_rerun_completes_without_redoing_work(penv, db, s3, proxy):
    await make_rows(penv, db, 120)
    proxy.delay_s = 0.05
    run = start_cli(penv, "upload", "--concurrency", "8", "--batch-size", "1000")
    wait_for(lambda: proxy.count(lambda r: r.is_object_put) >= 40)
    run.kill()
    run.wait(10)
    # Requests the proxy had accepted before the kill still reach the server: let them land.
    settled = -1
    while settled != (stored_before := len(all_objects(s3, penv.bucket))):
        settled = stored_before
        await asyncio.sleep(0.5)
    assert stored_before >= 40
    assert await assert_archive_invariant(db, s3, penv.bucket) >= 0

    proxy.reset()
    proxy.delay_s = 0
    out = run_cli(penv, "upload", "--json")
    assert out.returncode == 0, out.stderr
    puts = proxy.count(lambda r: r.is_object_put, "forwarded 200")
    assert puts < 120  # the objects stored before the crash were not sent again
    assert puts == 120 - stored_before
    assert await db.fetchval("SELECT count(archive_url) FROM post_media") == 120
    assert await assert_archive_invariant(db, s3, penv.bucket) == 120


@pytest.mark.skipif(
    bool(os.environ.get("ARCHIVER_TEST_DATABASE_URL")),
    reason="restarts the suite's own PostgreSQL cluster",
)
async def test_postgres_restarted_mid_run(penv, db, s3, proxy, pg_server) -> None:
    await make_rows(penv, db, 150)
    proxy.delay_s = 0.05
    run = start_cli(penv, "upload", "--json", "--concurrency", "8", "--batch-size", "10")
    wait_for(lambda: proxy.count(lambda r: r.is_object_put) >= 30)
    pg_server.stop_server("fast")
    await asyncio.sleep(2)
    pg_server.start()
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode in (0, 1), stderr
    assert "Traceback" not in stderr
    json.loads(stdout)  # it still printed its summary
    await db.close()
    import asyncpg

    conn = await asyncpg.connect(penv.database_url)
    try:
        proxy.delay_s = 0
        out = run_cli(penv, "upload", "--json")
        assert out.returncode == 0, out.stderr
        assert await conn.fetchval("SELECT count(archive_url) FROM post_media") == 150
        assert await assert_archive_invariant(conn, s3, penv.bucket) == 150
    finally:
        await conn.close()


async def test_an_interrupted_verify_prints_what_it_checked_and_exits_130(penv, db, s3, proxy):
    await make_rows(penv, db, 100)
    out = run_cli(penv, "upload", "--json")
    assert out.returncode == 0, out.stderr
    proxy.reset()
    proxy.delay_s = 0.1
    run = start_cli(penv, "verify", "--verify-s3", "--json", "--concurrency", "2")
    wait_for(lambda: proxy.count(lambda r: r.method == "HEAD" and r.path.count("/") >= 2) >= 5)
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr
    checked = json.loads(stdout)["s3"]["checked"]
    assert 5 <= checked < 100


@pytest.mark.skipif(
    bool(os.environ.get("ARCHIVER_TEST_DATABASE_URL")),
    reason="stops the suite's own PostgreSQL cluster",
)
async def test_database_gone_for_good_stops_with_exit_1_and_counts_what_was_unrecorded(
    penv, db, s3, proxy, pg_server
) -> None:
    import asyncpg

    from archiver.progress import format_summary
    from tests.helpers import upload_while_postgres_stops

    await make_rows(penv, db, 200)
    await db.close()
    proxy.delay_s = 0.05

    summary = await upload_while_postgres_stops(penv, proxy, pg_server)
    assert summary.error and "database" in summary.error
    assert summary.unrecorded > 0  # confirmed uploads the database never took
    assert summary.exit_code == 1
    assert f"{summary.unrecorded:,} uploads were not recorded" in format_summary(
        summary, bucket=penv.bucket
    )

    proxy.delay_s = 0
    conn = await asyncpg.connect(penv.database_url)
    try:
        # The run above could not release its claims, and its owner (this test process) is
        # still alive; a CLI run would have exited, and its claims been taken over.
        await conn.execute("DELETE FROM archiver_claims")
        out = run_cli(penv, "upload", "--json")
        assert out.returncode == 0, out.stderr
        assert await conn.fetchval("SELECT count(archive_url) FROM post_media") == 200
        assert await assert_archive_invariant(conn, s3, penv.bucket) == 200
    finally:
        await conn.close()
