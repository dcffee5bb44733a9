"""Unattended use (cron, systemd): batches that move on, a quiet run when all is well, a run
log that says how each run ended. Real PostgreSQL and moto, the real command."""

from __future__ import annotations

import json
import re
from datetime import datetime

from archiver.demo.sample import SampleRow, insert_rows
from tests.helpers import make_rows, md5, media_file, run_cli


async def corrupt_and_missing_rows(env, db, corrupt: int, missing: int) -> None:
    """Rows that sort before make_rows' r0000...: `corrupt` whose file does not hash to
    their md5_sum, then `missing` whose file is not there."""
    rows = []
    for i in range(corrupt):
        expected = md5(f"expected {i}".encode())
        media_file(env.cache_root / "images", f"{expected}.jpg", f"not it {i}".encode())
        rows.append(
            SampleRow(f"a{i:03d}", "image", expected, "image/jpeg", None, datetime(2025, 3, 1))
        )
    for i in range(missing):
        gone = md5(f"gone {i}".encode())
        rows.append(SampleRow(f"b{i:03d}", "image", gone, "image/jpeg", None, datetime(2025, 3, 1)))
    await insert_rows(db, rows)


def upload_json(env, *args: str) -> dict:
    out = run_cli(env, "upload", "--json", *args)
    assert out.returncode in (0, 1), out.stderr
    return json.loads(out.stdout)


async def test_upload_limit_counts_the_rows_worked_on_so_batches_move_on(env, db):
    await corrupt_and_missing_rows(env, db, corrupt=6, missing=1)
    await make_rows(env, db, 10)
    first = upload_json(env, "--limit", "7")
    assert (first["corrupt"], first["missing_local"], first["uploaded"]) == (6, 1, 1)
    # 6 rows set aside as known problems, 1 missing file: behind them, 7 rows are archived.
    second = upload_json(env, "--limit", "7")
    assert (second["known_problem"], second["missing_local"], second["uploaded"]) == (6, 1, 7)
    third = upload_json(env, "--limit", "7")
    assert third["uploaded"] == 2
    assert await db.fetchval("SELECT count(*) FROM post_media WHERE archive_url IS NULL") == 7


async def test_prune_local_in_batches_moves_on_past_files_already_deleted(env, db):
    await make_rows(env, db, 8)
    assert upload_json(env)["uploaded"] == 8
    deleted = []
    for _ in range(3):
        out = run_cli(env, "prune-local", "--limit", "3", "--json")
        assert out.returncode == 0, out.stderr
        deleted.append(json.loads(out.stdout)["deleted"])
    assert deleted == [3, 3, 2]
    assert not list((env.cache_root / "images").iterdir())


async def test_a_cron_run_with_a_missing_file_and_nothing_else_wrong_prints_nothing_with_q(env, db):
    await corrupt_and_missing_rows(env, db, corrupt=0, missing=1)
    await make_rows(env, db, 3)
    for _ in range(2):  # the backlog run, then the hourly one with only the missing file
        out = run_cli(env, "upload", "-q")
        assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
    assert await db.fetchval("SELECT count(*) FROM post_media WHERE archive_url IS NULL") == 1
    loud = run_cli(env, "upload", "--no-progress")  # without -q the missing file is named
    assert loud.returncode == 0 and "b000" in loud.stderr
    out = run_cli(env, "prune-local", "-q")
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


async def test_q_still_prints_what_needs_a_person(env, db):
    await corrupt_and_missing_rows(env, db, corrupt=1, missing=1)
    await make_rows(env, db, 2)
    out = run_cli(env, "upload", "-q")
    assert out.returncode == 1
    assert "a000" in out.stderr and "corrupt" in out.stderr and "b000" not in out.stderr
    assert re.search(r"Uploaded:\s+2\n", out.stdout) and re.search(r"Corrupt:\s+1\n", out.stdout)
    clash = run_cli(env, "upload", "-q", "-v")
    assert clash.returncode == 2 and clash.stderr.count("\n") == 1 and "-q" in clash.stderr
