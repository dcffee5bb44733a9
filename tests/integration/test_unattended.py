"""Unattended use (cron, systemd): batches that move on, a quiet run when all is well, a run
log that says how each run ended. Real PostgreSQL and moto, the real command."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

import pytest

from archiver.console import Display, end, run_log
from archiver.demo.sample import SampleRow, insert_rows
from archiver.progress import RowLog
from tests.helpers import (
    make_rows,
    md5,
    media_file,
    run_cli,
    start_cli,
    upload_while_postgres_stops,
    wait_for,
)


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


# -- a run log that says how the run ended ----------------------------------------------------


def log_records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_the_log_file_ends_with_a_start_up_error(env, db):
    text_log, json_log = env.workdir / "up.log", env.workdir / "up.jsonl"
    out = run_cli(env, "upload", "--log-file", str(text_log), ARCHIVER_BUCKET="no-such-bucket-x")
    assert out.returncode == 2
    last = text_log.read_text().splitlines()[-1]
    assert re.match(r"^\S+ error failed, exit code 2: .*no-such-bucket-x", last), last
    out = run_cli(
        env, "upload", "--log-file", str(json_log), "--log-format", "json",
        ARCHIVER_BUCKET="no-such-bucket-x",
    )  # fmt: skip
    end = log_records(json_log)[-1]
    assert (end["event"], end["outcome"], end["exit_code"]) == ("end", "failed", 2)
    assert "no-such-bucket-x" in end["error"] and end["error"] in out.stderr


async def test_the_log_file_ends_with_the_counts_of_a_run_that_completed(env, db):
    await corrupt_and_missing_rows(env, db, corrupt=1, missing=1)
    await make_rows(env, db, 3)
    log = env.workdir / "up.log"
    out = run_cli(env, "upload", "-q", "--log-file", str(log))
    assert out.returncode == 1
    lines = log.read_text().splitlines()
    assert re.match(r"^\S+ info upload: 5/5 files done in", lines[-2]), lines[-2]
    assert re.search(
        r" warning done, exit code 1: selected 5, uploaded 3, missing_local 1, corrupt 1,",
        lines[-1],
    ), lines[-1]


async def test_the_log_file_of_an_interrupted_run_says_so(penv, db, proxy):
    await make_rows(penv, db, 150)
    proxy.delay_s = 0.1
    log = penv.workdir / "up.jsonl"
    run = start_cli(
        penv, "upload", "-q", "--concurrency", "8", "--log-file", str(log), "--log-format", "json"
    )
    wait_for(lambda: proxy.count(lambda r: r.is_object_put) >= 20)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr
    records = log_records(log)
    stopped, end = records[-2], records[-1]
    assert stopped["event"] == "stopped" and 20 <= stopped["done"] < 150
    assert (end["event"], end["outcome"], end["exit_code"]) == ("end", "interrupted", 130)
    assert end["report"]["interrupted"] is True and end["report"]["uploaded"] >= 20


@pytest.mark.skipif(
    bool(os.environ.get("ARCHIVER_TEST_DATABASE_URL")),
    reason="stops the suite's own PostgreSQL cluster",
)
async def test_database_loss_ends_the_log_and_the_report_marks_what_was_not_recorded(
    penv, db, s3, proxy, pg_server
):
    await make_rows(penv, db, 200)
    await db.close()
    proxy.delay_s = 0.05
    log, report = penv.workdir / "up.jsonl", penv.workdir / "report.jsonl"

    display = Display(log_file=log, log_format="json", quiet=True)
    with run_log(display, "upload"), contextlib.closing(RowLog(report)) as rows:
        summary = await upload_while_postgres_stops(penv, proxy, pg_server, on_result=rows.write)
        code = end(summary, as_json=False, text=lambda _s: "", quiet=True)
    assert code == 1 and summary.unrecorded > 0
    last = log_records(log)[-1]
    assert (last["event"], last["outcome"], last["exit_code"]) == ("end", "failed", 1)
    assert "database" in last["error"]
    lines = log_records(report)
    stored = [r for r in lines if r["outcome"] == "uploaded"]
    assert sum(1 for r in stored if r["recorded"] is False) == summary.unrecorded
    assert sum(1 for r in stored if r["recorded"] is True) == summary.db_updated
    assert all(r["recorded"] is None for r in lines if r["outcome"] != "uploaded")


# -- check and upload agree on the database's grants -----------------------------------------


async def test_check_fails_where_upload_would_stop_and_both_name_the_grant(env, db):
    await make_rows(env, db, 3)
    assert run_cli(env, "db", "init").returncode == 0  # the owner made archiver's tables
    role = f"archiver_app_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE ROLE {role} LOGIN")
    await db.execute(f"GRANT SELECT, UPDATE ON post_media TO {role}")
    parts = urlsplit(env.database_url)
    app = urlunsplit((parts.scheme, f"{role}@{parts.hostname}:{parts.port}", parts.path, "", ""))
    grant = f"GRANT SELECT, INSERT, UPDATE, DELETE ON archiver_claims TO {role};"
    try:
        check = run_cli(env, "check", "--json", DATABASE_URL=app)
        assert check.returncode == 1, check.stdout
        database = json.loads(check.stdout)["checks"]["database"]
        assert database["state"] == "fail" and grant in database["detail"]
        upload = run_cli(env, "upload", DATABASE_URL=app)
        assert upload.returncode == 2 and grant in upload.stderr, upload.stderr
        assert upload.stderr.count("\n") <= 2  # the database line (none here) and the error
        problems = run_cli(env, "problems", DATABASE_URL=app)
        grant_problems = f"GRANT SELECT, INSERT, UPDATE, DELETE ON archiver_problems TO {role};"
        assert problems.returncode == 2 and grant_problems in problems.stderr, problems.stderr
        await db.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON archiver_claims TO {role}")
        await db.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON archiver_problems TO {role}")
        assert run_cli(env, "check", DATABASE_URL=app).returncode in (0, 1)
        upload = run_cli(env, "upload", "--json", DATABASE_URL=app)
        assert upload.returncode == 0 and json.loads(upload.stdout)["uploaded"] == 3, upload.stderr
    finally:
        await db.execute(f"DROP OWNED BY {role}")
        await db.execute(f"DROP ROLE {role}")


# -- configuration errors name their source ---------------------------------------------------


def without(environ: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k not in names}


@pytest.mark.parametrize(
    ("dotenv", "args", "says", "not_says"),
    [
        (
            "ARCHIVER_STORAGE_CLASS=FAST\n",
            ["upload"],
            "ARCHIVER_STORAGE_CLASS in ",
            "--storage-class",
        ),
        (
            "ARCHIVER_WATCH_INTERVAL=abc\n",
            ["upload", "--watch"],
            "'abc' is not a valid number",
            "float range",
        ),
        (
            "ARCHIVER_WATCH_INTERVAL=abc\n",
            ["upload", "--watch"],
            "ARCHIVER_WATCH_INTERVAL in ",
            "--interval",
        ),
        ("ARCHIVER_BUCKET=\n", ["upload"], "ARCHIVER_BUCKET is set but empty in ", "social-tui"),
        ("ARCHIVER_CONCURRENCY=0\n", ["upload"], "ARCHIVER_CONCURRENCY in ", "--concurrency"),
        ("AWS_PROFILE=nowhere\n", ["upload"], "'nowhere' (named by AWS_PROFILE in ", "not found"),
        ("AWS_PROFILE=nowhere\n", ["upload"], "aws configure --profile nowhere", "Traceback"),
    ],
)
def test_a_bad_value_in_the_env_file_is_named_with_the_file(env, dotenv, args, says, not_says):
    (env.workdir / ".env").write_text(dotenv)
    out = run_cli(env, *args, environ=without(env.environ(), dotenv.partition("=")[0]))
    assert out.returncode == 2, out.stderr
    error = out.stderr.strip().splitlines()[-1]
    assert says in error and str(env.workdir / ".env") in error and not_says not in error, error


def test_a_database_url_with_a_stray_at_is_named_by_its_variable_and_file(env):
    (env.workdir / ".env").write_text("SUPABASE_DB_URL=postgresql://app:p@ss@127.0.0.1:9/db\n")
    out = run_cli(env, "upload", environ=without(env.environ(), "DATABASE_URL"))
    assert out.returncode == 2
    assert f"SUPABASE_DB_URL in {env.workdir / '.env'}: the user name or password" in out.stderr
    assert "DATABASE_URL:" not in out.stderr.replace("SUPABASE_DB_URL", "")


def test_typos_of_every_key_archiver_reads_are_named_and_far_ones_get_no_guess(env, db):
    (env.workdir / ".env").write_text(
        "SUPABASE_DB_ULR=postgresql://x@h/db\nARCHIVER_CONCURRENCY=4\nSUPABASE_URL=https://x\n"
    )
    out = run_cli(env, "verify", ARCHIVER_BUKET="b", ARCHIVER_ZZYZX_QUUX="1")
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if "unknown key" in line]
    assert any("SUPABASE_DB_ULR (did you mean SUPABASE_DB_URL?)" in w for w in warnings)
    assert any(
        "environment: unknown key ARCHIVER_BUKET (did you mean ARCHIVER_BUCKET?)" in w
        for w in warnings
    )
    assert any(w.endswith("unknown key ARCHIVER_ZZYZX_QUUX; it is ignored") for w in warnings)
    assert not any("CONCURRENCY" in w or "SUPABASE_URL" in w for w in warnings), warnings


def test_an_exported_database_url_over_the_env_files_is_reported_by_v_and_check(env, db):
    (env.workdir / ".env").write_text(
        "SUPABASE_DB_URL=postgresql://app@127.0.0.1:9/app\nARCHIVER_KEY_PREFIX=other\n"
    )
    said = (
        f"SUPABASE_DB_URL in {env.workdir / '.env'} is not used: DATABASE_URL, from the "
        "environment, comes first"
    )
    out = run_cli(env, "verify", "-v", ARCHIVER_KEY_PREFIX="cache")
    assert out.returncode == 0, out.stderr
    assert said in out.stderr
    assert (
        f"ARCHIVER_KEY_PREFIX in {env.workdir / '.env'} is not used: the environment sets it"
        in out.stderr
    )
    check = run_cli(env, "check", "--json", ARCHIVER_KEY_PREFIX="cache")
    configuration = json.loads(check.stdout)["checks"]["configuration"]
    assert configuration["state"] == "warn" and said in configuration["overrides"]


def test_run_from_another_directory_the_error_says_there_is_no_env_file_there(
    env, tmp_path_factory
):
    elsewhere = tmp_path_factory.mktemp("not-the-app")
    environ = without(env.environ(), "ARCHIVER_CACHE_ROOT")
    out = subprocess.run(
        [sys.executable, "-m", "archiver", "upload"], cwd=elsewhere, env=environ,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 2
    assert f"there is no .env in {elsewhere}: run archiver from the app's directory" in out.stderr


# -- setup-bucket is declarative and says so --------------------------------------------------


def setup_json(env, *args: str, bucket: str) -> dict:
    out = run_cli(env, "setup-bucket", "--json", *args, ARCHIVER_BUCKET=bucket)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_setup_bucket_rerun_keeps_the_glacier_days_chosen_before_and_says_what_would_change(
    env, s3
):
    bucket = f"setup-{uuid.uuid4().hex[:12]}"
    first = setup_json(env, "--glacier-days", "30", bucket=bucket)
    assert first["settings"]["lifecycle"]["state"] == "changed"
    again = setup_json(env, bucket=bucket)  # no flags: nothing changes
    assert not again["changed"]
    lifecycle = again["settings"]["lifecycle"]
    assert lifecycle["state"] == "in_place" and "after 30 days" in lifecycle["detail"]
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert [t["Days"] for r in rules for t in r.get("Transitions", [])] == [30]
    would = setup_json(env, "--check-only", "--glacier-days", "45", bucket=bucket)
    detail = would["settings"]["lifecycle"]["detail"]
    assert would["settings"]["lifecycle"]["state"] == "would_change"
    assert "after 45 days" in detail and "it was:" in detail and "30" in detail, detail
    # A safety setting turned off by a flag is turned back on by a run without it: reported
    # as a change, with what it was.
    setup_json(env, "--no-block-public-acls", bucket=bucket)
    back = setup_json(env, bucket=bucket)["settings"]["public_access_block"]
    assert back["state"] == "changed" and "it was: BlockPublicAcls off" in back["detail"]


# -- figures that add up ----------------------------------------------------------------------


async def test_figures_count_what_each_command_does(env, db):
    rows = await make_rows(env, db, 12)
    sizes = [2000 + i for i in range(12)]  # make_rows' file sizes
    dry = upload_json(env, "--dry-run")
    assert dry["would_upload"] == 12 and dry["bytes_would_upload"] == sum(sizes)
    assert upload_json(env)["uploaded"] == 12
    # A second row naming the first one's file: a dry prune counts it once, as a real one.
    await insert_rows(db, [replace(rows[0], media_id="r9999", archive_url=None)])
    await db.execute(
        "UPDATE post_media SET archive_url = (SELECT archive_url FROM post_media WHERE "
        "media_id = 'r0000') WHERE media_id = 'r9999'"
    )
    out = run_cli(env, "prune-local", "--dry-run", "--json")
    pruned = json.loads(out.stdout)
    accounted = pruned["would_delete"] + pruned["missing_local"] + len(pruned["kept"])
    assert pruned["checked"] == 13 == accounted, pruned
    assert pruned["bytes_would_free"] == sum(sizes)
    # verify's HEADs move no data: no MB, no MB/s; its count is of objects.
    log = env.workdir / "verify.log"
    out = run_cli(env, "verify", "--verify-s3", "--no-progress", "--log-file", str(log))
    done = log.read_text().splitlines()[-2]
    assert "13/13 objects done in" in done and "MB" not in done, done
    # restore --all-missing counts the files it restores, not every archived row it looked at.
    for row in rows[1:3]:
        (env.cache_root / "images" / f"{row.md5_sum}.jpg").unlink()
    log = env.workdir / "restore.jsonl"
    out = run_cli(
        env,
        "restore",
        "--all-missing",
        "--no-progress",
        "--log-file",
        str(log),
        "--log-format",
        "json",
    )
    assert out.returncode == 0, out.stderr
    final = next(r for r in log_records(log) if r["event"] == "done")
    assert (final["done"], final["total"], final["bytes"]) == (2, None, sizes[1] + sizes[2])


# -- database outages in plain words ----------------------------------------------------------


@pytest.mark.skipif(
    bool(os.environ.get("ARCHIVER_TEST_DATABASE_URL")),
    reason="restarts the suite's own PostgreSQL cluster",
)
async def test_a_database_blip_is_told_in_plain_words_once_each_way(penv, db, proxy, pg_server):
    await make_rows(penv, db, 150)
    await db.close()
    proxy.delay_s = 0.05
    run = start_cli(penv, "upload", "--concurrency", "8", "--batch-size", "10")
    wait_for(lambda: proxy.count(lambda r: r.is_object_put) >= 30)
    pg_server.stop_server("fast")
    await asyncio.sleep(2)
    pg_server.start()
    _, stderr = run.communicate(timeout=120)
    assert run.returncode in (0, 1), stderr
    lines = stderr.splitlines()
    assert sum("the database is not answering" in line for line in lines) == 1, stderr
    assert sum("the database answers again (after" in line for line in lines) == 1, stderr
    assert "connection floor" not in stderr and "asyncpg" not in stderr, stderr
    assert all(re.match(r"^(\S+Z )?archiver: ", line) for line in lines if line), stderr


# -- signals honoured everywhere --------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "sig"),
    [
        (["upload"], signal.SIGTERM),
        (["upload", "--watch"], signal.SIGINT),
        (["check"], signal.SIGTERM),
        (["setup-bucket"], signal.SIGTERM),
        (["verify", "--verify-s3"], signal.SIGINT),
        (["setup-cdn", "--cloudfront-endpoint-url", "HUNG"], signal.SIGTERM),
    ],
    ids=["upload", "watch", "check", "setup-bucket", "verify", "setup-cdn"],
)
def test_a_signal_during_start_up_ends_the_command_at_once_with_130(env, hung_endpoint, args, sig):
    args = [hung_endpoint if a == "HUNG" else a for a in args]
    s3 = env.endpoint if "setup-cdn" in args else hung_endpoint  # setup-cdn: CloudFront hangs
    run = start_cli(env, *args, AWS_ENDPOINT_URL_S3=s3)
    time.sleep(2.0)  # started, and waiting on the endpoint that never answers
    sent = time.monotonic()
    run.send_signal(sig)
    _, stderr = run.communicate(timeout=30)
    assert run.returncode == 130, stderr
    assert time.monotonic() - sent < 2.0, stderr
    if sig == signal.SIGTERM:
        assert "Ctrl-C" not in stderr and "stopped by SIGTERM" in stderr, stderr
    assert "Traceback" not in stderr and "error:" not in stderr, stderr


# -- the smaller items ------------------------------------------------------------------------


async def test_restore_all_missing_makes_no_second_copy_of_a_file_found_under_another_name(env, db):
    [row] = await make_rows(env, db, 1)
    assert upload_json(env)["uploaded"] == 1
    await db.execute("UPDATE post_media SET local_file_path = 'cache/media/images/renamed.bin'")
    out = run_cli(env, "restore", "--all-missing", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["selected"] == 0
    assert sorted(p.name for p in (env.cache_root / "images").iterdir()) == [f"{row.md5_sum}.jpg"]


async def test_a_hung_database_says_how_long_it_waited(env, hung_endpoint):
    port = hung_endpoint.rsplit(":", 1)[1]
    out = run_cli(
        env, "upload", DATABASE_URL=f"postgresql://app:pw@127.0.0.1:{port}/db", timeout=60
    )
    assert out.returncode == 2
    assert "no answer within 15 s" in out.stderr and "pw" not in out.stderr, out.stderr


def test_an_empty_database_url_beside_the_apps_supabase_db_url_is_no_error(env, db):
    (env.workdir / ".env").write_text(f"DATABASE_URL=\nSUPABASE_DB_URL={env.database_url}\n")
    out = run_cli(env, "verify", "-v", environ=without(env.environ(), "DATABASE_URL"))
    assert out.returncode == 0, out.stderr
    assert f"(from SUPABASE_DB_URL in {env.workdir / '.env'})" in out.stderr
