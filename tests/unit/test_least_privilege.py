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

import pytest

from archiver.demo.sample import SampleRow, file_bytes, insert_rows
from archiver.iam import DAILY, policy
from archiver.settings import MIB
from tests.helpers import md5, media_file, run_cli

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


def test_iam_policy_documents_merge_commands_and_scope_each_action() -> None:
    from archiver.iam import SETTING_ACTIONS, format_policy

    daily = policy(DAILY, "media-bkt", "cache")
    assert daily == {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ArchiverObjects",
                "Effect": "Allow",
                "Action": ["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"],
                "Resource": "arn:aws:s3:::media-bkt/cache/*",
            }
        ],
    }  # no bucket-level action for the daily commands
    write_only = policy(("upload",), "media-bkt", "cache", write_only=True)
    assert write_only["Statement"][0]["Action"] == ["s3:AbortMultipartUpload", "s3:PutObject"]
    reads = policy(("verify", "restore"), "media-bkt", "archive/v2")
    assert reads["Statement"] == [
        {
            "Sid": "ArchiverObjects",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": "arn:aws:s3:::media-bkt/archive/v2/*",
        }
    ]
    admin = {
        s["Sid"]: s for s in policy(("setup-bucket", "setup-cdn"), "b-1", "cache")["Statement"]
    }
    assert admin["ArchiverBucket"]["Resource"] == "arn:aws:s3:::b-1"
    assert set(SETTING_ACTIONS.values()) <= set(admin["ArchiverBucket"]["Action"])
    assert "cloudfront:CreateDistribution" in admin["ArchiverCloudFront"]["Action"]
    assert admin["ArchiverCloudFront"]["Resource"] == "*"
    text = format_policy(("upload", "url"), "b-1", "cache")
    assert text.splitlines()[1].split() == [
        "upload",
        "s3:PutObject,",
        "s3:AbortMultipartUpload,",
        "s3:GetObject",
    ]
    assert json.loads(text[text.index("{") :]) == policy(("upload", "url"), "b-1", "cache")


def test_setup_bucket_may_delete_its_write_probe_and_nothing_else() -> None:
    """Issue 30, item 10: deletes are granted on the write-probe keys alone, never on
    archived objects; KMS actions appear for a bucket encrypted with SSE-KMS."""
    from archiver.iam import WRITE_PROBE_NAME, format_policy

    statements = {s["Sid"]: s for s in policy(("setup-bucket",), "b-1", "cache")["Statement"]}
    assert "ArchiverObjects" not in statements
    probe = statements["ArchiverWriteProbe"]
    assert probe["Resource"] == f"arn:aws:s3:::b-1/cache/{WRITE_PROBE_NAME}*"
    assert probe["Action"] == [
        "s3:DeleteObject",
        "s3:DeleteObjectVersion",
        "s3:GetObject",
        "s3:PutObject",
    ]
    both = {s["Sid"]: s for s in policy(("upload", "setup-bucket"), "b-1", "cache")["Statement"]}
    assert "s3:DeleteObject" not in both["ArchiverObjects"]["Action"]
    assert both["ArchiverWriteProbe"]["Action"] == ["s3:DeleteObject", "s3:DeleteObjectVersion"]
    assert not any(a.startswith("kms:") for s in both.values() for a in s["Action"])  # no key given

    key = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    kms = {s["Sid"]: s for s in policy(DAILY, "b-1", "cache", kms_key=key)["Statement"]}
    assert kms["ArchiverKms"] == {
        "Sid": "ArchiverKms",
        "Effect": "Allow",
        "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
        "Resource": key,
    }
    reads = {s["Sid"]: s for s in policy(("verify",), "b-1", "cache", kms_key=key)["Statement"]}
    assert "ArchiverKms" not in reads  # a HEAD needs no key
    restore = policy(("restore",), "b-1", "cache", kms_key=key)["Statement"]
    assert restore[-1]["Action"] == ["kms:Decrypt"]
    assert "--kms-key" in format_policy(DAILY, "b-1", "cache")
    assert "--kms-key" not in format_policy(DAILY, "b-1", "cache", kms_key=key)


def test_a_refusal_names_the_operation_the_object_and_the_iam_action() -> None:
    from archiver.s3_answers import bucket_denied, denied

    put = str(denied("b-1", "complete_multipart_upload", "cache/2025/01/x.jpg"))
    assert put.startswith(
        "S3 denied CompleteMultipartUpload of s3://b-1/cache/2025/01/x.jpg: the credentials "
        "need s3:PutObject on it"
    )
    head = str(denied("b-1", "head_object", "cache/k"))
    assert "HeadObject" in head and "s3:GetObject" in head and "s3:ListBucket" in head
    assert "s3:AbortMultipartUpload" in str(denied("b-1", "abort_multipart_upload", "cache/k"))
    bucket = str(bucket_denied("b-1", "head_bucket"))
    assert bucket.startswith(
        "S3 denied HeadBucket on bucket 'b-1': the credentials need s3:ListBucket"
    )
    assert "archiver iam-policy" in bucket


def test_iam_policy_on_the_command_line(tmp_path) -> None:
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "archiver", "iam-policy", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )

    out = cli("upload", "verify", "--bucket", "media-bkt", "--key-prefix", "v2/cache", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == policy(("upload", "verify"), "media-bkt", "v2/cache")
    out = cli("setup-bucket")
    assert out.returncode == 0 and "s3:PutBucketPolicy" in out.stdout
    out = cli("uplaod")
    assert out.returncode == 2 and "Invalid value for '[COMMAND]...'" in out.stderr
    key = "arn:aws:kms:eu-west-1:123456789012:key/k1"
    out = cli("upload", "--kms-key", key, "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == policy(
        ("upload",), "social-tui", "cache", kms_key=key
    )
    out = cli("upload", "--kms-key", "k1")
    assert out.returncode == 2 and "ARN" in out.stderr and "Traceback" not in out.stderr
