"""Least privilege, on Ceph RGW (moto enforces no IAM): each command run as a second user
granted only some actions on `cache/*` of the first user's bucket, by a bucket policy, or
by the user policy `archiver iam-policy` prints. The bucket's owner (the `s3` fixture)
arranges and inspects.

Without s3:ListBucket S3 answers 403 for a missing key, and without s3:GetObject for every
key: archiver must neither take that for a dead bucket nor write an archive_url it has not
proved.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import datetime
from typing import Any

import boto3
import pytest

from archiver.demo.sample import SampleRow, file_bytes, insert_rows
from archiver.iam import DAILY, policy
from archiver.settings import MIB
from tests.helpers import all_objects, assert_archive_invariant, make_rows, md5, media_file, run_cli

on_rgw = pytest.mark.parametrize("s3_server", ["rgw"], indirect=True)
MINIMUM = ["s3:PutObject", "s3:GetObject"]  # what the feature notes document


def owner_statement(bucket: str) -> dict[str, Any]:
    """RGW's users are like AWS accounts: an object belongs to the user who put it, and
    the bucket's owner reads it only by a bucket policy (the tests' inspection needs it)."""
    return {
        "Effect": "Allow",
        "Principal": {"AWS": ["arn:aws:iam:::user/archiver"]},
        "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
        "Resource": [f"arn:aws:s3:::{bucket}/*"],
    }


def put_policy(s3: Any, bucket: str, *statements: dict[str, Any]) -> None:
    document = {"Version": "2012-10-17", "Statement": [owner_statement(bucket), *statements]}
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(document))


OBJECT_ACTIONS = ("s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload")


def grant(server: Any, s3: Any, bucket: str, actions: list[str]) -> dict[str, str]:
    """A fresh user, allowed `actions` on the bucket's cache/* by a bucket policy and
    nothing else; the environment that runs archiver as that user.

    The object actions not granted are denied outright: RGW, like S3 with ACLs on, lets a
    user read the objects it put itself (it owns them), where on AWS (the bucket owner
    owning every object) nothing but the policy would let it."""
    uid = f"lp-{uuid.uuid4().hex[:10]}"
    access, secret = server.rgw.add_user(uid)
    principal = {"AWS": [f"arn:aws:iam:::user/{uid}"]}
    objects = [f"arn:aws:s3:::{bucket}/cache/*"]
    statements = [
        {"Effect": "Allow", "Principal": principal, "Action": actions, "Resource": objects}
    ]
    denied = [a for a in OBJECT_ACTIONS if a not in actions]
    if denied:
        statements.append(
            {"Effect": "Deny", "Principal": principal, "Action": denied, "Resource": objects}
        )
    put_policy(s3, bucket, *statements)
    return {"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}


async def big_row(env: Any, db: Any, size: int = 6 * MIB) -> SampleRow:
    """One row whose file is larger than a 5 MiB multipart threshold (two parts)."""
    data = file_bytes(".jpg", size, random.Random(99))
    media_file(env.cache_root / "images", f"{md5(data)}.jpg", data)
    row = SampleRow("big0", "image", md5(data), "image/jpeg", None, datetime(2025, 3, 1))
    await insert_rows(db, [row])
    return row


def upload_json(env: Any, creds: dict[str, str], *flags: str) -> tuple[int, dict[str, Any], str]:
    out = run_cli(env, "upload", "--json", "--no-progress", *flags, **creds)
    data = json.loads(out.stdout) if out.stdout.strip() else {}
    return out.returncode, data, out.stderr


async def forget(db: Any, s3: Any, bucket: str, deleted: int, kept: int) -> list[str]:
    """Delete `deleted` objects (the owner) and clear archive_url of their rows and of
    `kept` more whose objects stay: what a re-run must put right; the keys deleted."""
    rows = await db.fetch(
        "SELECT media_id, archive_url FROM post_media WHERE archive_url IS NOT NULL "
        "AND media_id LIKE 'r%' ORDER BY media_id"
    )
    gone = [r["archive_url"].split("/", 3)[3] for r in rows[:deleted]]
    for key in gone:
        s3.delete_object(Bucket=bucket, Key=key)
    ids = [r["media_id"] for r in rows[: deleted + kept]]
    await db.execute("UPDATE post_media SET archive_url = NULL WHERE media_id = ANY($1)", ids)
    return gone


async def recorded(db: Any) -> int:
    return int(await db.fetchval("SELECT count(*) FROM post_media WHERE archive_url IS NOT NULL"))


@on_rgw
async def test_the_documented_minimum_runs_upload_rerun_verify_and_restore(
    env, db, s3, s3_server
) -> None:
    """s3:PutObject + s3:GetObject on cache/*, no bucket-level permission at all."""
    rows = await make_rows(env, db, 6)
    big = await big_row(env, db)
    creds = grant(s3_server, s3, env.bucket, MINIMUM)
    multipart = ("--multipart-threshold", "5", "--part-size", "5")

    code, first, stderr = upload_json(env, creds, *multipart)
    assert code == 0, stderr
    assert first["uploaded"] == 7 and first["db_updated"] == 7 and first["failed"] == 0
    # The multipart probe's abort was refused (no s3:AbortMultipartUpload): said, not fatal.
    assert any("s3:AbortMultipartUpload" in note for note in first.get("notes", []))
    assert await assert_archive_invariant(db, s3, env.bucket) == 7

    gone = await forget(db, s3, env.bucket, deleted=3, kept=1)
    code, again, stderr = upload_json(env, creds, *multipart)
    assert code == 0, stderr
    assert (again["uploaded"], again["skipped_existing"], again["resent"]) == (3, 1, 0)
    assert set(gone) <= set(all_objects(s3, env.bucket))
    assert await assert_archive_invariant(db, s3, env.bucket) == 7

    out = run_cli(env, "verify", "--verify-s3", "--json", "--no-progress", **creds)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["s3"]["ok"] == 7

    lost = [rows[0], rows[4], big]
    paths = {r.media_id: env.cache_root / "images" / f"{r.md5_sum}.jpg" for r in lost}
    before = {media_id: path.read_bytes() for media_id, path in paths.items()}
    for path in paths.values():
        path.unlink()
    out = run_cli(env, "restore", "--all-missing", "--json", "--no-progress", **creds)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["restored"] == 3
    assert {media_id: path.read_bytes() for media_id, path in paths.items()} == before


@on_rgw
async def test_write_only_credentials_upload_and_rerun_proving_each_object_by_its_etag(
    env, db, s3, s3_server
) -> None:
    """s3:PutObject alone: every HEAD is refused, so the conditional PUT decides; an
    object already there cannot be read back, so it is sent again, unconditionally, and
    recorded on the ETag S3 returns, even where what was there was not the file."""
    await make_rows(env, db, 6)
    creds = grant(s3_server, s3, env.bucket, ["s3:PutObject"])
    code, first, stderr = upload_json(env, creds)
    assert code == 0, stderr
    assert (first["uploaded"], first["db_updated"], first["resent"]) == (6, 6, 0)
    assert await assert_archive_invariant(db, s3, env.bucket) == 6

    await forget(db, s3, env.bucket, deleted=3, kept=2)
    kept = await db.fetch(
        "SELECT media_id, md5_sum FROM post_media WHERE archive_url IS NULL ORDER BY media_id"
    )
    # The last row's object stays, with other bytes put under its key.
    damaged_key = next(k for k in all_objects(s3, env.bucket) if kept[-1]["md5_sum"] in k)
    s3.put_object(Bucket=env.bucket, Key=damaged_key, Body=b"not the file")

    out = run_cli(env, "upload", "--no-progress", **creds)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Sent again:" in out.stdout and "s3:GetObject" in out.stdout
    code, data, _ = upload_json(env, creds)
    assert code == 0 and data["selected"] == 0  # nothing left
    assert await recorded(db) == 6
    assert await assert_archive_invariant(db, s3, env.bucket) == 6
    body = s3.get_object(Bucket=env.bucket, Key=damaged_key)["Body"].read()
    assert md5(body) == kept[-1]["md5_sum"]


@on_rgw
async def test_write_only_rerun_counts_what_was_sent_again(env, db, s3, s3_server) -> None:
    await make_rows(env, db, 4)
    creds = grant(s3_server, s3, env.bucket, ["s3:PutObject"])
    assert upload_json(env, creds)[0] == 0
    await forget(db, s3, env.bucket, deleted=1, kept=2)
    code, data, stderr = upload_json(env, creds)
    assert code == 0, stderr
    assert (data["uploaded"], data["resent"], data["db_updated"]) == (3, 2, 3)
    (note,) = data["notes"]
    assert "s3:GetObject" in note and "ETag" in note


@on_rgw
async def test_read_only_credentials_fail_upload_naming_s3_put_object(
    env, db, s3, s3_server
) -> None:
    await make_rows(env, db, 3)
    creds = grant(s3_server, s3, env.bucket, ["s3:GetObject"])
    out = run_cli(env, "upload", "--no-progress", **creds)
    assert out.returncode == 2, out.stdout + out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert "Traceback" not in out.stderr
    assert last.startswith("archiver: error: S3 denied PutObject of s3://"), last
    assert "the credentials need s3:PutObject" in last
    assert await recorded(db) == 0 and all_objects(s3, env.bucket) == {}
    # check says the same before a run: FAIL, and what can run.
    out = run_cli(env, "check", "--json", **creds)
    assert out.returncode == 1
    permissions = json.loads(out.stdout)["checks"]["permissions"]
    assert permissions["state"] == "fail"
    assert permissions["actions"]["s3:PutObject"] is False
    assert permissions["commands"]["upload"] is False


@on_rgw
async def test_the_policy_iam_policy_prints_lets_a_fresh_user_upload(
    env, db, s3, s3_server
) -> None:
    """`archiver iam-policy upload --json`, attached as is to a new user (RGW's IAM API,
    PutUserPolicy; the bucket policy grants that user nothing), is all upload needs; check
    then reports what that user may do, by requests that leave nothing behind."""
    await make_rows(env, db, 5)
    put_policy(s3, env.bucket)
    out = run_cli(env, "iam-policy", "upload", "--json")
    assert out.returncode == 0, out.stderr
    document = json.loads(out.stdout)
    assert document == policy(("upload",), env.bucket, "cache")
    assert document["Statement"][0]["Resource"] == f"arn:aws:s3:::{env.bucket}/cache/*"

    rgw = s3_server.rgw
    rgw.admin("caps", "add", "--uid", "archiver", "--caps", "user-policy=*")
    uid = f"lp-{uuid.uuid4().hex[:10]}"
    access, secret = rgw.add_user(uid)
    iam = boto3.client("iam", endpoint_url=env.endpoint, region_name="us-east-1")
    iam.put_user_policy(UserName=uid, PolicyName="archiver", PolicyDocument=out.stdout)
    creds = {"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}

    code, data, stderr = upload_json(env, creds)
    assert code == 0, stderr
    assert data["uploaded"] == 5 and data["db_updated"] == 5 and "notes" not in data
    assert await assert_archive_invariant(db, s3, env.bucket) == 5

    out = run_cli(env, "check", "--json", **creds)
    assert out.returncode == 0, out.stdout + out.stderr
    checks = json.loads(out.stdout)["checks"]
    assert checks["bucket"]["state"] == "ok" and checks["bucket"]["region"] is None
    assert "s3:ListBucket" in checks["bucket"]["detail"]  # HeadBucket refused: no region
    assert checks["permissions"]["actions"] == {
        "s3:ListBucket": False,
        "s3:PutObject": True,
        "s3:AbortMultipartUpload": True,
        "s3:GetObject": True,  # a HEAD of an archived object
    }
    assert checks["permissions"]["commands"] == dict.fromkeys(DAILY, True)
    assert len(all_objects(s3, env.bucket)) == 5  # the probes left nothing
    assert s3.list_multipart_uploads(Bucket=env.bucket).get("Uploads", []) == []


@on_rgw
async def test_wrong_keys_and_a_missing_bucket_are_told_apart_without_bucket_permissions(
    env, db, s3, s3_server
) -> None:
    """The start-up check is a GET under the prefix: a refused GET lets the run go on, but
    a wrong secret, an unknown key id and a missing bucket each stop it, named."""
    await make_rows(env, db, 1)
    creds = grant(s3_server, s3, env.bucket, ["s3:PutObject"])
    wrong_secret = dict(creds, AWS_SECRET_ACCESS_KEY="not-the-secret")
    unknown_key = dict(creds, AWS_ACCESS_KEY_ID="no-such-key")
    for environ, code in (
        (wrong_secret, "SignatureDoesNotMatch"),
        (unknown_key, "InvalidAccessKeyId"),
    ):
        out = run_cli(env, "upload", "--no-progress", **environ)
        assert out.returncode == 2, out.stderr
        assert f"S3 refused these credentials ({code})" in out.stderr
        assert "not-the-secret" not in out.stderr
    out = run_cli(
        env, "verify", "--verify-s3", "--no-progress", ARCHIVER_BUCKET="no-such-lp-bucket", **creds
    )
    assert out.returncode == 2 and "does not exist" in out.stderr, out.stderr
    assert await recorded(db) == 0
