"""Several archiver processes on one database, and transaction-mode poolers."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

from archiver.demo.sample import SampleRow, file_bytes, insert_rows
from tests.helpers import (
    assert_archive_invariant,
    build_contract_cases,
    insert_cases,
    md5,
    media_file,
    rows_by_id,
    run_cli,
)


async def make_rows(env, db, n: int, *, size: int = 300, seed: int = 60) -> None:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        data = file_bytes(".png", size + i % 50, rng)
        media_file(env.cache_root / "images", f"{md5(data)}.png", data)
        rows.append(
            SampleRow(
                f"s{i:05d}", "image", md5(data), "image/png", None, datetime(2025, 1 + i % 12, 1)
            )
        )
    await insert_rows(db, rows)


def start(env, *args: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "archiver", "upload", *args],
        cwd=env.workdir,
        env=env.environ(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def object_puts(proxy) -> Counter[str]:
    return Counter(
        r.path for r, what in proxy.requests if r.is_object_put and what == "forwarded 200"
    )


def through_pgbouncer(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, f"postgres@127.0.0.1:{port}", parts.path, "", ""))


async def test_three_processes_share_1500_rows_without_duplicate_uploads(penv, db, s3, proxy):
    await make_rows(penv, db, 1500)
    runs = [start(penv, "--json", "--concurrency", "8") for _ in range(3)]
    results = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
        results.append(json.loads(stdout))

    assert await db.fetchval("SELECT count(*) FROM post_media WHERE archive_url IS NULL") == 0
    puts = object_puts(proxy)
    duplicates = {path: n for path, n in puts.items() if n > 1}
    assert duplicates == {}, f"keys uploaded more than once: {duplicates}"
    assert len(puts) == 1500  # object PUTs == distinct keys
    assert sum(r["uploaded"] for r in results) == 1500
    assert sum(r["skipped_existing"] for r in results) == 0
    assert all(r["uploaded"] > 0 for r in results), results  # each process did its share
    assert await db.fetchval("SELECT count(*) FROM archiver_claims") == 0  # all released
    assert await assert_archive_invariant(db, s3, penv.bucket) == 1500


async def test_a_dead_process_rows_are_finished_once_its_lease_expires(penv, db, s3, proxy):
    await make_rows(penv, db, 300)
    proxy.delay_s = 0.05
    victim = start(penv, "--concurrency", "4", "--lease", "4")
    deadline = time.monotonic() + 60
    while proxy.count(lambda r: r.is_object_put) < 20:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    # As if it had run on another machine (a dead process on this host is taken over at once,
    # see test_reliability): only the lease can free its rows.
    await db.execute("UPDATE archiver_claims SET owner = 'elsewhere:4242:dead'")
    held = await db.fetchval("SELECT count(*) FROM archiver_claims WHERE expires_at > now()")
    assert held > 0

    proxy.delay_s = 0
    out = run_cli(penv, "upload", "--json", "--lease", "4")  # before the leases expire
    assert out.returncode == 0, out.stderr
    left = await db.fetchval("SELECT count(*) FROM post_media WHERE archive_url IS NULL")
    assert 0 < left <= held  # the dead process's rows were not taken while its claims lived

    await asyncio.sleep(4.5)
    proxy.reset()
    out = run_cli(penv, "upload", "--json", "--lease", "4")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["selected"] == left
    assert await db.fetchval("SELECT count(*) FROM post_media WHERE archive_url IS NULL") == 0
    # what the dead process had already stored was recorded without another upload
    assert len(object_puts(proxy)) == result["uploaded"] < left + 1
    assert await assert_archive_invariant(db, s3, penv.bucket) == 300


async def test_the_whole_upload_through_pgbouncer_in_transaction_mode(env, db, s3, pgbouncer):
    rng = random.Random(61)
    cases = build_contract_cases(env, rng)
    await insert_cases(db, cases)
    await make_rows(env, db, 400, seed=62)
    pooled = through_pgbouncer(env.database_url, pgbouncer)

    out = run_cli(env, "db", "init", DATABASE_URL=pooled)
    assert out.returncode == 0, out.stderr
    runs = [
        start(env, "--json", "--concurrency", "8", "--batch-size", "20", DATABASE_URL=pooled)
        for _ in range(2)
    ]
    results = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
        results.append(json.loads(stdout))

    rows = await rows_by_id(db)
    for case in cases:
        expected = f"s3://{env.bucket}/{case.key}" if case.key else None
        assert rows[case.row.media_id]["archive_url"] == expected, case.row.media_id
    assert sum(1 for r in rows.values() if r["archive_url"] is None) == 1  # the missing file
    assert sum(r["db_updated"] for r in results) == len(rows) - 1
    out = run_cli(env, "verify", "--verify-s3", "--json", DATABASE_URL=pooled)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["s3"]["ok"] == len(rows) - 1
    assert await assert_archive_invariant(db, s3, env.bucket) == len(rows) - 1

    # The record of problems and verify's repair, through the same pooler.
    data = b"%PDF-1.4 pooled" * 40
    media_file(env.cache_root / "documents", f"{md5(data)}.pdf", data + b"!")
    await insert_rows(
        db,
        [
            SampleRow("z-corrupt", "document", md5(data), "application/pdf", None, None),
            SampleRow("z-invalid", "document", "nope", "application/pdf", None, None),
        ],
    )
    out = run_cli(env, "upload", "--json", DATABASE_URL=pooled)
    assert out.returncode == 1 and json.loads(out.stdout)["corrupt"] == 1
    out = run_cli(env, "upload", "--json", DATABASE_URL=pooled)
    assert out.returncode == 0 and json.loads(out.stdout)["known_problem"] == 2
    out = run_cli(env, "problems", "--json", DATABASE_URL=pooled)
    assert json.loads(out.stdout)["count"] == 2
    gone = next(c for c in cases if c.key)
    s3.delete_object(Bucket=env.bucket, Key=gone.key)
    out = run_cli(env, "verify", "--verify-s3", "--repair", "--json", DATABASE_URL=pooled)
    assert json.loads(out.stdout)["repair"]["cleared"] == 1
    out = run_cli(env, "upload", "--json", DATABASE_URL=pooled)
    assert out.returncode == 0 and json.loads(out.stdout)["uploaded"] == 1


async def test_db_init_is_idempotent(env, db) -> None:
    out = run_cli(env, "db", "init")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("created:") == 3
    out = run_cli(env, "db", "init")
    assert out.returncode == 0 and out.stdout.count("already there:") == 3
    index = await db.fetchval(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'idx_post_media_unarchived'"
    )
    assert "WHERE (archive_url IS NULL)" in index


async def test_without_the_right_to_create_the_claims_table_upload_still_works(env, db, s3):
    await make_rows(env, db, 20)
    role = f"archiver_limited_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE ROLE {role} LOGIN")
    await db.execute(f"GRANT SELECT, UPDATE ON post_media TO {role}")
    await db.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    parts = urlsplit(env.database_url)
    limited = urlunsplit(
        (parts.scheme, f"{role}@{parts.hostname}:{parts.port}", parts.path, "", "")
    )
    try:
        out = run_cli(env, "upload", "--json", DATABASE_URL=limited)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["uploaded"] == 20
    finally:
        await db.execute(f"DROP OWNED BY {role}")
        await db.execute(f"DROP ROLE {role}")
    assert await db.fetchval("SELECT to_regclass('archiver_claims')") is None  # ran unclaimed
    assert await db.fetchval("SELECT count(archive_url) FROM post_media") == 20


async def test_processes_starting_together_race_to_create_the_claims_table(env, db) -> None:
    from archiver.db import Database

    dbs = [await Database.connect(env.database_url) for _ in range(8)]
    try:
        results = await asyncio.gather(*(d.ensure_tables() for d in dbs))
    finally:
        for d in dbs:
            await d.close()
    assert results == [True] * 8
    assert await db.fetchval("SELECT to_regclass('archiver_claims')") is not None
    assert await db.fetchval("SELECT to_regclass('archiver_problems')") is not None
