"""`archiver verify` against the real services."""

from __future__ import annotations

import json
import random
from datetime import datetime

from archiver.commands.verify import VerifyOptions, format_report, run_verify
from archiver.demo.sample import SampleRow, file_bytes, insert_rows
from archiver.models import Outcome
from tests.helpers import (
    both_servers,
    build_contract_cases,
    insert_cases,
    md5,
    media_file,
    run_cli,
    upload,
)


async def test_statistics_equal_the_sql_truth(env, db) -> None:
    rng = random.Random(21)
    rows = []
    for i in range(40):
        kind = ["image", "video", "document"][i % 3]
        archived = f"s3://{env.bucket}/cache/x{i}" if i % 4 == 0 else None
        rows.append(
            SampleRow(
                f"s{i:02d}", kind, md5(rng.randbytes(8)), None, None, None, archive_url=archived
            )
        )
    await insert_rows(db, rows)
    report = await run_verify(env.settings(), VerifyOptions(), cwd=env.workdir)
    data = report.as_json()
    truth = await db.fetch(
        "SELECT media_type, count(*) AS t, count(archive_url) AS a "
        "FROM post_media GROUP BY media_type"
    )
    assert data["total"] == 40 and data["archived"] == 10 and data["not_archived"] == 30
    assert data["by_type"] == {
        r["media_type"]: {"total": r["t"], "archived": r["a"], "not_archived": r["t"] - r["a"]}
        for r in truth
    }
    assert data["s3"] is None and data["local"] is None
    assert report.exit_code == 0
    text = format_report(report)
    assert "Total Media:       40" in text and "Archived:          10 (25.0%)" in text
    assert "  Video:" in text


@both_servers
async def test_verify_s3_reports_deleted_and_overwritten_objects(env, db, s3) -> None:
    cases = build_contract_cases(env, random.Random(22))
    await insert_cases(db, cases)
    summary = await upload(env)
    recorded = summary.counts[Outcome.UPLOADED] + summary.counts[Outcome.SKIPPED_EXISTING]

    clean = await run_verify(env.settings(), VerifyOptions(verify_s3=True), cwd=env.workdir)
    assert clean.s3 is not None
    assert (clean.s3.checked, clean.s3.ok) == (recorded, recorded)
    assert clean.exit_code == 0

    deleted, overwritten = cases[0], cases[1]
    s3.delete_object(Bucket=env.bucket, Key=deleted.key)
    s3.put_object(Bucket=env.bucket, Key=overwritten.key, Body=b"other bytes entirely")

    out = run_cli(env, "verify", "--verify-s3", "--json", "--concurrency", "3")
    assert out.returncode == 1, out.stderr
    data = json.loads(out.stdout)
    assert data["s3"] == {
        "checked": recorded,
        "ok": recorded - 2,
        "missing": 1,
        "mismatched": 1,
        "errors": 0,
        "invalid": 0,
        "unverifiable": 0,
    }
    kinds = {p["media_id"]: (p["kind"], p["url"]) for p in data["problems"]}
    assert kinds == {
        deleted.row.media_id: ("missing", f"s3://{env.bucket}/{deleted.key}"),
        overwritten.row.media_id: ("mismatched", f"s3://{env.bucket}/{overwritten.key}"),
    }
    out = run_cli(env, "verify", "--verify-s3")
    assert out.returncode == 1
    assert f"s3://{env.bucket}/{deleted.key}" in out.stdout
    assert f"s3://{env.bucket}/{overwritten.key}" in out.stdout

    limited = await run_verify(
        env.settings(), VerifyOptions(verify_s3=True, limit=3), cwd=env.workdir
    )
    assert limited.s3 is not None and limited.s3.checked == 3


@both_servers
async def test_check_local_lists_rows_whose_file_is_gone(env, db, s3) -> None:
    rng = random.Random(23)
    rows = []
    paths = []
    for i in range(6):
        data = file_bytes(".jpg", 500 + i, rng)
        paths.append(media_file(env.cache_root / "images", f"{md5(data)}.jpg", data))
        rows.append(
            SampleRow(f"l{i}", "image", md5(data), "image/jpeg", None, datetime(2025, 1, 1))
        )
    await insert_rows(db, rows)
    await upload(env, limit=3)
    paths[1].unlink()  # archived row, file gone
    paths[4].unlink()  # unarchived row, file gone

    out = run_cli(env, "verify", "--check-local", "--json")
    assert out.returncode == 1, out.stderr
    data = json.loads(out.stdout)
    assert data["local"] == {"checked": 6, "missing": 2, "invalid": 0}
    assert data["s3"] is None
    assert {p["media_id"] for p in data["problems"]} == {"l1", "l4"}
    text = run_cli(env, "verify", "--check-local").stdout
    assert "missing_local" in text and "l1" in text and "l4" in text
