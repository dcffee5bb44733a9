"""Real S3 servers: the README's workflow end to end on moto and on Ceph RGW, and what a
start-up check does against an endpoint that never answers. The real commands, the real
services, the fault proxy between them counting requests."""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections import Counter
from datetime import datetime
from typing import Any

import pytest

from archiver.demo.sample import SampleRow, file_bytes, insert_rows
from archiver.settings import MIB
from tests.helpers import both_servers, md5, media_file, run_cli, start_cli
from tests.proxy import Request

LARGE = ("--multipart-threshold", "5", "--part-size", "5")


def sends_data(r: Request) -> bool:
    return r.is_object_put or r.is_part_put


def ok_json(env: Any, *args: str, code: int = 0) -> dict[str, Any]:
    out = run_cli(env, *args, "--json")
    assert out.returncode == code, (args, out.stdout, out.stderr)
    data: dict[str, Any] = json.loads(out.stdout)
    return data


@both_servers
async def test_the_readme_workflow_on_each_server(s3_server, penv, db, s3, proxy) -> None:
    rng = random.Random(1401)
    rows, files = [], {}
    for i in range(8):
        data = file_bytes(".jpg", 2000 + i, rng)
        files[f"s{i}"] = media_file(penv.cache_root / "images", f"{md5(data)}.jpg", data)
        rows.append(
            SampleRow(f"s{i}", "image", md5(data), "image/jpeg", None, datetime(2025, 4, 1))
        )
    big = file_bytes(".mp4", 11 * MIB, rng)  # three parts of 5 MiB
    files["big"] = media_file(penv.cache_root / "videos", f"{md5(big)}.mp4", big)
    rows.append(SampleRow("big", "video", md5(big), "video/mp4", None, datetime(2025, 4, 1)))
    await insert_rows(db, rows)
    content = {media_id: path.read_bytes() for media_id, path in files.items()}

    # setup-bucket, twice: the second run changes nothing. (BlockPublicAcls stays off:
    # RGW 16 refuses every upload with it on; test_bucket.py shows that report.)
    flags = ("setup-bucket", "--no-block-public-acls")
    first = ok_json(penv, *flags)
    assert first["not_applied"] == [] and first["settings"]["write_probe"]["state"] == "ok"
    assert ok_json(penv, *flags)["changed"] is False

    # upload, with a multipart file (RGW completes it without an ETag: a HEAD decides)
    summary = ok_json(penv, "upload", *LARGE)
    assert summary["uploaded"] == 9 and summary["failed"] == 0
    stored = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=penv.bucket)["Contents"]}
    assert len(stored) == 9 and len(big) in stored.values()

    # a re-run with some archive_url cleared records them without sending a byte
    await db.execute("UPDATE post_media SET archive_url = NULL WHERE media_id IN ('s1','s5','big')")
    proxy.reset()
    again = ok_json(penv, "upload", *LARGE)
    assert again["skipped_existing"] == 3 and again["uploaded"] == 0
    assert proxy.count(sends_data) == 0

    # versioning on, then a re-run of everything after three new files. They come first
    # (rows go by media_id), so at --concurrency 1 two misses would switch archiver to
    # conditional PUTs, which RGW 16 takes as new versions of stored keys on a versioned
    # bucket: archiver HEADs before every PUT there, sends only the new files, and every
    # key keeps one version.
    versioned = ok_json(penv, *flags, "--enable-versioning")
    assert versioned["settings"]["versioning"]["state"] == "changed"
    for i in range(3):
        data = file_bytes(".jpg", 3000 + i, rng)
        files[f"a{i}"] = media_file(penv.cache_root / "images", f"{md5(data)}.jpg", data)
        content[f"a{i}"] = data
        row = SampleRow(f"a{i}", "image", md5(data), "image/jpeg", None, datetime(2025, 4, 1))
        await insert_rows(db, [row])
    await db.execute("UPDATE post_media SET archive_url = NULL")
    proxy.reset()
    rerun = ok_json(penv, "upload", "--concurrency", "1", *LARGE)
    assert rerun["skipped_existing"] == 9 and rerun["uploaded"] == 3
    assert proxy.count(sends_data) == 3
    assert proxy.count(lambda r: sends_data(r) and "if-none-match" in r.headers) == 0
    versions = s3.list_object_versions(Bucket=penv.bucket).get("Versions", [])
    assert Counter(Counter(v["Key"] for v in versions).values()) == {1: 12}

    # verify, prune-local, restore: every file comes back byte for byte
    report = ok_json(penv, "verify", "--verify-s3", "--check-local")
    assert report["s3"]["ok"] == 12 and report["problems"] == []
    pruned = ok_json(penv, "prune-local")
    assert pruned["deleted"] == 12 and pruned["kept"] == []
    assert not any(path.exists() for path in files.values())
    restored = ok_json(penv, "restore", "--all-missing")
    assert restored["restored"] == 12 and restored["failures"] == []
    assert {m: files[m].read_bytes() for m in files} == content


# -- a hung endpoint ------------------------------------------------------------------------


COMMANDS = {
    "setup-bucket": ("setup-bucket",),
    "upload": ("upload",),
    "verify": ("verify", "--verify-s3"),
    "prune-local": ("prune-local",),
    "restore": ("restore", "--all-missing"),
}


def test_every_command_fails_a_hung_endpoint_within_seconds(env, hung_endpoint) -> None:
    started = time.monotonic()
    runs: dict[str, subprocess.Popen[str]] = {
        name: start_cli(env, *args, AWS_ENDPOINT_URL_S3=hung_endpoint)
        for name, args in COMMANDS.items()
    }
    results = {name: (*run.communicate(timeout=60), time.monotonic() - started)
               for name, run in runs.items()}  # fmt: skip
    for name, (stdout, stderr, elapsed) in results.items():
        assert runs[name].returncode == 2, (name, stdout, stderr)
        assert elapsed < 15, (name, elapsed)  # all five ran at once, on two cores
        assert stderr.strip().splitlines() == [
            "archiver: error: S3 did not answer within 8 s "
            "(check AWS_ENDPOINT_URL_S3 / --endpoint-url and the network)"
        ], name


@pytest.mark.parametrize("s3_server", ["rgw"], indirect=True)
async def test_streamed_checksums_refused_over_https_stop_the_run_with_one_line(
    s3_server, env, db
) -> None:
    # RGW 16 answers botocore's aws-chunked bodies (when_supported checksums) with 411 over
    # https: every PUT would fail the same way, so the run stops and says what to change.
    data = file_bytes(".jpg", 5000, random.Random(1402))
    media_file(env.cache_root / "images", f"{md5(data)}.jpg", data)
    row = SampleRow("c0", "image", md5(data), "image/jpeg", None, datetime(2025, 4, 1))
    await insert_rows(db, [row])
    https = {"AWS_ENDPOINT_URL_S3": s3_server.tls_url, "AWS_CA_BUNDLE": s3_server.ca_file}
    out = run_cli(env, "upload", AWS_REQUEST_CHECKSUM_CALCULATION="when_supported", **https)
    assert out.returncode == 2, out.stderr
    [line] = out.stderr.strip().splitlines()
    assert "411" in line or "MissingContentLength" in line
    assert "leave AWS_REQUEST_CHECKSUM_CALCULATION at when_required" in line
    assert await db.fetchval("SELECT archive_url FROM post_media") is None
    out = run_cli(env, "upload", "--json", **https)  # the default works over https
    assert out.returncode == 0 and json.loads(out.stdout)["uploaded"] == 1, out.stderr
