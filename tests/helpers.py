"""Helpers shared by the integration tests: arranging caches and rows, running archiver."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from archiver.commands.upload import run_upload
from archiver.demo.sample import SampleRow, file_bytes, insert_rows
from archiver.models import MediaRow, Summary
from archiver.policies import RetryPolicy
from archiver.progress import Reporter
from archiver.settings import UploadOptions

REPO = Path(__file__).resolve().parent.parent

# Runs a test (or, as `pytestmark`, a module) once on moto and once on Ceph RGW.
both_servers = pytest.mark.parametrize("s3_server", ["moto", "rgw"], indirect=True)


@dataclass
class Case:
    """A row of a scenario, with what the README says must become of it."""

    row: SampleRow
    data: bytes | None  # the file's bytes, when it has one
    key: str | None  # the object key it must get (None: it must not be uploaded)
    content_type: str | None = None


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def media_file(directory: Path, name: str, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    return path


def quiet_reporter(*, dry_run: bool = False) -> Reporter:
    return Reporter(
        mode="off", verbose=False, dry_run=dry_run, out=io.StringIO(), err=io.StringIO()
    )


async def upload(env: Any, **options: Any) -> Summary:
    """Run `archiver upload` in-process against the rig, from the test's work dir."""
    opts = UploadOptions(**options)
    return await run_upload(
        env.settings(), opts, quiet_reporter(dry_run=opts.dry_run), cwd=env.workdir
    )


