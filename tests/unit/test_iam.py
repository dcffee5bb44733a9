"""Least privilege without a server: the IAM policy documents, the write probe's
permissions, and refusals naming the operation, the object and the IAM action."""

from __future__ import annotations

import json

from click.testing import CliRunner

from archiver import iam
from archiver.cli import cli
from archiver.iam import DAILY, policy


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
    from archiver.storage_answers import bucket_denied, denied

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


def test_no_command_lists_an_action_twice_and_iam_policy_takes_no_flag_it_ignores() -> None:
    for name, needs in iam.COMMANDS.items():
        for kind in ("objects", "bucket", "cloudfront", "probe", "kms"):
            actions = getattr(needs, kind)
            assert len(set(actions)) == len(actions), (name, kind, actions)
    for ignored in ("--profile", "--region", "--endpoint-url", "--database-url"):
        result = CliRunner().invoke(cli, ["iam-policy", ignored, "x"])
        assert result.exit_code == 2 and "No such option" in result.output, ignored
