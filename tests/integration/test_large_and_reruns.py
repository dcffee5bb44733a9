"""Multipart uploads, skipping what is stored, one upload per key (issue: large files,
idempotent re-runs, de-duplication). Requests are counted through the test proxy."""

from __future__ import annotations

import random
from datetime import datetime

import pytest

from archiver.checksums import composite_crc32, crc32_b64
from archiver.commands.upload import run_upload
from archiver.demo.sample import SampleRow, file_bytes, insert_rows
from archiver.models import Outcome
from archiver.settings import MIB, ClientOptions, UploadOptions
from archiver.storage import Storage
from tests.helpers import (
    assert_archive_invariant,
    both_servers,
    md5,
    media_file,
    quiet_reporter,
    upload,
)
from tests.proxy import Corrupt, Respond


async def add_files(
    env, db, n: int, size: int, *, rng: random.Random, prefix: str = "f", month: int = 1
) -> list[SampleRow]:
    rows = []
    for i in range(n):
        data = file_bytes(".mp4", size, rng)
        media_file(env.cache_root / "videos", f"{md5(data)}.mp4", data)
        rows.append(
            SampleRow(
                f"{prefix}{i:04d}", "video", md5(data), "video/mp4", None, datetime(2025, month, 1)
            )
        )
    await insert_rows(db, rows)
    return rows


@both_servers
async def test_a_large_file_goes_up_in_parts_and_round_trips(penv, db, s3, proxy) -> None:
    rng = random.Random(31)
    data = file_bytes(".mp4", 17 * MIB + 123, rng)
    media_file(penv.cache_root / "videos", f"{md5(data)}.mp4", data)
    await insert_rows(
        db, [SampleRow("big", "video", md5(data), "video/mp4", None, datetime(2025, 7, 4))]
    )

    summary = await upload(
        penv, multipart_threshold=8 * MIB, part_size=5 * MIB, memory_budget=10 * MIB
    )

    key = f"cache/2025/07/{md5(data)}.mp4"
    assert summary.counts[Outcome.UPLOADED] == 1 and summary.bytes_uploaded == len(data)
    obj = s3.get_object(Bucket=penv.bucket, Key=key)
    assert obj["Body"].read() == data
    assert obj["ETag"].strip('"').endswith("-4")  # 5+5+5+2 MiB
    assert obj["Metadata"] == {"md5": md5(data)}
    parts = [r for r, _ in proxy.requests if r.is_part_put and r.path.endswith(key)]
    assert len(parts) == 4 and proxy.count(lambda r: r.is_object_put) == 0
    # Neither server checks a part's CRC32 (the run's probe, one part of 8 bytes with a
    # wrong checksum, was taken): so each part carries Content-MD5, checked by its ETag.
    probes = [r for r, _ in proxy.requests if r.is_part_put and "archiver-probe-" in r.path]
    assert [p.body_length for p in probes] == [8]
    assert all("content-md5" in {h.lower() for h in p.headers} for p in parts)
    assert s3.list_multipart_uploads(Bucket=penv.bucket).get("Uploads", []) == []
    assert await db.fetchval("SELECT archive_url FROM post_media") == f"s3://{penv.bucket}/{key}"


async def test_crc32_part_checksums_as_a_server_that_checks_them_is_sent_them(
    penv, db, s3, proxy, monkeypatch
) -> None:
    """moto takes CRC32 part checksums without checking them (so the probe says no); as AWS
    S3 checks them, the run is told so here, to send the requests of that mode to a real
    HTTP server: parts with x-amz-checksum-crc32 and, since this is plain http, where an
    on-path writer could swap a part for one with the same CRC32, Content-MD5 too;
    and a completed object whose checksum of checksums is the one computed here."""

    async def checks(self: Storage, probe_key: str) -> bool:
        return True

    monkeypatch.setattr(Storage, "checks_part_checksums", checks)
    rng = random.Random(32)
    data = file_bytes(".mp4", 12 * MIB + 7, rng)
    media_file(penv.cache_root / "videos", f"{md5(data)}.mp4", data)
    await insert_rows(
        db, [SampleRow("crc", "video", md5(data), "video/mp4", None, datetime(2025, 7, 5))]
    )

    summary = await upload(penv, multipart_threshold=8 * MIB, part_size=5 * MIB)

    key = f"cache/2025/07/{md5(data)}.mp4"
    assert summary.counts[Outcome.UPLOADED] == 1
    assert s3.get_object(Bucket=penv.bucket, Key=key)["Body"].read() == data
    parts = [r for r, _ in proxy.requests if r.is_part_put]
    assert len(parts) == 3
    for part in parts:
        names = {h.lower() for h in part.headers}
        assert "x-amz-checksum-crc32" in names and "content-md5" in names
    stored = s3.head_object(Bucket=penv.bucket, Key=key, ChecksumMode="ENABLED")
    sizes = [5 * MIB, 5 * MIB, 2 * MIB + 7]
    offsets = [0, 5 * MIB, 10 * MIB]
    crcs = [crc32_b64(data[o : o + n]) for o, n in zip(offsets, sizes, strict=True)]
    # AWS answers "<checksum>-3"; moto's HEAD leaves the part count off.
    assert stored["ChecksumCRC32"].split("-")[0] == composite_crc32(crcs).split("-")[0]
    assert await db.fetchval("SELECT archive_url FROM post_media") == f"s3://{penv.bucket}/{key}"