def start_cli(env: Any, *args: str, **extra_env: str) -> subprocess.Popen[str]:
    """Start the real command in the test's work dir (see `run_cli`), its output piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "archiver", *args],
        cwd=env.workdir,
        env=env.environ(**extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(
    env: Any,
    *args: str,
    timeout: float = 120,
    environ: dict[str, str] | None = None,
    **extra_env: str,
) -> subprocess.CompletedProcess[str]:
    """Run the real command (`python -m archiver`) in the test's work dir, with the rig's
    environment plus `extra_env` (or exactly `environ` when given)."""
    return subprocess.run(
        [sys.executable, "-m", "archiver", *args],
        cwd=env.workdir,
        env=environ if environ is not None else env.environ(**extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def rows_by_id(conn: asyncpg.Connection) -> dict[str, asyncpg.Record]:
    return {r["media_id"]: r for r in await conn.fetch("SELECT * FROM post_media")}


def all_objects(s3: Any, bucket: str) -> dict[str, int]:
    """key -> size of every object in the bucket."""
    out: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = obj["Size"]
    return out


async def assert_archive_invariant(
    conn: asyncpg.Connection, s3: Any, bucket: str, cache_bytes: dict[str, bytes] | None = None
) -> int:
    """Every row with an archive_url has its object, whose bytes hash to md5_sum."""
    checked = 0
    for r in await conn.fetch("SELECT * FROM post_media WHERE archive_url IS NOT NULL"):
        url = r["archive_url"]
        assert url.startswith(f"s3://{bucket}/"), url
        key = url[len(f"s3://{bucket}/") :]
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert md5(body) == r["md5_sum"].lower(), f"{r['media_id']}: object bytes differ"
        checked += 1
    return checked


def build_contract_cases(env: Any, rng: random.Random) -> list[Case]:
    """One row of each case the README's upload rules name, with its expected key."""
    root: Path = env.cache_root
    images, videos, documents = root / "images", root / "videos", root / "documents"
    dec = datetime(2025, 12, 3, 10, 0, 0)
    cases: list[Case] = []

    def rel(p: Path) -> str:
        return os.path.relpath(p, env.workdir)

    # normal row
    data = file_bytes(".jpg", 5000, rng)
    p = media_file(images, f"{md5(data)}.jpg", data)
    cases.append(
        Case(
            SampleRow("m01-normal", "image", md5(data), "image/jpeg", rel(p), dec),
            data,
            f"cache/2025/12/{md5(data)}.jpg",
            "image/jpeg",
        )
    )
    # local_file_path names {md5}.bin, the file was renamed to {md5}.jpg
    data = file_bytes(".jpg", 7000, rng)
    media_file(images, f"{md5(data)}.jpg", data)
    cases.append(
        Case(
            SampleRow(
                "m02-renamed",
                "image",
                md5(data),
                "image/jpeg",
                rel(images / f"{md5(data)}.bin"),
                dec,
            ),
            data,
            f"cache/2025/12/{md5(data)}.jpg",
            "image/jpeg",
        )
    )
    # NULL local_file_path, found by md5 + mime type; md5_sum in upper case
    data = file_bytes(".png", 3000, rng)
    media_file(images, f"{md5(data)}.png", data)
    cases.append(
        Case(
            SampleRow(
                "m03-by-mime",
                "image",
                md5(data).upper(),
                "image/png",
                None,
                datetime(2025, 11, 30, 23, 59, 59),
            ),
            data,
            f"cache/2025/11/{md5(data)}.png",
            "image/png",
        )
    )
    # unknown mime, found by {md5}.*
    data = file_bytes(".gif", 2000, rng)
    media_file(images, f"{md5(data)}.gif", data)
    cases.append(
        Case(
            SampleRow("m04-glob", "image", md5(data), None, None, dec),
            data,
            f"cache/2025/12/{md5(data)}.gif",
            "image/gif",
        )
    )
    # a .bin file whose bytes are PNG
    data = file_bytes(".png", 4000, rng)
    p = media_file(images, f"{md5(data)}.bin", data)
    cases.append(
        Case(
            SampleRow("m05-sniffed", "image", md5(data), "application/octet-stream", rel(p), dec),
            data,
            f"cache/2025/12/{md5(data)}.png",
            "image/png",
        )
    )
    # missing file
    data = file_bytes(".mp4", 1000, rng)
    cases.append(
        Case(SampleRow("m06-missing", "video", md5(data), "video/mp4", None, dec), None, None)
    )
    # two rows with the same md5 in the same month: one object, both recorded
    data = file_bytes(".mp4", 60_000, rng)
    p = media_file(videos, f"{md5(data)}.mp4", data)
    key = f"cache/2025/12/{md5(data)}.mp4"
    cases.append(
        Case(
            SampleRow("m07-dup-a", "video", md5(data), "video/mp4", rel(p), dec),
            data,
            key,
            "video/mp4",
        )
    )
    cases.append(
        Case(
            SampleRow("m08-dup-b", "video", md5(data), "video/mp4", None, datetime(2025, 12, 28)),
            data,
            key,
            "video/mp4",
        )
    )
    # NULL created_at: the file's modification time (UTC) gives the partition
    data = file_bytes(".pdf", 1500, rng)
    p = media_file(documents, f"{md5(data)}.pdf", data)
    mtime = datetime(2024, 2, 10, 12, 0, 0).timestamp()
    os.utime(p, (mtime, mtime))
    cases.append(
        Case(
            SampleRow("m09-null-date", "document", md5(data), "application/pdf", rel(p), None),
            data,
            f"cache/2024/02/{md5(data)}.pdf",
            "application/pdf",
        )
    )
    # a zero-byte file
    data = b""
    p = media_file(documents, f"{md5(data)}.pdf", data)
    cases.append(
        Case(
            SampleRow("m10-empty", "document", md5(data), "application/pdf", rel(p), dec),
            data,
            f"cache/2025/12/{md5(data)}.pdf",
            "application/pdf",
        )
    )
    return cases


