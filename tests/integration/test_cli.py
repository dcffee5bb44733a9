"""The real command (`python -m archiver`) against the rig: output, exit codes, config."""

from __future__ import annotations

import json
import random
import subprocess
from datetime import datetime

import pytest

from archiver.demo.sample import SampleRow, file_bytes, insert_rows
from tests.helpers import (
    build_bad_cases,
    build_contract_cases,
    insert_cases,
    md5,
    media_file,
    run_cli,
)

JSON_KEYS = {
    "selected",
    "uploaded",
    "skipped_existing",
    "missing_local",
    "invalid",
    "corrupt",
    "failed",
    "db_updated",
    "bytes_uploaded",
    "elapsed_s",
    "files_per_s",
    "dry_run",
}


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_unreachable_database_exits_2_without_the_password(offline_env) -> None:
    out = run_cli(offline_env, "upload", DATABASE_URL="postgresql://me:Sup3rS3cret@127.0.0.1:1/db")
    assert out.returncode == 2
    line = one_line_error(out.stderr)
    assert "Sup3rS3cret" not in out.stderr + out.stdout
    assert "database" in line


@pytest.mark.parametrize(
    "dsn",
    [
        "postgres.abcd:S3cretPass@127.0.0.1:6543/postgres",  # Supabase's, without its scheme
        "postgresql//u:S3cretPass@127.0.0.1/db",
        "postgresql:/u:S3cretPass@127.0.0.1/db",
    ],
)
def test_a_database_string_of_no_known_shape_prints_no_password(offline_env, dsn: str) -> None:
    env = offline_env
    for variable in ("DATABASE_URL", "SUPABASE_DB_URL"):
        environ = env.environ(**{variable: dsn})
        if variable != "DATABASE_URL":
            del environ["DATABASE_URL"]
        for args in (["upload"], ["verify", "-v"], ["restore", "--all-missing"]):
            out = run_cli(env, *args, environ=environ)
            assert out.returncode == 2, (args, out.stderr)
            line = out.stderr.splitlines()[-1] if "-v" in args else one_line_error(out.stderr)
            assert line.startswith(f"archiver: error: {variable} is not a database URL"), line
            assert "S3cret" not in out.stderr + out.stdout
        out = run_cli(env, "check", "--json", environ=environ)
        assert out.returncode == 1 and "S3cret" not in out.stderr + out.stdout
        database = json.loads(out.stdout)["checks"]["database"]
        assert database["state"] == "fail" and variable in database["detail"]
    out = run_cli(env, "upload", "--database-url", dsn)
    assert out.returncode == 2 and "S3cret" not in out.stderr + out.stdout


def test_missing_bucket_exits_2(env, db) -> None:
    out = run_cli(env, "upload", "--bucket", "no-such-bucket-anywhere")
    assert out.returncode == 2
    assert "does not exist" in one_line_error(out.stderr)


async def test_json_is_one_object_whose_counts_agree_with_the_database(env, db, s3) -> None:
    rng = random.Random(11)
    cases = build_contract_cases(env, rng) + build_bad_cases(env, rng)
    await insert_cases(db, cases)

    out = run_cli(env, "upload", "--json", "--concurrency", "4")

    assert out.returncode == 1, out.stderr  # bad rows make the run exit 1
    result = json.loads(out.stdout)  # exactly one JSON document on stdout
    assert set(result) >= JSON_KEYS
    counted = sum(
        result[k]
        for k in ("uploaded", "skipped_existing", "missing_local", "invalid", "corrupt", "failed")
    )
    assert result["selected"] == counted == len(cases)
    archived = await db.fetchval("SELECT count(*) FROM post_media WHERE archive_url IS NOT NULL")
    assert result["db_updated"] == archived == result["uploaded"] + result["skipped_existing"]
    assert result["dry_run"] is False
    assert "warning:" in out.stderr  # bad rows are reported


async def test_summary_table_and_verbose_lines(env, db, s3) -> None:
    cases = build_contract_cases(env, random.Random(12))
    await insert_cases(db, cases)
    out = run_cli(env, "upload", "-v")
    assert out.returncode == 0, out.stderr
    assert "Upload Summary" in out.stdout
    first = cases[0]
    assert f"✓ {first.row.media_id}: {first.key.rsplit('/', 1)[1]} → {first.key}" in out.stdout
    assert "? m06-missing: missing_local" in out.stdout


