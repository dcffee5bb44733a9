"""Nothing left behind silently: true liveness of claims, the record of problems, the
per-row report, and verify's repair."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from datetime import datetime

import pytest

from archiver.claims import new_owner, proc_stat
from archiver.demo.sample import SampleRow, insert_rows
from tests.helpers import (
    all_objects,
    assert_archive_invariant,
    both_servers,
    make_rows,
    md5,
    media_file,
    run_cli,
    start_cli,
    wait_for,
)
from tests.proxy import Respond, Rewrite, as_sse_kms

# -- liveness ---------------------------------------------------------------------------------


# -- what a problem record decides ----------------------------------------------------------


# -- a SIGKILLed run, and rows other processes hold -------------------------------------------


async def test_a_rerun_started_right_after_kill_9_archives_every_row(penv, db, s3, proxy):
    await make_rows(penv, db, 150)
    proxy.delay_s = 0.05
    run = start_cli(penv, "upload", "--concurrency", "4", "--batch-size", "10")
    wait_for(lambda: proxy.count(lambda r: r.is_object_put) >= 30)
    run.kill()
    try:
        # Not reaped: the killed process stays a zombie while the re-run starts, as an
        # orphan does until init reaps it. Its claims must not hold the re-run back.
        wait_for(lambda: proc_stat(run.pid)[0] == "Z", timeout=10)
        held = await db.fetchval("SELECT count(*) FROM archiver_claims WHERE expires_at > now()")
        assert held > 0
        proxy.delay_s = 0
        out = run_cli(penv, "upload", "--json")
        assert proc_stat(run.pid)[0] == "Z"  # still unreaped when the re-run ended
    finally:
        run.wait(10)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["claimed_elsewhere"] == 0
    assert await db.fetchval("SELECT count(*) FROM post_media WHERE archive_url IS NULL") == 0
    assert await assert_archive_invariant(db, s3, penv.bucket) == 150


async def test_rows_held_by_a_live_process_are_reported_not_left_silently(env, db, s3):
    await make_rows(env, db, 30)
    assert run_cli(env, "db", "init").returncode == 0
    me = new_owner()  # this test's own process: alive
    await db.execute(
        "INSERT INTO archiver_claims SELECT media_id, $1, now() + interval '5 minutes' "
        "FROM post_media ORDER BY media_id LIMIT 10",
        me,
    )
    out = run_cli(env, "upload", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["uploaded"] == 20 and result["claimed_elsewhere"] == 10
    [holder] = result["claimed_by"]
    assert holder["owner"] == me and holder["rows"] == 10 and holder["running"] is True
    assert datetime.fromisoformat(holder["lease_ends"]).timestamp() > time.time() + 200

    text = run_cli(env, "upload")
    assert text.returncode == 0
    assert "Claimed elsewhere:" in text.stdout and f"10 rows held by {me} (running" in text.stdout

    # The same pid, started at another time: a reused pid, not the owner. Taken over at once.
    host, pid, start, rand = me.split(":")
    await db.execute(
        "UPDATE archiver_claims SET owner = $1", f"{host}:{pid}:{int(start) + 7}:{rand}"
    )
    out = run_cli(env, "upload", "--json")
    result = json.loads(out.stdout)
    assert out.returncode == 0 and result["uploaded"] == 10 and result["claimed_elsewhere"] == 0
    assert await db.fetchval("SELECT count(archive_url) FROM post_media") == 30


# -- the record of problems -------------------------------------------------------------------


async def test_a_corrupt_row_fails_once_then_is_known_until_its_file_changes(env, db, s3):
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
    corrupt_path = media_file(env.cache_root / "images", f"{md5(data)}.png", data[:-1] + b"X")
    other = b"\x89PNG\r\n\x1a\n" + b"other" * 100
    media_file(env.cache_root / "images", f"{md5(other)}.png", other)
    when = datetime(2025, 6, 1)
    await insert_rows(
        db,
        [
            SampleRow("p-corrupt", "image", md5(data), "image/png", None, when),
            SampleRow("p-good", "image", md5(other), "image/png", None, when),
            SampleRow("p-missing", "image", "c" * 32, "image/png", None, when),
        ],
    )
    nothing = run_cli(env, "problems")  # before any run: no table yet, nothing recorded
    assert nothing.returncode == 0 and "No problems recorded" in nothing.stdout

    report = env.workdir / "run1.jsonl"
    out = run_cli(env, "upload", "--json", "--report", str(report))
    assert out.returncode == 1, out.stderr
    first = json.loads(out.stdout)
    assert (first["corrupt"], first["uploaded"], first["missing_local"]) == (1, 1, 1)
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(lines) == first["selected"] == 3  # one line per row handled
    counts = Counter(line["outcome"] for line in lines)
    assert all(first[outcome] == n for outcome, n in counts.items())
    assert sum(line["bytes"] for line in lines) == first["bytes_uploaded"] > 0
    [bad] = [line for line in lines if line["media_id"] == "p-corrupt"]
    assert bad["outcome"] == "corrupt" and "differs from md5_sum" in bad["detail"]
    assert bad["key"] == f"cache/2025/06/{md5(data)}.png" and bad["size"] == len(data)

    listed = run_cli(env, "problems", "--json")
    assert listed.returncode == 0, listed.stderr
    [problem] = json.loads(listed.stdout)["problems"]
    assert problem["media_id"] == "p-corrupt" and problem["kind"] == "corrupt"
    assert problem["attempts"] == 1 and problem["file_size"] == len(data)
    assert "p-corrupt" in run_cli(env, "problems").stdout

    out = run_cli(env, "upload", "--json")
    second = json.loads(out.stdout)
    assert out.returncode == 0, out.stderr  # nothing new: a scheduled run stays quiet
    assert (second["known_problem"], second["corrupt"], second["selected"]) == (1, 0, 1)
    text = run_cli(env, "upload")
    assert text.returncode == 0 and "archiver problems" in text.stdout

    # Repaired as `rsync -a` or `cp -p` repairs a file: the right bytes, with its size and
    # mtime kept. The inode's change time moved, so it is tried again.
    st = corrupt_path.stat()
    await asyncio.sleep(0.02)  # a ctime the filesystem can tell from the first one
    corrupt_path.write_bytes(data)
    os.utime(corrupt_path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (corrupt_path.stat().st_size, corrupt_path.stat().st_mtime_ns) == (
        st.st_size,
        st.st_mtime_ns,
    )
    out = run_cli(env, "upload", "--json")
    third = json.loads(out.stdout)
    assert out.returncode == 0 and third["uploaded"] == 1 and third["known_problem"] == 0
    assert await db.fetchval("SELECT count(*) FROM archiver_problems") == 0  # archived: gone
    assert json.loads(run_cli(env, "problems", "--json").stdout)["count"] == 0
    assert await assert_archive_invariant(db, s3, env.bucket) == 2


async def test_an_invalid_row_is_known_until_its_row_changes_or_problems_are_retried(env, db, s3):
    data = b"%PDF-1.4 " + b"x" * 500
    media_file(env.cache_root / "documents", f"{md5(data)}.pdf", data)
    row = SampleRow("p-invalid", "document", "not-an-md5", "application/pdf", None, None)
    await insert_rows(db, [row])

    out = run_cli(env, "upload", "--json")
    assert out.returncode == 1 and json.loads(out.stdout)["invalid"] == 1
    out = run_cli(env, "upload", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["known_problem"] == 1

    out = run_cli(env, "upload", "--json", "--retry-problems")
    assert out.returncode == 1 and json.loads(out.stdout)["invalid"] == 1
    [problem] = json.loads(run_cli(env, "problems", "--json", "--kind", "invalid").stdout)[
        "problems"
    ]
    assert problem["attempts"] == 2 and problem["first_seen"] < problem["last_seen"]
    assert json.loads(run_cli(env, "problems", "--json", "--kind", "corrupt").stdout)["count"] == 0

    await db.execute("UPDATE post_media SET md5_sum = $1", md5(data))  # the row is corrected
    out = run_cli(env, "upload", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["uploaded"] == 1
    assert await db.fetchval("SELECT count(*) FROM archiver_problems") == 0


async def test_a_failed_row_is_tried_again_by_every_run(penv, db, s3, proxy):
    rows = await make_rows(penv, db, 4)
    key = f"cache/{rows[2].created_at:%Y/%m}/{rows[2].md5_sum}.jpg"
    proxy.rule = lambda r: Respond(500) if r.method == "PUT" and r.path.endswith(key) else None
    out = run_cli(penv, "upload", "--json", AWS_MAX_ATTEMPTS="1")
    assert out.returncode == 1 and json.loads(out.stdout)["failed"] == 1
    [problem] = json.loads(run_cli(penv, "problems", "--json").stdout)["problems"]
    assert (problem["media_id"], problem["kind"]) == ("r0002", "failed")

    out = run_cli(penv, "upload", "--json", AWS_MAX_ATTEMPTS="1")  # still failing: tried
    assert out.returncode == 1 and json.loads(out.stdout)["failed"] == 1
    assert json.loads(run_cli(penv, "problems", "--json").stdout)["problems"][0]["attempts"] == 2

    proxy.rule = lambda r: None
    out = run_cli(penv, "upload", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["uploaded"] == 1
    assert json.loads(run_cli(penv, "problems", "--json").stdout)["count"] == 0
    assert await assert_archive_invariant(db, s3, penv.bucket) == 4


# -- repair, and upload pointed at rows --------------------------------------------------------


@both_servers
async def test_verify_repair_then_upload_restores_what_was_lost(env, db, s3):
    rows = await make_rows(env, db, 6)
    assert run_cli(env, "upload", "--json").returncode == 0
    keys = {r.media_id: f"cache/{r.created_at:%Y/%m}/{r.md5_sum}.jpg" for r in rows}
    s3.delete_object(Bucket=env.bucket, Key=keys["r0000"])  # lost
    s3.put_object(Bucket=env.bucket, Key=keys["r0001"], Body=b"damaged")  # not intact
    s3.delete_object(Bucket=env.bucket, Key=keys["r0002"])  # lost, and its file too
    (env.cache_root / "images" / f"{rows[2].md5_sum}.jpg").unlink()

    out = run_cli(env, "verify", "--verify-s3", "--repair", "--dry-run", "--json")
    assert out.returncode == 1, out.stderr
    repair = json.loads(out.stdout)["repair"]
    assert repair["would_clear"] == 2 and repair["media_ids"] == ["r0000", "r0001"]
    assert repair["reasons"]["r0000"] == "no such object"
    assert "size 7 differs" in repair["reasons"]["r0001"]
    # No local file: clearing it would lose the only pointer to what the bucket holds.
    assert repair["no_local_file"] == ["r0002"]
    assert repair["left_linked"] == {"r0002": "no such object"}
    assert await db.fetchval("SELECT count(archive_url) FROM post_media") == 6  # dry run

    out = run_cli(env, "verify", "--verify-s3", "--repair")
    assert out.returncode == 1, out.stderr
    assert "Repair: cleared archive_url of 2 rows" in out.stdout
    assert "r0001: size 7 differs" in out.stdout
    assert "r0002: no such object" in out.stdout.split("Left linked")[1]
    cleared = await db.fetch("SELECT media_id FROM post_media WHERE archive_url IS NULL")
    assert sorted(r["media_id"] for r in cleared) == ["r0000", "r0001"]

    out = run_cli(env, "upload", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert (result["uploaded"], result["missing_local"]) == (2, 0)
    out = run_cli(env, "verify", "--verify-s3", "--json")
    assert out.returncode == 1, out.stdout
    s3_check = json.loads(out.stdout)["s3"]
    assert (s3_check["ok"], s3_check["missing"]) == (5, 1)


async def test_repair_never_unlinks_an_object_it_cannot_judge(penv, db, s3, proxy):
    """The three ways a row was once unlinked from an intact object: an SSE-KMS object
    (AWS's answer, emulated), the same bytes rewritten by another tool as a multipart upload
    (no x-amz-meta-md5), and a wrong `file_size` column on a row whose file was pruned.
    Each object is intact; none is cleared, and the one that cannot be judged is reported
    so."""
    rows = await make_rows(penv, db, 4)
    assert run_cli(penv, "upload", "--json").returncode == 0
    keys = {r.media_id: f"cache/{r.created_at:%Y/%m}/{r.md5_sum}.jpg" for r in rows}
    # r0000: SSE-KMS on AWS (the proxy answers its HEADs as AWS does); its file is here.
    # r0001: rewritten by another tool as a multipart upload of the same bytes (one part:
    # the smallest a multipart object can be), without archiver's x-amz-meta-md5; file here.
    data = s3.get_object(Bucket=penv.bucket, Key=keys["r0001"])["Body"].read()
    started = s3.create_multipart_upload(Bucket=penv.bucket, Key=keys["r0001"])
    part = s3.upload_part(
        Bucket=penv.bucket,
        Key=keys["r0001"],
        UploadId=started["UploadId"],
        PartNumber=1,
        Body=data,
    )
    s3.complete_multipart_upload(
        Bucket=penv.bucket,
        Key=keys["r0001"],
        UploadId=started["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    # r0002: pruned, and the app's file_size column is wrong.
    (penv.cache_root / "images" / f"{rows[2].md5_sum}.jpg").unlink()
    await db.execute("UPDATE post_media SET file_size = file_size + 7 WHERE media_id = 'r0002'")
    kms_key = keys["r0000"]
    proxy.rule = lambda r: Rewrite(as_sse_kms) if r.path.endswith(kms_key) else None

    out = run_cli(penv, "verify", "--verify-s3", "--repair", "--json")

    report = json.loads(out.stdout)
    assert report["repair"]["cleared"] == 0 and report["repair"]["media_ids"] == []
    assert report["s3"]["ok"] == 2 and report["s3"]["unverifiable"] == 2
    assert report["s3"]["mismatched"] == 0
    kinds = {p["media_id"]: (p["kind"], p["detail"]) for p in report["problems"]}
    assert kinds["r0000"][0] == "unverifiable" and "aws:kms" in kinds["r0000"][1]
    assert kinds["r0001"][0] == "unverifiable" and "multipart" in kinds["r0001"][1]
    assert "r0002" not in kinds
    assert await db.fetchval("SELECT count(archive_url) FROM post_media") == 4
    text = run_cli(penv, "verify", "--verify-s3", "--repair").stdout
    assert "Repair: nothing to clear" in text
    assert [line.split() for line in text.splitlines() if "Unverifiable:" in line] == [
        ["Unverifiable:", "2"]
    ]
    restore = json.loads(run_cli(penv, "restore", "--all-missing", "--json").stdout)
    assert restore["restored"] == 1  # r0002 comes back: its row still points at it


async def test_upload_pointed_at_rows(env, db, s3):
    await make_rows(env, db, 5)
    out = run_cli(env, "upload", "--json", "--media-id", "r0002")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["uploaded"] == 1
    archived = await db.fetch("SELECT media_id FROM post_media WHERE archive_url IS NOT NULL")
    assert [r["media_id"] for r in archived] == ["r0002"]
    assert len(all_objects(s3, env.bucket)) == 1

    out = run_cli(env, "upload", "--json", "--media-id", "r0002", "--media-id", "nope")
    assert out.returncode == 1  # a named row that does not exist
    result = json.loads(out.stdout)
    kinds = {p["media_id"]: p["kind"] for p in result["not_selected"]}
    assert kinds == {"r0002": "already_archived", "nope": "no_such_row"}
    text = run_cli(env, "upload", "--media-id", "nope")
    assert "no_such_row nope" in text.stdout

    out = run_cli(env, "upload", "--json", "--media-id", "r0002", "--force")
    assert out.returncode == 0 and json.loads(out.stdout)["uploaded"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--repair"], "--repair needs --verify-s3"),
        (["--dry-run"], "--dry-run applies to --repair only"),
    ],
)
def test_verify_repair_flags_are_checked(offline_env, args, message) -> None:
    env = offline_env
    out = run_cli(env, "verify", *args)
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert line.startswith(f"archiver: error: {message}")


async def test_the_report_file_must_be_writable(env, db) -> None:
    out = run_cli(env, "upload", "--report", str(env.workdir / "no" / "such" / "dir.jsonl"))
    assert out.returncode == 2
    assert out.stderr.startswith("archiver: error: cannot write the report")
    assert len(out.stderr.strip().splitlines()) == 1