def build_bad_cases(env: Any, rng: random.Random) -> list[Case]:
    """Rows that must be reported and never uploaded."""
    root: Path = env.cache_root
    images = root / "images"
    dec = datetime(2025, 12, 3)
    outside_dir = env.workdir / "outside"
    cases: list[Case] = []
    data = file_bytes(".jpg", 1000, rng)
    media_file(images, f"{md5(data)}.jpg", data)
    cases.append(
        Case(SampleRow("b01-bad-md5", "image", "not-an-md5", "image/jpeg", None, dec), data, None)
    )
    data = file_bytes(".jpg", 1000, rng)
    p = media_file(outside_dir, f"{md5(data)}.jpg", data)
    cases.append(
        Case(SampleRow("b02-outside", "image", md5(data), "image/jpeg", str(p), dec), data, None)
    )
    data = file_bytes(".jpg", 1000, rng)
    target = media_file(outside_dir, f"secret-{md5(data)}.jpg", data)
    (images / f"{md5(data)}.jpg").symlink_to(target)
    cases.append(
        Case(SampleRow("b03-symlink-out", "image", md5(data), "image/jpeg", None, dec), data, None)
    )
    data = file_bytes(".jpg", 1000, rng)
    wrong = md5(data + b"x")
    media_file(images, f"{wrong}.jpg", data)
    cases.append(
        Case(SampleRow("b04-corrupt", "image", wrong, "image/jpeg", None, dec), data, None)
    )
    cases.append(
        Case(
            SampleRow("b05-traversal", "../../outside", md5(data), "image/jpeg", None, dec),
            data,
            None,
        )
    )
    return cases


async def insert_cases(conn: asyncpg.Connection, cases: list[Case]) -> None:
    await insert_rows(conn, [c.row for c in cases])


async def make_rows(env, db, n: int, *, size: int = 2000, seed: int = 50) -> list[SampleRow]:
    """`n` rows, each with its own small JPEG-like file in the cache (ids r0000...)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        data = file_bytes(".jpg", size + i, rng)
        media_file(env.cache_root / "images", f"{md5(data)}.jpg", data)
        rows.append(
            SampleRow(
                f"r{i:04d}", "image", md5(data), "image/jpeg", None, datetime(2025, 1 + i % 12, 1)
            )
        )
    await insert_rows(db, rows)
    return rows


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def archived_row(md5_hex: str, key: str, **columns: Any) -> MediaRow:
    """An archived row of an image created in March 2025 whose archive_url is
    `s3://bucket/{key}`, with `columns` changed."""
    values: dict[str, Any] = {
        "media_id": "m1",
        "media_type": "image",
        "local_file_path": None,
        "md5_sum": md5_hex,
        "mime_type": "image/jpeg",
        "created_at": datetime(2025, 3, 4, 5, 6, 7),
        "archive_url": f"s3://bucket/{key}",
    }
    values.update(columns)
    return MediaRow(**values)


@contextlib.contextmanager
def moto_over_tls(folder: Path, *, own_ca: bool = False) -> Iterator[tuple[str, str]]:
    """moto over HTTPS with a certificate of `self_signed_certificate`: (URL, CA file)."""
    import threading

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    from tests.rgw import self_signed_certificate

    cert_file, key_file = self_signed_certificate(folder, own_ca=own_ca)
    server = make_server(
        "127.0.0.1",
        0,
        DomainDispatcherApplication(create_backend_app),
        threaded=True,
        ssl_context=(str(cert_file), str(key_file)),
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_port}", str(cert_file)
    finally:
        server.shutdown()
        thread.join()


async def upload_while_postgres_stops(
    penv: Any, proxy: Any, pg_server: Any, *, on_result: Any = None
) -> Summary:
    """`archiver upload` in-process (8 workers, batches of 10, database retries cut short)
    while the suite's PostgreSQL is stopped after 30 object PUTs, and started again after."""

    async def stop_postgres_mid_run() -> None:
        await asyncio.to_thread(wait_for, lambda: proxy.count(lambda r: r.is_object_put) >= 30)
        await asyncio.to_thread(pg_server.stop_server, "fast")

    stopper = asyncio.create_task(stop_postgres_mid_run())
    try:
        summary = await run_upload(
            penv.settings(),
            UploadOptions(concurrency=8, batch_size=10),
            quiet_reporter(),
            cwd=penv.workdir,
            db_retry=RetryPolicy(0.1, 0.5, 2.0),
            on_result=on_result,
        )
        await stopper
    finally:
        await asyncio.to_thread(pg_server.start)
    return summary
