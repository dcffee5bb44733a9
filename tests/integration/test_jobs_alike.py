"""One rule, one wiring: every job judges objects by the same integrity rule, opens S3 with
the same client settings, and stops on Ctrl-C the same way. The real commands, the real
services, and the fault proxy between them.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from archiver.demo.sample import SampleRow, file_bytes, insert_rows
from archiver.settings import DEFAULT_MAX_ATTEMPTS, MIB
from archiver.storage_base import ACCESS_PROBE_NAME
from tests.helpers import both_servers, md5, media_file, run_cli, start_cli
from tests.proxy import Request, Respond


async def make_rows(env: Any, db: Any, n: int, *, seed: int, size: int = 3000) -> list[Any]:
    """`n` image rows with their files; (row, path) pairs."""
    rng = random.Random(seed)
    rows, paths = [], []
    for i in range(n):
        data = file_bytes(".jpg", size + i, rng)
        paths.append(media_file(env.cache_root / "images", f"{md5(data)}.jpg", data))
        rows.append(
            SampleRow(f"a{i:03d}", "image", md5(data), "image/jpeg", None, datetime(2025, 3, 1))
        )
    await insert_rows(db, rows)
    return list(zip(rows, paths, strict=True))


async def archive_rows(env: Any, db: Any, n: int, *, seed: int) -> list[Any]:
    """`make_rows`, archived by a real upload."""
    made = await make_rows(env, db, n, seed=seed)
    out = run_cli(env, "upload", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["uploaded"] == n
    return made


ROOT = Path(__file__).resolve().parents[2]
# The README and the reference pages in docs/: what they promise is what this file checks.
README = "\n".join(
    p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
)


def is_object_request(r: Request) -> bool:
    """A request on an object (`/bucket/key`), not on the bucket, nor the start-up check
    every command makes under the prefix (`storage.ACCESS_PROBE_NAME`)."""
    return (
        r.path.count("/") >= 2
        and not r.path.endswith("/")
        and not r.path.endswith("/" + ACCESS_PROBE_NAME)
    )


def key_of(r: Request) -> str:
    return r.path.split("/", 2)[2]


# -- the integrity rule ---------------------------------------------------------------------


@both_servers
@pytest.mark.parametrize("recorded", [None, "e" * 32], ids=["no-recorded-md5", "other-md5"])
async def test_a_replaced_multipart_object_of_the_same_size_is_not_proved_and_kept(
    env, db, s3, recorded: str | None
) -> None:
    rng = random.Random(130)
    data = file_bytes(".mp4", 6 * MIB, rng)
    path = media_file(env.cache_root / "videos", f"{md5(data)}.mp4", data)
    await insert_rows(
        db, [SampleRow("mp", "video", md5(data), "video/mp4", None, datetime(2025, 4, 4))]
    )
    out = run_cli(env, "upload", "--json", "--multipart-threshold", "5", "--part-size", "5")
    assert out.returncode == 0 and json.loads(out.stdout)["uploaded"] == 1, out.stderr
    url = await db.fetchval("SELECT archive_url FROM post_media")
    key = url.split("/", 3)[3]
    assert s3.head_object(Bucket=env.bucket, Key=key)["ETag"].endswith('-2"')

    # Someone replaces it with other bytes of the same size, also in two parts.
    other = bytes(b ^ 0x5A for b in data)
    extra = {"Metadata": {"md5": recorded}} if recorded else {}
    upload_id = s3.create_multipart_upload(Bucket=env.bucket, Key=key, **extra)["UploadId"]
    parts = []
    for number, start in enumerate((0, 5 * MIB), start=1):
        body = other[start : start + 5 * MIB]
        etag = s3.upload_part(
            Bucket=env.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
        )["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    s3.complete_multipart_upload(
        Bucket=env.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    head = s3.head_object(Bucket=env.bucket, Key=key)
    assert head["ContentLength"] == len(data) and head["ETag"].endswith('-2"')

    out = run_cli(env, "verify", "--verify-s3", "--json")
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    # Without a recorded MD5 nothing shows what it holds (never taken for damage,
    # never cleared by --repair); another recorded MD5 shows it holds another file.
    kind = "unverifiable" if recorded is None else "mismatched"
    assert report["s3"][kind] == 1 and report["s3"]["ok"] == 0
    (problem,) = report["problems"]
    assert (problem["media_id"], problem["kind"], problem["url"]) == ("mp", kind, url)
    expected = "without a recorded MD5" if recorded is None else f"recorded MD5 {recorded}"
    assert expected in problem["detail"]
    text = run_cli(env, "verify", "--verify-s3")
    assert text.returncode == 1 and f"{kind} mp {url}: " in text.stdout

    out = run_cli(env, "prune-local", "--json")
    assert out.returncode == 1, out.stderr
    pruned = json.loads(out.stdout)
    assert (pruned["deleted"], pruned["kept_unverified"]) == (0, 1)
    assert pruned["kept"][0]["kind"] == "kept_unverified"
    assert expected in pruned["kept"][0]["detail"]
    assert path.read_bytes() == data  # the only intact copy stays


# -- the same S3 client settings for every command -------------------------------------------


def environ_without(env: Any, *names: str, **extra: str) -> dict[str, str]:
    """The rig's environment without `names`, plus `extra`."""
    environ = env.environ()
    for name in names:
        environ.pop(name, None)
    environ.update(extra)
    return environ


# Each command's request on an object, refused with 503 SlowDown every time: botocore retries
# it, and the number of times the proxy sees it is the number of attempts.
COMMANDS = {
    "upload": (("upload", "--json"), "PUT"),
    "verify": (("verify", "--verify-s3", "--json"), "HEAD"),
    "prune-local": (("prune-local", "--json"), "HEAD"),
    "restore": (("restore", "--all-missing", "--json"), "GET"),
}