async def test_dry_run_lists_twenty_rows_then_the_rest_as_a_count(env, db, s3) -> None:
    rng = random.Random(13)
    rows = []
    for i in range(25):
        data = file_bytes(".png", 100 + i, rng)
        media_file(env.cache_root / "images", f"{md5(data)}.png", data)
        rows.append(
            SampleRow(f"d{i:02d}", "image", md5(data), "image/png", None, datetime(2025, 5, 5))
        )
    await insert_rows(db, rows)
    out = run_cli(env, "upload", "--dry-run", "--no-progress")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("→ cache/2025/05/") == 20
    assert "... and 5 more" in out.stdout
    assert await db.fetchval("SELECT count(archive_url) FROM post_media") == 0
    assert s3.list_objects_v2(Bucket=env.bucket)["KeyCount"] == 0


def run_without(env, drop: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(env, *args, environ={k: v for k, v in env.environ().items() if k != drop})


async def test_precedence_flag_over_env_over_dotenv_over_default(env, db, s3) -> None:
    await insert_cases(db, build_contract_cases(env, random.Random(14)))
    from_env = "env-" + env.bucket
    from_flag = "flag-" + env.bucket
    for name in (from_env, from_flag):
        s3.create_bucket(Bucket=name)
    # DATABASE_URL comes only from .env; the bucket from .env, the environment and a flag.
    (env.workdir / ".env").write_text(
        f"DATABASE_URL={env.database_url}\nARCHIVER_BUCKET=dotenv-bucket-unused\n"
    )
    environ = {k: v for k, v in env.environ().items() if k != "DATABASE_URL"}
    environ["ARCHIVER_BUCKET"] = from_env

    def run(*args: str) -> dict[str, object]:
        out = run_cli(env, "upload", "--json", *args, environ=environ)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    assert run("--limit", "1")["uploaded"] == 1
    assert s3.list_objects_v2(Bucket=from_env)["KeyCount"] == 1  # env beat .env
    assert run("--limit", "1", "--bucket", from_flag)["uploaded"] == 1
    assert s3.list_objects_v2(Bucket=from_flag)["KeyCount"] == 1  # the flag beat env
    assert s3.list_objects_v2(Bucket=env.bucket)["KeyCount"] == 0


async def test_env_file_option_before_or_after_the_command(env, db, s3) -> None:
    await insert_cases(db, build_contract_cases(env, random.Random(15))[:2])
    envfile = env.workdir / "prod.env"
    envfile.write_text(f"DATABASE_URL={env.database_url}\n")
    for args in (
        ["upload", "--limit", "1", "--env-file", str(envfile)],
        ["--env-file", str(envfile), "upload", "--limit", "1"],
    ):
        out = run_without(env, "DATABASE_URL", *args, "--json")
        assert out.returncode == 0, (args, out.stderr)
        assert json.loads(out.stdout)["uploaded"] == 1
    out = run_cli(env, "upload", "--env-file", str(env.workdir / "nope.env"))
    assert out.returncode == 2
    assert "nope.env" in one_line_error(out.stderr)


async def test_dead_s3_endpoint_at_start_exits_2_with_one_line(env, db) -> None:
    from archiver.demo.localpg import free_port

    await insert_cases(db, build_contract_cases(env, random.Random(16))[:2])
    import time

    started = time.monotonic()
    out = run_cli(env, "upload", AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{free_port()}")
    elapsed = time.monotonic() - started
    assert out.returncode == 2, out.stderr
    assert "not reachable" in one_line_error(out.stderr)
    assert elapsed < 10, elapsed  # a short preflight, not every retry of the run
    assert await db.fetchval("SELECT count(archive_url) FROM post_media") == 0


async def test_bad_credentials_exit_2(env, db, s3) -> None:
    await insert_cases(db, build_contract_cases(env, random.Random(17))[:1])
    out = run_cli(env, "upload", AWS_PROFILE="no-such-profile")
    assert out.returncode == 2
    assert "no-such-profile" in one_line_error(out.stderr)
