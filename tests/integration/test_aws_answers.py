"""Where AWS answers otherwise than moto and Ceph RGW, the fault proxy answers as
AWS does, in front of each real server: SSE-KMS objects, whose ETags are not the MD5 of
their bytes (AWS's `Object.ETag` documentation)."""

from __future__ import annotations

import json

from archiver.integrity import METADATA_MD5
from tests.helpers import assert_archive_invariant, both_servers, make_rows, md5, run_cli
from tests.proxy import Reply, Request, Rewrite, as_sse_kms


def object_request(bucket: str):
    """Requests on objects under the prefix (not the bucket, not the start-up probe)."""

    def matches(r: Request) -> bool:
        return r.path.startswith(f"/{bucket}/cache/") and "archiver-access-check" not in r.path

    return matches


def puts_per_key(proxy, bucket: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r, _ in proxy.requests:
        if r.is_object_put and object_request(bucket)(r):
            counts[r.path] = counts.get(r.path, 0) + 1
    return counts


@both_servers
async def test_an_sse_kms_bucket_archives_small_files_proved_by_checksums(
    s3_server, penv, db, s3, proxy
) -> None:
    """Every single PUT is proved by the CRC32 the server echoes (AWS checks it) and carries
    the file's MD5 in its metadata; verify, prune-local and restore judge the objects by it.
    A server that echoes no checksum is refused with one line, and no row is sent more than
    twice (the PUT that revealed the encryption, and one with a checksum)."""
    rows = await make_rows(penv, db, 6)
    if s3_server.name == "moto":  # RGW 16 refuses PUT ?encryption; its PUTs reveal it
        s3.put_bucket_encryption(
            Bucket=penv.bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}}]
            },
        )
    on_objects = object_request(penv.bucket)
    proxy.rule = lambda r: Rewrite(as_sse_kms) if on_objects(r) else None

    out = run_cli(penv, "upload", "--json", "--concurrency", "2")

    sent = puts_per_key(proxy, penv.bucket)
    assert max(sent.values()) <= 2, sent
    checksummed = [r for r, _ in proxy.requests if r.is_object_put and on_objects(r)]
    if out.returncode == 2:  # a server without S3's additional checksums
        assert s3_server.name == "rgw", out.stderr
        line = out.stderr.strip().splitlines()[-1]
        assert "encrypts objects with aws:kms" in line and "x-amz-checksum-crc32" in line
        assert "Traceback" not in out.stderr
        assert await db.fetchval("SELECT count(archive_url) FROM post_media") == 0
        assert len(sent) <= 2 and sum(sent.values()) <= 4  # two workers, no loop
        return
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["uploaded"] == 6
    if s3_server.name == "moto":  # the default was read: one PUT each, all with a checksum
        assert sorted(sent.values()) == [1] * 6
        assert all("x-amz-checksum-crc32" in r.headers for r in checksummed)
    for row in rows:
        key = f"cache/{row.created_at:%Y/%m}/{row.md5_sum}.jpg"
        head = s3.head_object(Bucket=penv.bucket, Key=key)
        assert head["Metadata"] == {METADATA_MD5: row.md5_sum}
    assert await assert_archive_invariant(db, s3, penv.bucket) == 6

    out = run_cli(penv, "verify", "--verify-s3", "--json")
    assert out.returncode == 0, out.stdout
    assert json.loads(out.stdout)["s3"]["ok"] == 6
    out = run_cli(penv, "prune-local", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["deleted"] == 6, out.stdout
    out = run_cli(penv, "restore", "--all-missing", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["restored"] == 6, out.stdout
    for row in rows:
        assert md5((penv.cache_root / "images" / f"{row.md5_sum}.jpg").read_bytes()) == row.md5_sum


async def test_without_checksums_an_sse_kms_bucket_is_refused_in_one_line(
    penv, db, s3, proxy
) -> None:
    """moto echoes checksums; a server that does not (emulated by taking the header off
    moto's answers) cannot prove a single PUT into an SSE-KMS bucket: one line, exit 2."""
    await make_rows(penv, db, 4)
    on_objects = object_request(penv.bucket)

    def kms_without_checksums(reply: Reply) -> Reply:
        reply = as_sse_kms(reply)
        headers = {k: v for k, v in reply.headers.items() if not k.startswith("x-amz-checksum")}
        return Reply(reply.status, headers, reply.body)

    proxy.rule = lambda r: Rewrite(kms_without_checksums) if on_objects(r) else None
    out = run_cli(penv, "upload", "--concurrency", "1")
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "encrypts objects with aws:kms" in lines[0], out.stderr
    assert sum(puts_per_key(proxy, penv.bucket).values()) == 2
    assert await db.fetchval("SELECT count(archive_url) FROM post_media") == 0

    out = run_cli(penv, "setup-bucket", "--json")
    probe = json.loads(out.stdout)["settings"]["write_probe"]
    assert probe["state"] != "ok" and "encrypts objects with aws:kms" in probe["detail"]


async def test_check_names_an_sse_kms_default_and_its_key(env, db, s3) -> None:
    key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    s3.put_bucket_encryption(
        Bucket=env.bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [
                {
                    "ApplyServerSideEncryptionByDefault": {
                        "SSEAlgorithm": "aws:kms",
                        "KMSMasterKeyID": key,
                    }
                }
            ]
        },
    )
    out = run_cli(env, "check", "--json")
    bucket = json.loads(out.stdout)["checks"]["bucket"]
    assert (bucket["encryption"], bucket["kms_key"]) == ("aws:kms", key)
    assert f"iam-policy --kms-key {key}" in bucket["detail"]
