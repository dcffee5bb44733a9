"""Daily use, through the real command: installed as a tool and run from the app's
directory, `archiver check`, `.env` typos, one progress display for every long job (the
non-terminal lines and the run log), restore to `local_file_path`, prune-local under a
symlinked cache, `--storage-class`, `--since/--until`, `--max-bandwidth`, `demo --keep`,
and the small things of the daily-use issue."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from archiver.demo.sample import SampleRow, file_bytes, insert_rows
from archiver.settings import MIB
from tests.helpers import REPO, both_servers, md5, media_file, run_cli

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
APP_VARS = (
    "DATABASE_URL",
    "SUPABASE_DB_URL",
    "ARCHIVER_BUCKET",
    "ARCHIVER_CACHE_ROOT",
    "ARCHIVER_KEY_PREFIX",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)


async def jpeg_rows(
    env: Any, db: Any, n: int, *, size: int = 2000, seed: int = 7, relative_to: Path | None = None
) -> list[SampleRow]:
    """`n` rows with a JPEG-like file each; `local_file_path` relative to `relative_to`
    (the app's directory) when given."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        data = file_bytes(".jpg", size, rng)
        path = media_file(env.cache_root / "images", f"{md5(data)}.jpg", data)
        local = os.path.relpath(path, relative_to) if relative_to else None  # noqa: ASYNC240
        rows.append(
            SampleRow(f"d{i:04d}", "image", md5(data), "image/jpeg", local, datetime(2025, 6, 1))
        )
    await insert_rows(db, rows)
    return rows


def app_environ(env: Any) -> tuple[dict[str, str], str]:
    """An environment without archiver's or the rig's variables, and the `.env` text that
    gives them instead (as an app's own `.env` would)."""
    clean = {k: v for k, v in os.environ.items() if k not in APP_VARS}
    dotenv = "\n".join(
        [
            f"DATABASE_URL={env.database_url}",
            f"ARCHIVER_BUCKET={env.bucket}",
            f"AWS_ENDPOINT_URL_S3={env.endpoint}",
            "AWS_ACCESS_KEY_ID=testing",
            "AWS_SECRET_ACCESS_KEY=testing",
            "SUPABASE_URL=https://example.invalid",  # the app's own: no warning
        ]
    )
    return clean, dotenv + "\n"


def run(cmd: list[str], cwd: Path, environ: dict[str, str], timeout: float = 120) -> Any:
    return subprocess.run(
        cmd, cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout, check=False
    )


async def check_and_upload_from_the_app_dir(env: Any, db: Any, archiver: list[str]) -> None:
    """The app's directory holds `cache/media` and `.env`; `archiver check` then `archiver
    upload` run there, with nothing else configured."""
    rows = await jpeg_rows(env, db, 5, relative_to=env.workdir)
    environ, dotenv = app_environ(env)
    (env.workdir / ".env").write_text(dotenv)
    out = run([*archiver, "check"], env.workdir, environ)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Ready: `archiver upload` can run." in out.stdout
    assert f"the files of {len(rows)} of {len(rows)} sampled rows found" in out.stdout
    assert "warning" not in out.stderr  # SUPABASE_URL is the app's, not a typo
    out = run([*archiver, "upload", "--json"], env.workdir, environ)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["uploaded"] == len(rows)
    assert await db.fetchval("SELECT count(archive_url) FROM post_media") == len(rows)


async def test_the_apps_own_env_with_only_supabase_db_url_is_enough_for_verify(env, db) -> None:
    """The app's `.env` names its database SUPABASE_DB_URL (beside SUPABASE_URL and
    SUPABASE_API_KEY) and nothing of archiver's: verify reads it, and -v and check say
    which variable was used, without its password."""
    await jpeg_rows(env, db, 2)
    environ, _ = app_environ(env)
    environ.update(ARCHIVER_BUCKET=env.bucket, AWS_ENDPOINT_URL_S3=env.endpoint)
    environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    dsn = env.database_url.replace("postgres@", "postgres:s3cret-pw@", 1)  # trust auth
    dotenv = env.workdir / ".env"
    dotenv.write_text(
        f"SUPABASE_URL=https://example.invalid\nSUPABASE_API_KEY=anon\nSUPABASE_DB_URL={dsn}\n"
    )
    cmd = [sys.executable, "-m", "archiver"]
    out = run([*cmd, "verify", "--json", "-v", "--no-progress"], env.workdir, environ)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["total"] == 2, out.stdout
    assert f"(from SUPABASE_DB_URL in {dotenv.resolve()})" in out.stderr
    assert "s3cret-pw" not in out.stdout + out.stderr and "warning" not in out.stderr
    out = run([*cmd, "check", "--json"], env.workdir, environ)
    configuration = json.loads(out.stdout)["checks"]["configuration"]
    assert configuration["database_from"] == f"SUPABASE_DB_URL in {dotenv.resolve()}"
    # DATABASE_URL, where both are set, wins; from the environment it is named as such.
    out = run([*cmd, "verify", "-v", "--no-progress"], env.workdir, dict(environ, DATABASE_URL=dsn))
    assert out.returncode == 0 and "(from DATABASE_URL)" in out.stderr, out.stderr


async def test_the_console_script_runs_from_the_apps_directory_with_its_env(env, db) -> None:
    script = Path(sys.executable).parent / "archiver"
    assert script.is_file(), "the project's console script"
    await check_and_upload_from_the_app_dir(env, db, [str(script)])


async def test_uv_tool_install_puts_archiver_on_path_and_it_works_from_the_app_dir(
    env, db, tmp_path_factory
) -> None:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    tools = tmp_path_factory.mktemp("uv-tools")
    environ = dict(os.environ, UV_TOOL_DIR=str(tools / "tools"), UV_TOOL_BIN_DIR=str(tools / "bin"))
    out = run([uv, "tool", "install", "--quiet", str(REPO)], tools, environ, timeout=600)
    if out.returncode != 0 and re.search(r"(?i)network|connect|dns|resolve host", out.stderr):
        pytest.skip(f"uv tool install needs the package index: {out.stderr.strip()[-200:]}")
    assert out.returncode == 0, out.stderr
    installed = tools / "bin" / "archiver"
    assert installed.is_file()
    version = run([str(installed), "--version"], tools, environ)
    assert version.returncode == 0 and "archiver, version" in version.stdout
    await check_and_upload_from_the_app_dir(env, db, [str(installed)])
    # Without the dev group, the demo says what it needs instead of a traceback.
    demo = run([str(installed), "demo", "--files", "1"], tools, environ)
    assert demo.returncode == 2
    assert demo.stderr.startswith("archiver: error: the demo needs moto"), demo.stderr


# -- archiver check ------------------------------------------------------------------------


@both_servers
async def test_check_passes_on_a_ready_set_up(env, db, s3) -> None:
    await jpeg_rows(env, db, 3)
    out = run_cli(env, "check", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True
    checks = report["checks"]
    names = ("database", "credentials", "bucket", "permissions", "cache")
    assert [checks[n]["state"] for n in names] == ["ok"] * 5
    # The owner's credentials may do everything; the probe left nothing behind.
    assert checks["permissions"]["actions"] == {
        "s3:ListBucket": True,
        "s3:PutObject": True,
        "s3:AbortMultipartUpload": True,
        "s3:GetObject": True,
    }
    assert all(checks["permissions"]["commands"].values())
    assert checks["database"]["rows"] == 3 and checks["database"]["not_archived"] == 3
    assert checks["cache"]["found"] == 3 and checks["cache"]["sampled"] == 3
    assert checks["credentials"]["access_key"].endswith("ting")  # the key id, masked
    assert "testing" not in out.stdout  # neither the key id whole, nor the secret
    assert checks["bucket"]["region"]
    text = run_cli(env, "check")
    assert text.returncode == 0
    assert re.search(r"^ok +bucket +s3://\S+ exists \(region [^)]+\)$", text.stdout, re.M)
    assert re.search(
        r"^ok +permissions +s3:PutObject granted; .*can run: upload, verify, prune-local, "
        "restore, url",
        text.stdout,
        re.M,
    )
    assert s3.list_objects_v2(Bucket=env.bucket).get("KeyCount", 0) == 0
    assert s3.list_multipart_uploads(Bucket=env.bucket).get("Uploads", []) == []


async def test_check_names_each_thing_that_is_not_ready(env, db, s3) -> None:
    await jpeg_rows(env, db, 2)
    # No such bucket, no cache root: two verdicts fail, the others still run.
    out = run_cli(
        env,
        "check",
        "--json",
        ARCHIVER_BUCKET="no-such-bucket-archiver",
        ARCHIVER_CACHE_ROOT="elsewhere/media",
    )
    assert out.returncode == 1, out.stderr
    checks = json.loads(out.stdout)["checks"]
    assert checks["bucket"]["state"] == "fail" and "does not exist" in checks["bucket"]["detail"]
    assert checks["cache"]["state"] == "fail" and "not a directory" in checks["cache"]["detail"]
    assert checks["database"]["state"] == "ok" and checks["credentials"]["state"] == "ok"
    # Where an STS answers (AWS, or AWS_ENDPOINT_URL_STS; moto has one), the identity.
    out = run_cli(env, "check", "--json", AWS_ENDPOINT_URL_STS=env.endpoint)
    credentials = json.loads(out.stdout)["checks"]["credentials"]
    assert credentials["identity"] == "arn:aws:sts::123456789012:user/moto"
    assert "identity arn:aws:sts::123456789012:user/moto" in credentials["detail"]
    # No credentials: named as such (not "S3 is not reachable").
    environ = env.environ()
    environ.pop("AWS_ACCESS_KEY_ID")
    environ.pop("AWS_SECRET_ACCESS_KEY")
    out = run_cli(env, "check", environ=environ)
    assert out.returncode == 1
    assert re.search(
        r"^FAIL +credentials +no AWS credentials found: set AWS_PROFILE", out.stdout, re.M
    )
    assert "Not ready: credentials failed." in out.stdout
    up = run_cli(env, "upload", environ=environ)
    assert up.returncode == 2
    assert (
        up.stderr.strip().splitlines()[-1].startswith("archiver: error: no AWS credentials found")
    )
    # No database; a cache whose rows' files are not there.
    for f in (env.cache_root / "images").iterdir():
        f.unlink()
    out = run_cli(env, "check", environ=without(env.environ(), "DATABASE_URL"))
    assert out.returncode == 1
    assert re.search(r"^FAIL +database +no database configured", out.stdout, re.M)
    out = run_cli(env, "check", "--json")
    cache = json.loads(out.stdout)["checks"]["cache"]
    assert out.returncode == 1 and cache["state"] == "fail" and cache["missing"] == 2
    # A bad setting cannot be checked at all: exit 2, one line.
    out = run_cli(env, "check", "--bucket", "Bad_Name")
    assert (
        out.returncode == 2 and out.stderr.count("\n") == 1 and "invalid bucket name" in out.stderr
    )


def without(environ: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k not in names}


# -- .env ----------------------------------------------------------------------------------


def test_env_typos_are_named_with_the_closest_known_key(offline_env) -> None:
    env = offline_env
    (env.workdir / ".env").write_text(
        "ARCHIVER_BUCKT=my-prod-archive\nDATABSE_URL=postgresql://u@h/db\n"
        "AWS_SECRET_KEY=x\nSUPABASE_URL=https://example.invalid\nAPP_NAME=social\n"
    )
    environ = {k: v for k, v in env.environ().items() if k not in ("DATABASE_URL",)}
    out = run_cli(env, "upload", "--dry-run", environ=environ)
    lines = [line for line in out.stderr.splitlines() if "unknown key" in line]
    assert lines == [
        "archiver: warning: .env: unknown key ARCHIVER_BUCKT (did you mean ARCHIVER_BUCKET?); "
        "it is ignored",
        "archiver: warning: .env: unknown key DATABSE_URL (did you mean DATABASE_URL?); "
        "it is ignored",
        "archiver: warning: .env: unknown key AWS_SECRET_KEY (did you mean "
        "AWS_SECRET_ACCESS_KEY?); it is ignored",
    ]
    assert out.returncode == 2 and "no database configured" in out.stderr


# -- progress, logs ------------------------------------------------------------------------


def progress_lines(stderr: str, job: str) -> list[re.Match[str]]:
    # done[/total] files|objects|rows [(pct%)] [done in s][, MB, MB/s]: groups 2-6
    pattern = re.compile(
        rf"^({STAMP}) archiver: {re.escape(job)}: (\d+)(?:/(\d+))? (?:file|object|row)s?"
        r"(?: \((\d+\.\d)%\))?(?: done in [\d.]+ s)?(?:, ([\d.,]+) MB, ([\d.,]+) MB/s)?"
    )
    return [m for line in stderr.splitlines() if (m := pattern.match(line))]


@both_servers
async def test_every_long_job_shows_timestamped_progress_with_correct_final_figures(
    env, db
) -> None:
    rows = await jpeg_rows(env, db, 12, size=50_000)
    total_mb = f"{12 * 50_000 / 1e6:.1f}"
    fast = ("--progress-interval", "0")
    out = run_cli(env, "upload", *fast)
    assert out.returncode == 0, out.stderr
    lines = progress_lines(out.stderr, "upload")
    assert len(lines) == len(rows) + 1  # a line per file at interval 0, then the final one
    assert lines[0].group(2) == "1" and lines[0].group(3) == "12"
    assert "done in" in lines[-1].group(0) and lines[-1].group(5) == total_mb  # not stale
    assert "Data:" in out.stdout and f"{total_mb} MB" in out.stdout

    out = run_cli(env, "verify", "--verify-s3", *fast)
    assert out.returncode == 0, out.stderr
    lines = progress_lines(out.stderr, "verify --verify-s3")
    assert len(lines) == len(rows) + 1 and lines[-1].group(2, 3) == ("12", "12")
    assert "12/12 objects done in" in lines[-1].string
    assert all(m.group(5) is None for m in lines)  # a HEAD moves no data: no MB, no MB/s
    out = run_cli(env, "verify", "--verify-s3", "--check-local", *fast)
    assert progress_lines(out.stderr, "verify --verify-s3")[-1].group(2) == "12"
    local = progress_lines(out.stderr, "verify --check-local")
    assert len(local) == len(rows) + 1 and local[-1].group(2, 3) == ("12", "12")

    out = run_cli(env, "prune-local", *fast)
    assert out.returncode == 0, out.stderr
    lines = progress_lines(out.stderr, "prune-local")
    assert lines[-1].group(2) == "12" and lines[-1].group(5) == total_mb

    out = run_cli(env, "restore", "--all-missing", *fast)
    assert out.returncode == 0, out.stderr
    lines = progress_lines(out.stderr, "restore")
    assert lines[-1].group(2) == "12" and lines[-1].group(5) == total_mb
    # --all-missing: how many are missing is not known ahead: no made-up total, %, or ETA
    assert all(m.group(3) is None and "ETA" not in m.string for m in lines)

    out = run_cli(env, "verify", "--verify-s3", "--no-progress")
    assert progress_lines(out.stderr, "verify --verify-s3") == []


async def test_log_file_keeps_a_timestamped_record_of_the_run_as_text_or_json(env, db) -> None:
    await jpeg_rows(env, db, 6)
    media_file(env.cache_root / "images", f"{'0' * 32}.jpg", b"not what md5_sum says")
    await insert_rows(
        db, [SampleRow("bad", "image", "f" * 32, "image/jpeg", None, datetime(2025, 1, 1))]
    )
    log = env.workdir / "run.jsonl"
    out = run_cli(
        env, "upload", "--json", "--no-progress", "--progress-interval", "0",
        "--log-file", str(log), "--log-format", "json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr  # a missing file is a warning
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["ts"]) for r in records)
    events = [r["event"] for r in records]
    assert events[0] == "start" and events[-2:] == ["done", "end"]
    assert events.count("progress") == 7  # --progress-interval 0: one per row
    row = next(r for r in records if r["event"] == "row")
    assert row["media_id"] == "bad" and row["outcome"] == "missing_local"
    assert records[-1]["report"] == json.loads(out.stdout)  # the same summary
    assert records[-2]["done"] == 7 and records[-2]["bytes"] == 6 * 2000
    assert "progress" not in out.stderr  # --no-progress: the terminal stays quiet

    text_log = env.workdir / "verify.log"
    out = run_cli(env, "verify", "--verify-s3", "--no-progress", "--log-file", str(text_log))
    assert out.returncode == 0
    lines = text_log.read_text().splitlines()
    assert re.match(rf"^{STAMP[:-1]}\.\d{{3}}Z info archiver 0\.1\.0 verify$", lines[0])
    assert re.match(r"^\S+ info verify --verify-s3: 6/6 objects done in", lines[-2])
    assert re.match(r"^\S+ info done, exit code 0: \w+ \d", lines[-1]), lines[-1]
    out = run_cli(env, "verify", "--log-file", str(env.workdir / "no" / "dir.log"))
    assert out.returncode == 2 and out.stderr.startswith("archiver: error: cannot write the log")


# -- restore and prune-local ---------------------------------------------------------------


async def test_restore_puts_the_file_at_its_local_file_path(env, db) -> None:
    rng = random.Random(3)
    png = file_bytes(".png", 3000, rng)  # a PNG behind a .bin name: the key says .png
    named = media_file(env.cache_root / "images", f"{md5(png)}.bf.bin", png)
    jpg = file_bytes(".jpg", 2000, rng)  # local_file_path outside the cache root
    outside = media_file(env.workdir / "elsewhere", f"{md5(jpg)}.jpg", jpg)
    canonical_jpg = media_file(env.cache_root / "images", f"{md5(jpg)}.jpg", jpg)
    gif = file_bytes(".gif", 1000, rng)  # its local_file_path will hold another file
    held = media_file(env.cache_root / "images", f"{md5(gif)}.gif", gif)
    rel = lambda p: os.path.relpath(p, env.workdir)  # noqa: E731
    await insert_rows(
        db,
        [
            SampleRow("bin", "image", md5(png), "image/png", rel(named), datetime(2025, 3, 1)),
            SampleRow("out", "image", md5(jpg), "image/jpeg", rel(outside), datetime(2025, 3, 1)),
            SampleRow("gif", "image", md5(gif), "image/gif", rel(held), datetime(2025, 3, 1)),
        ],
    )
    outside.unlink()
    out = run_cli(env, "upload", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["uploaded"] == 3
    named.unlink()
    canonical_jpg.unlink()
    held.write_bytes(b"someone else's file")
    named_rows = ("--media-id", "bin", "--media-id", "out", "--media-id", "gif")
    out = run_cli(env, "restore", *named_rows, "--json", "-v")
    report = json.loads(out.stdout)
    assert named.read_bytes() == png  # where the app looks, under its own name
    assert not (env.cache_root / "images" / f"{md5(png)}.png").exists()
    assert canonical_jpg.read_bytes() == jpg  # outside the root: the canonical path
    assert not outside.exists()
    assert report["restored"] == 2
    assert held.read_bytes() == b"someone else's file"  # never overwritten
    assert out.returncode == 1 and report["failures"][0]["media_id"] == "gif"
    assert "a different file is at" in report["failures"][0]["detail"]
    assert f"restored bin: {named}" in out.stderr  # -v: a line per row (stderr under --json)


async def test_prune_local_under_a_symlinked_cache_judges_links_below_the_root(env, db) -> None:
    # The app's cache is a symlink: workdir/cache -> workdir/real/cache.
    real = env.workdir / "real"
    real.mkdir()
    shutil.move(str(env.workdir / "cache"), str(real / "cache"))
    (env.workdir / "cache").symlink_to(real / "cache")
    rows = await jpeg_rows(env, db, 3, relative_to=env.workdir)
    assert all(r.local_file_path.startswith("cache/media/images/") for r in rows)
    # One file below the root is itself a symlink: kept, and said why.
    rng = random.Random(9)
    data = file_bytes(".jpg", 1500, rng)
    target = media_file(env.cache_root / "shared", f"{md5(data)}.jpg", data)
    (env.cache_root / "images" / f"{md5(data)}.jpg").symlink_to(target)
    await insert_rows(
        db,
        [SampleRow("linked", "image", md5(data), "image/jpeg", None, datetime(2025, 6, 1))],
    )
    environ = env.environ(ARCHIVER_CACHE_ROOT="cache/media")
    out = run_cli(env, "upload", "--json", environ=environ)
    assert out.returncode == 0 and json.loads(out.stdout)["uploaded"] == 4, out.stderr
    out = run_cli(env, "prune-local", "--json", environ=environ)
    report = json.loads(out.stdout)
    assert out.returncode == 0, out.stderr
    assert report["deleted"] == 3 and report["kept_unverified"] == 0
    assert report["kept_symlink"] == 1 and [k["media_id"] for k in report["kept"]] == ["linked"]
    assert "reached through a symlink below the cache root" in report["kept"][0]["detail"]
    assert all(not (env.workdir / r.local_file_path).exists() for r in rows)
    assert target.exists()
    text = run_cli(env, "prune-local", environ=environ)
    assert "1 reached through a symlink" in text.stdout


# -- upload: storage class, dates, bandwidth -----------------------------------------------


async def test_storage_class_applies_to_single_and_multipart_objects(env, db, s3) -> None:
    rng = random.Random(4)
    small = file_bytes(".jpg", 3000, rng)
    big = file_bytes(".mp4", 6 * MIB, rng)
    media_file(env.cache_root / "images", f"{md5(small)}.jpg", small)
    media_file(env.cache_root / "videos", f"{md5(big)}.mp4", big)
    when = datetime(2025, 4, 1)
    await insert_rows(
        db,
        [
            SampleRow("s", "image", md5(small), "image/jpeg", None, when),
            SampleRow("b", "video", md5(big), "video/mp4", None, when),
        ],
    )
    out = run_cli(
        env, "upload", "--json", "--storage-class", "standard_ia", "--multipart-threshold", "5",
        "--part-size", "5",
    )  # fmt: skip
    assert out.returncode == 0 and json.loads(out.stdout)["uploaded"] == 2, out.stderr
    for key in (f"cache/2025/04/{md5(small)}.jpg", f"cache/2025/04/{md5(big)}.mp4"):
        assert s3.head_object(Bucket=env.bucket, Key=key)["StorageClass"] == "STANDARD_IA"
    bad = run_cli(env, "upload", "--storage-class", "GLACIER")
    assert bad.returncode == 2 and "--storage-class" in bad.stderr


@pytest.mark.parametrize("s3_server", ["rgw"], indirect=True)
async def test_a_storage_class_the_server_does_not_offer_stops_the_run(env, db, s3) -> None:
    """Ceph RGW 16 offers STANDARD only (without other classes in its placement)."""
    rows = await jpeg_rows(env, db, 3)
    out = run_cli(env, "upload", "--json", "--storage-class", "STANDARD_IA")
    assert out.returncode == 2
    assert "archiver: error: S3 refused storage class STANDARD_IA (InvalidArgument)" in out.stderr
    assert await db.fetchval("SELECT count(archive_url) FROM post_media") == 0
    out = run_cli(env, "upload", "--json", "--storage-class", "STANDARD")
    assert out.returncode == 0 and json.loads(out.stdout)["uploaded"] == len(rows), out.stderr
    key = rows[0].md5_sum
    assert s3.head_object(Bucket=env.bucket, Key=f"cache/2025/06/{key}.jpg")["ContentLength"]


async def test_since_and_until_select_by_created_at_and_leave_out_null_dates(env, db) -> None:
    rng = random.Random(5)
    dates = [datetime(2025, 1, 15), datetime(2025, 2, 1), datetime(2025, 2, 28, 23), None]
    dates.append(datetime(2025, 3, 1))
    rows = []
    for i, when in enumerate(dates):
        data = file_bytes(".jpg", 1000 + i, rng)
        media_file(env.cache_root / "images", f"{md5(data)}.jpg", data)
        rows.append(SampleRow(f"t{i}", "image", md5(data), "image/jpeg", None, when))
    await insert_rows(db, rows)
    out = run_cli(env, "upload", "--json", "--since", "2025-02-01", "--until", "2025-03-01")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["uploaded"] == 2
    archived = {r["media_id"] for r in await db.fetch(
        "SELECT media_id FROM post_media WHERE archive_url IS NOT NULL"
    )}  # fmt: skip
    assert archived == {"t1", "t2"}  # February only; NULL created_at is left out
    out = run_cli(env, "upload", "--json", "--since", "2025-03-01T00:00:00")
    assert json.loads(out.stdout)["uploaded"] == 1
    out = run_cli(env, "upload", "--since", "2025-03-01", "--until", "2025-02-01")
    assert out.returncode == 2 and "--since must be before --until" in out.stderr


async def test_max_bandwidth_holds_the_run_within_20_percent_of_the_limit(env, db) -> None:
    rows = await jpeg_rows(env, db, 40, size=150_000)
    limit = 1_000_000  # 6 MB at 1 MB/s: about 6 s
    out = run_cli(env, "upload", "--json", "--max-bandwidth", "1MB", "--concurrency", "8")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["uploaded"] == len(rows) and summary["bytes_uploaded"] == 6_000_000
    rate = summary["bytes_uploaded"] / summary["elapsed_s"]
    assert 0.8 * limit <= rate <= 1.2 * limit, f"{rate:,.0f} B/s against a limit of {limit:,}"
    out = run_cli(env, "upload", "--max-bandwidth", "fast")
    assert out.returncode == 2 and "is not a rate" in out.stderr


# -- the small things ----------------------------------------------------------------------


def test_each_command_has_only_the_flags_it_uses_each_naming_its_env_var(offline_env) -> None:
    env = offline_env

    def flags(*command: str) -> str:
        out = run_cli(env, *command, "--help")
        assert out.returncode == 0, out.stderr
        return out.stdout

    db_init = flags("db", "init")
    assert "--database-url" in db_init and "--bucket" not in db_init
    assert "--cache-root" not in db_init
    problems = flags("problems")
    assert "--bucket" not in problems and "--endpoint-url" not in problems
    setup = flags("setup-bucket")
    assert "--database-url" not in setup and "--cache-root" not in setup
    upload = " ".join(flags("upload").split())
    for env_var in (
        "AWS_REGION, then AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL",
    ):
        assert env_var in upload
    for command in ("upload", "verify", "prune-local", "restore"):
        text = flags(command)
        for flag in ("--no-progress", "-v, --verbose", "--log-file", "--json", "--concurrency"):
            assert flag in text, (command, flag)
        assert "[default: 32;" in " ".join(text.split()), command


def test_usage_mistakes_get_one_clear_line(offline_env) -> None:
    env = offline_env
    for args in (
        ("upload", "--limit", "0"),
        ("verify", "--limit", "0"),
        ("prune-local", "--limit", "0"),
    ):
        out = run_cli(env, *args)
        assert out.returncode == 2 and "--limit" in out.stderr and "x>=1" in out.stderr, args
    out = run_cli(env, "restore", "--media-id", "x", "--all-missing")
    assert out.returncode == 2
    assert out.stderr == "archiver: error: restore takes --media-id ID or --all-missing, not both\n"


async def test_verify_lists_problems_with_the_kind_apart_from_the_id(env, db) -> None:
    await insert_rows(
        db, [SampleRow("med-000004", "image", "a" * 32, "image/jpeg", None, datetime(2025, 1, 1))]
    )
    out = run_cli(env, "verify", "--check-local")
    assert out.returncode == 1
    assert re.search(r"^  missing_local med-000004: no local file", out.stdout, re.M), out.stdout


def test_shell_completion_scripts_come_from_the_command(offline_env) -> None:
    env = offline_env
    out = run_cli(env, environ=dict(env.environ(), _ARCHIVER_COMPLETE="bash_source"))
    assert out.returncode == 0 and "_ARCHIVER_COMPLETE=bash_complete" in out.stdout
    out = run_cli(
        env,
        environ=dict(
            env.environ(),
            _ARCHIVER_COMPLETE="bash_complete",
            COMP_WORDS="archiver pru",
            COMP_CWORD="1",
        ),
    )
    assert "prune-local" in out.stdout


# -- pure parts ----------------------------------------------------------------------------


def test_demo_keep_leaves_the_services_running_for_the_real_commands(tmp_path) -> None:
    environ = {k: v for k, v in os.environ.items() if k not in APP_VARS}
    demo = subprocess.Popen(
        [sys.executable, "-m", "archiver", "demo", "--files", "12", "--no-progress", "--keep"],
        cwd=tmp_path,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    workdir = None
    try:
        assert demo.stdout is not None
        seen = []
        deadline = time.monotonic() + 120
        for line in demo.stdout:
            seen.append(line)
            if m := re.match(r"^  cd (\S+)$", line):
                workdir = Path(m.group(1))
            if line.startswith("Press Ctrl-C"):
                break
            assert time.monotonic() < deadline, "".join(seen)
        assert workdir is not None, "".join(seen)
        dotenv = (workdir / ".env").read_text()
        assert "DATABASE_URL=postgresql://" in dotenv
        port = int(re.search(r"127\.0\.0\.1:(\d+)/", dotenv).group(1))  # type: ignore[union-attr]
        check = run([sys.executable, "-m", "archiver", "check"], workdir, environ)
        assert check.returncode == 0, check.stdout + check.stderr
        verify = run(
            [sys.executable, "-m", "archiver", "verify", "--verify-s3", "--json"], workdir, environ
        )
        assert json.loads(verify.stdout)["s3"]["ok"] > 0
        demo.send_signal(signal.SIGINT)
        rest = demo.communicate(timeout=60)[0]
        assert demo.returncode == 0, rest
        assert "Stopping the demo's servers." in rest
        size = r"[\d.,]+ (?:bytes|[KMG]B)"
        kept = re.search(rf"Kept the demo's media cache \({size}\) in (\S+): `rm -rf (\S+)`", rest)
        assert kept and any(Path(kept.group(1).rstrip(":")).rglob("*.jpg"))  # the cache stays
        assert Path(kept.group(1)).is_relative_to(kept.group(2))  # what removes it, said
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # PostgreSQL is stopped
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        if workdir is not None:
            shutil.rmtree(workdir.parent, ignore_errors=True)