@both_servers
@pytest.mark.parametrize("fault", [Respond(500), Corrupt()], ids=["500", "corrupted"])
async def test_a_failed_part_leaves_no_row_and_no_upload(penv, db, s3, proxy, fault) -> None:
    rng = random.Random(32)
    await add_files(penv, db, 1, 12 * MIB, rng=rng)
    proxy.rule = lambda r: fault if r.is_part_put and r.query["partNumber"] == ["2"] else None

    summary = await run_upload(
        penv.settings(client=ClientOptions(max_attempts=2)),
        UploadOptions(multipart_threshold=5 * MIB, part_size=5 * MIB),
        quiet_reporter(),
        cwd=penv.workdir,
    )

    assert summary.counts[Outcome.FAILED] == 1 and summary.exit_code == 1
    assert await db.fetchval("SELECT count(archive_url) FROM post_media") == 0
    assert s3.list_multipart_uploads(Bucket=penv.bucket).get("Uploads", []) == []
    assert s3.list_objects_v2(Bucket=penv.bucket)["KeyCount"] == 0


@both_servers
async def test_a_rerun_records_stored_objects_without_sending_them_again(penv, db, s3, proxy):
    rng = random.Random(33)
    await add_files(penv, db, 40, 3000, rng=rng)
    await add_files(penv, db, 2, 6 * MIB, rng=rng, prefix="big")
    options = {"multipart_threshold": 5 * MIB, "part_size": 5 * MIB, "concurrency": 8}
    first = await upload(penv, **options)
    assert first.counts[Outcome.UPLOADED] == 42
    # Every object is stored but no row recorded (a crash between upload and write-back):
    await db.execute("UPDATE post_media SET archive_url = NULL")
    proxy.reset()

    again = await upload(penv, **options)

    assert again.counts[Outcome.SKIPPED_EXISTING] == 42 and again.counts[Outcome.UPLOADED] == 0
    assert again.bytes_uploaded == 0
    assert proxy.count(lambda r: r.is_object_put or r.is_part_put) == 0  # zero data PUTs
    assert proxy.count(lambda r: r.method == "HEAD" and r.path.count("/") >= 2) == 42
    assert await assert_archive_invariant(db, s3, penv.bucket) == 42


@both_servers
async def test_after_enough_new_objects_it_stops_heading_first(penv, db, s3, proxy) -> None:
    rng = random.Random(34)
    await add_files(penv, db, 60, 1000, rng=rng)
    summary = await upload(penv, concurrency=2)  # switches after 2 x 2 misses in a row
    assert summary.counts[Outcome.UPLOADED] == 60
    heads = proxy.count(lambda r: r.method == "HEAD" and r.path.count("/") >= 2)
    assert 4 <= heads <= 8  # the first few only: then one request per new file
    assert proxy.count(lambda r: r.is_object_put) == 60


@both_servers
@pytest.mark.parametrize("concurrency", [1, 2, 16])
async def test_rows_sharing_a_key_cause_one_put(penv, db, s3, proxy, concurrency) -> None:
    rng = random.Random(35)
    data = file_bytes(".jpg", 4000, rng)
    media_file(penv.cache_root / "images", f"{md5(data)}.jpg", data)
    filler = await add_files(penv, db, 30, 500, rng=rng, prefix="m")  # between the twins
    twins = [
        SampleRow(f"{name}", "image", md5(data), "image/jpeg", None, datetime(2025, 9, day))
        for name, day in (("a-twin", 2), ("z-twin", 20))
    ]
    await insert_rows(db, twins)

    summary = await upload(penv, concurrency=concurrency)

    key = f"cache/2025/09/{md5(data)}.jpg"
    assert proxy.count(lambda r: r.is_object_put and r.key == key) == 1
    urls = await db.fetch("SELECT archive_url FROM post_media WHERE media_id LIKE '%twin'")
    assert [r["archive_url"] for r in urls] == [f"s3://{penv.bucket}/{key}"] * 2
    assert summary.counts[Outcome.UPLOADED] == len(filler) + 1
    assert summary.counts[Outcome.SKIPPED_EXISTING] == 1


@both_servers
async def test_force_uploads_again_even_when_stored(penv, db, s3, proxy) -> None:
    rng = random.Random(36)
    await add_files(penv, db, 5, 800, rng=rng)
    await upload(penv)
    proxy.reset()
    summary = await upload(penv, force=True)
    assert summary.counts[Outcome.UPLOADED] == 5
    assert proxy.count(lambda r: r.is_object_put) == 5
    assert all("if-none-match" not in r.headers for r, _ in proxy.requests if r.is_object_put)


@both_servers
async def test_a_damaged_object_under_the_key_is_replaced(penv, db, s3, proxy) -> None:
    rng = random.Random(37)
    rows = await add_files(penv, db, 1, 2000, rng=rng)
    key = f"cache/2025/01/{rows[0].md5_sum}.mp4"
    s3.put_object(Bucket=penv.bucket, Key=key, Body=b"truncated")
    summary = await upload(penv)
    assert summary.counts[Outcome.UPLOADED] == 1
    assert md5(s3.get_object(Bucket=penv.bucket, Key=key)["Body"].read()) == rows[0].md5_sum
