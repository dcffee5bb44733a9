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
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from archiver.demo.sample import SampleRow, file_bytes, insert_rows
from tests.helpers import md5, media_file

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


# -- archiver check ------------------------------------------------------------------------


# -- .env ----------------------------------------------------------------------------------


# -- progress, logs ------------------------------------------------------------------------


def progress_lines(stderr: str, job: str) -> list[re.Match[str]]:
    pattern = re.compile(
        rf"^({STAMP}) archiver: {re.escape(job)}: (\d+)/(\d+) files "
        r"(?:\((\d+\.\d)%\), |done in [\d.]+ s, )([\d.,]+) MB, ([\d.,]+) MB/s"
    )
    return [m for line in stderr.splitlines() if (m := pattern.match(line))]


# -- restore and prune-local ---------------------------------------------------------------


# -- upload: storage class, dates, bandwidth -----------------------------------------------


# -- the small things ----------------------------------------------------------------------


# -- pure parts ----------------------------------------------------------------------------


def test_bandwidth_rates_parse_as_the_aws_cli_and_rclone_write_them() -> None:
    from archiver.settings import parse_bandwidth

    assert parse_bandwidth("50MB") == 50_000_000
    assert parse_bandwidth("10MiB") == 10 * 1024 * 1024
    assert parse_bandwidth("500KB/s") == 500_000
    assert parse_bandwidth("1.5M") == 1_500_000
    assert parse_bandwidth("2000000") == 2_000_000
    for bad in ("fast", "10Mi B", "-1MB", "100", "5 GBs"):
        with pytest.raises(ValueError):
            parse_bandwidth(bad)


def test_the_throttle_spaces_bodies_at_the_rate_without_a_burst() -> None:
    from archiver.budget import Throttle

    now = [100.0]
    throttle = Throttle(1000, clock=lambda: now[0])
    assert throttle.delay(500) == 0.0  # the first body goes at once
    assert throttle.delay(500) == pytest.approx(0.5)  # the next when the first has had its time
    assert throttle.delay(1000) == pytest.approx(1.0)
    now[0] += 10.0  # idle: no credit saved up for a burst
    assert throttle.delay(2000) == 0.0
    assert throttle.delay(1) == pytest.approx(2.0)