@both_servers
@pytest.mark.parametrize("command", list(COMMANDS))
async def test_aws_max_attempts_is_the_number_of_attempts_per_object_in_every_command(
    penv, db, proxy, command: str
) -> None:
    args, method = COMMANDS[command]
    if command == "upload":
        await make_rows(penv, db, 3, seed=131)
    else:
        archived = await archive_rows(penv, db, 3, seed=131)
    if command == "restore":
        for _row, path in archived:
            path.unlink()
    proxy.reset()
    proxy.rule = lambda r: (
        Respond(503, "SlowDown") if r.method == method and is_object_request(r) else None
    )

    out = run_cli(penv, *args, environ=environ_without(penv, AWS_MAX_ATTEMPTS="2"))
    assert out.returncode == 1, out.stderr
    tries = Counter(
        key_of(r) for r, _ in proxy.requests if r.method == method and is_object_request(r)
    )
    assert len(tries) == 3 and set(tries.values()) == {2}, tries


@both_servers
async def test_the_default_is_the_number_of_attempts_the_readme_states(penv, db, proxy) -> None:
    await archive_rows(penv, db, 2, seed=132)
    proxy.reset()
    proxy.rule = lambda r: (
        Respond(503, "SlowDown") if r.method == "HEAD" and is_object_request(r) else None
    )
    out = run_cli(
        penv, "verify", "--verify-s3", "--json", environ=environ_without(penv, "AWS_MAX_ATTEMPTS")
    )
    assert out.returncode == 1, out.stderr
    assert json.loads(out.stdout)["s3"]["errors"] == 2
    tries = Counter(
        key_of(r) for r, _ in proxy.requests if r.method == "HEAD" and is_object_request(r)
    )
    assert set(tries.values()) == {DEFAULT_MAX_ATTEMPTS}, tries
    assert f"`standard` mode with {DEFAULT_MAX_ATTEMPTS} attempts" in README


def checksum_headers(r: Request) -> set[str]:
    return {h for h in r.headers if h.startswith(("x-amz-checksum-", "x-amz-sdk-checksum"))}


@both_servers
@pytest.mark.parametrize("asked", [None, "when_supported"])
async def test_no_extra_checksums_in_any_command_unless_asked(
    penv, db, proxy, asked: str | None
) -> None:
    extra = {"AWS_REQUEST_CHECKSUM_CALCULATION": asked} if asked else {}
    environ = environ_without(penv, "AWS_REQUEST_CHECKSUM_CALCULATION", **extra)
    await make_rows(penv, db, 2, seed=134)
    # the write probe, then the uploads (BlockPublicAcls off: RGW 16 refuses PUTs with it)
    for command in (("setup-bucket", "--no-block-public-acls"), ("upload",)):
        out = run_cli(penv, *command, environ=environ)
        assert out.returncode == 0, out.stderr
    puts = [r for r, _ in proxy.requests if r.method == "PUT" and is_object_request(r)]
    assert len(puts) == 3 and any(".archiver-write-probe-" in r.path for r in puts)
    if asked is None:
        assert [checksum_headers(r) for r in puts] == [set()] * 3
    else:  # the switch is honoured: botocore adds its CRC32 to every one
        assert all(checksum_headers(r) for r in puts), [r.headers for r in puts]


# -- the same Ctrl-C for every command --------------------------------------------------------

SLOW_S = 30.0  # how long the proxy holds each object request: longer than the test waits
STOPPABLE = {
    "verify": ("verify", "--verify-s3", "--json"),
    "prune-local": ("prune-local", "--json"),
    "restore": ("restore", "--all-missing", "--json"),
}


def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def interrupt_twice(run: subprocess.Popen[str]) -> tuple[str, str, float]:
    """Ctrl-C, a second later Ctrl-C again; (stdout, stderr, seconds from the second to
    the end)."""
    try:
        run.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert run.poll() is None  # the first Ctrl-C lets the work in flight finish
        run.send_signal(signal.SIGINT)
        sent = time.monotonic()
        stdout, stderr = run.communicate(timeout=SLOW_S)
        return stdout, stderr, time.monotonic() - sent
    finally:
        if run.poll() is None:
            run.kill()


@both_servers
@pytest.mark.parametrize("command", list(STOPPABLE))
async def test_a_second_ctrl_c_abandons_the_work_in_flight_and_reports(
    penv, db, proxy, command: str
) -> None:
    archived = await archive_rows(penv, db, 12, seed=133)
    if command == "restore":
        for _row, path in archived:
            path.unlink()
    proxy.reset()
    proxy.delay_s = SLOW_S
    proxy.delay_if = is_object_request
    run = start_cli(penv, *STOPPABLE[command], "--concurrency", "4")
    wait_for(lambda: sum(1 for r in proxy.arrived if is_object_request(r)) >= 4)
    stdout, stderr, took = interrupt_twice(run)
    assert run.returncode == 130, stderr
    assert took < 5, took  # not the 30 s the requests in flight would have taken
    assert "Traceback" not in stderr
    assert "press Ctrl-C again to abandon it" in stderr
    assert "abandoning the work in flight" in stderr
    report = json.loads(stdout)
    assert report["interrupted"] is True
    if command == "verify":
        assert report["s3"]["ok"] == 0 and report["s3"]["checked"] < 12
        assert report["local"] is None
    elif command == "prune-local":
        assert report["deleted"] == 0
        assert all(path.exists() for _row, path in archived)  # nothing proved, nothing gone
    else:
        assert report["restored"] == 0
        # nothing half-written is left: the downloads went to unnamed files
        assert [p.name for p in (penv.cache_root / "images").iterdir()] == []
