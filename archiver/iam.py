"""The IAM actions archiver's S3 calls need, and `archiver iam-policy`: the least-privilege
policy for the commands asked for (pure; the S3 adapter names these actions when S3 refuses
a call).

Each command's actions are listed once, here; `check` probes the same object actions, and
the README's permission table is this table. Object actions are granted on the key prefix
(`arn:aws:s3:::{bucket}/{prefix}/*`), bucket actions on the bucket, CloudFront's on `*`
(its resources are named by ids that only exist once setup-cdn made them).
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from typing import Any

OBJECTS, BUCKET, CLOUDFRONT, PROBE, KMS = "objects", "bucket", "cloudfront", "probe", "kms"

# The IAM action each object call needs, to name it when S3 refuses it (the multipart
# calls but the abort are authorised by s3:PutObject; a HEAD by s3:GetObject).
OBJECT_ACTIONS = {
    "put_object": "s3:PutObject",
    "create_multipart_upload": "s3:PutObject",
    "upload_part": "s3:PutObject",
    "complete_multipart_upload": "s3:PutObject",
    "abort_multipart_upload": "s3:AbortMultipartUpload",
    "head_object": "s3:GetObject",
    "get_object": "s3:GetObject",
    "delete_object": "s3:DeleteObject",
}
# Where a refusal may also mean "no such object": S3 answers 403, not 404, for a missing
# key to a caller without s3:ListBucket on the bucket.
MAYBE_MISSING = " (S3 also answers 403 for a missing object when s3:ListBucket is not granted)"
POLICY_HINT = "`archiver iam-policy` prints what each command needs"
# The IAM action each bucket-level call needs, to name it when S3 refuses it.
SETTING_ACTIONS = {
    "head_bucket": "s3:ListBucket",
    "list_objects_v2": "s3:ListBucket",
    "get_bucket_location": "s3:GetBucketLocation",
    "create_bucket": "s3:CreateBucket",
    "get_public_access_block": "s3:GetBucketPublicAccessBlock",
    "put_public_access_block": "s3:PutBucketPublicAccessBlock",
    "get_bucket_encryption": "s3:GetEncryptionConfiguration",
    "put_bucket_encryption": "s3:PutEncryptionConfiguration",
    "get_bucket_policy": "s3:GetBucketPolicy",
    "put_bucket_policy": "s3:PutBucketPolicy",
    "get_bucket_versioning": "s3:GetBucketVersioning",
    "put_bucket_versioning": "s3:PutBucketVersioning",
    "get_bucket_lifecycle_configuration": "s3:GetLifecycleConfiguration",
    "put_bucket_lifecycle_configuration": "s3:PutLifecycleConfiguration",
}


@dataclass(frozen=True)
class Needs:
    """What one command needs, by resource, and why (for the text output)."""

    objects: tuple[str, ...] = ()
    bucket: tuple[str, ...] = ()
    cloudfront: tuple[str, ...] = ()
    probe: tuple[str, ...] = ()  # on setup-bucket's write-probe keys only
    kms: tuple[str, ...] = ()  # on the bucket's SSE-KMS key, when one is given
    why: str = ""


# setup-bucket's write probe puts, reads and deletes `{prefix}/{WRITE_PROBE_NAME}{random}`:
# its deletes are granted on those keys alone, never on archived objects.
WRITE_PROBE_NAME = ".archiver-write-probe-"
# SSE-KMS: PutObject and CreateMultipartUpload need kms:GenerateDataKey, a multipart upload
# (its parts) and any read of the bytes kms:Decrypt; a HEAD needs neither.
KMS_WRITE = ("kms:GenerateDataKey", "kms:Decrypt")
KMS_READ = ("kms:Decrypt",)


READ = ("s3:GetObject",)
# The daily commands, in the order `iam-policy` without arguments covers them.
DAILY = ("upload", "verify", "prune-local", "restore", "url")
ADMIN = ("setup-bucket", "setup-cdn", "check")
CDN_ACTIONS = tuple(
    f"cloudfront:{name}"
    for name in (
        "ListDistributions",
        "GetDistributionConfig",
        "CreateDistribution",
        "UpdateDistribution",
        "ListOriginAccessControls",
        "GetOriginAccessControl",
        "CreateOriginAccessControl",
        "UpdateOriginAccessControl",
        "ListPublicKeys",
        "CreatePublicKey",
        "ListKeyGroups",
        "GetKeyGroup",
        "CreateKeyGroup",
        "UpdateKeyGroup",
    )
)
COMMANDS: dict[str, Needs] = {
    "upload": Needs(
        objects=("s3:PutObject", "s3:AbortMultipartUpload", "s3:GetObject"),
        kms=KMS_WRITE,
        why="PutObject stores (multipart too); AbortMultipartUpload cleans up a failed "
        "multipart upload; GetObject (HEAD) skips objects already stored: without it "
        "(--write-only) an object already there is sent again and proved by its ETag",
    ),
    "upload --write-only": Needs(
        objects=("s3:PutObject", "s3:AbortMultipartUpload"),
        kms=KMS_WRITE,
        why="stores without reading back: an object already there is sent again and "
        "proved by the ETag S3 returns",
    ),
    "verify": Needs(objects=READ, why="HEAD of each archived object (--verify-s3)"),
    "prune-local": Needs(objects=READ, why="HEAD of each object before its file is deleted"),
    "restore": Needs(objects=READ, kms=KMS_READ, why="GET of each object"),
    "url": Needs(
        objects=READ, kms=KMS_READ, why="presigned GET links are signed with these credentials"
    ),
    "check": Needs(
        objects=("s3:PutObject", "s3:AbortMultipartUpload", "s3:GetObject"),
        bucket=("s3:ListBucket", "s3:GetBucketLocation"),
        kms=("kms:GenerateDataKey",),
        why="HeadBucket and the bucket's region; the object actions are probed, not used",
    ),
    "setup-bucket": Needs(
        probe=("s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:DeleteObjectVersion"),
        bucket=tuple(dict.fromkeys(("s3:CreateBucket", *SETTING_ACTIONS.values()))),
        kms=KMS_WRITE,
        why="creates and configures the bucket; its write probe puts, reads and deletes "
        f"one object (and its version), under {{prefix}}/{WRITE_PROBE_NAME}* only",
    ),
    "setup-cdn": Needs(
        bucket=(
            "s3:ListBucket",
            "s3:GetBucketLocation",
            "s3:GetBucketPolicy",
            "s3:PutBucketPolicy",
        ),
        cloudfront=CDN_ACTIONS,
        why="the distribution, its origin access control and key group, and the bucket "
        "policy statement that lets it read",
    ),
}
CHOICES = (*DAILY, *ADMIN)


def needs_for(command: str, *, write_only: bool = False) -> Needs:
    """What `command` needs (`upload` with `write_only`: without s3:GetObject)."""
    if command == "upload" and write_only:
        return COMMANDS["upload --write-only"]
    return COMMANDS[command]


def policy(
    commands: tuple[str, ...],
    bucket: str,
    prefix: str,
    *,
    write_only: bool = False,
    kms_key: str | None = None,
) -> dict[str, Any]:
    """The IAM policy document (Version, Statement) that lets `commands` run on
    s3://{bucket}/{prefix}/ and nothing else: one statement per kind of resource (the KMS
    one only given `kms_key`, the ARN of the bucket's SSE-KMS key)."""
    wanted: dict[str, dict[str, None]] = {
        OBJECTS: {},
        PROBE: {},
        BUCKET: {},
        CLOUDFRONT: {},
        KMS: {},
    }
    for command in commands:
        needs = needs_for(command, write_only=write_only)
        for kind in wanted:
            wanted[kind].update(dict.fromkeys(getattr(needs, kind)))
    # What the archived objects grant already need not be granted again on the probe keys.
    for action in wanted[OBJECTS]:
        wanted[PROBE].pop(action, None)
    if kms_key is None:
        wanted[KMS].clear()
    resources = {
        OBJECTS: ("ArchiverObjects", f"arn:aws:s3:::{bucket}/{prefix}/*"),
        PROBE: ("ArchiverWriteProbe", f"arn:aws:s3:::{bucket}/{prefix}/{WRITE_PROBE_NAME}*"),
        BUCKET: ("ArchiverBucket", f"arn:aws:s3:::{bucket}"),
        CLOUDFRONT: ("ArchiverCloudFront", "*"),
        KMS: ("ArchiverKms", kms_key or ""),
    }
    statements = [
        {
            "Sid": resources[kind][0],
            "Effect": "Allow",
            "Action": sorted(actions),
            "Resource": resources[kind][1],
        }
        for kind, actions in wanted.items()
        if actions
    ]
    return {"Version": "2012-10-17", "Statement": statements}


def format_policy(
    commands: tuple[str, ...],
    bucket: str,
    prefix: str,
    *,
    write_only: bool = False,
    kms_key: str | None = None,
) -> str:
    """The text output: what each command needs and why, then the document to attach."""
    lines = [f"Least-privilege IAM policy for s3://{bucket}/{prefix}/ ({', '.join(commands)}):"]
    width = max(len(c) for c in commands)
    for command in commands:
        needs = needs_for(command, write_only=write_only)
        actions = [*needs.objects, *needs.probe, *needs.bucket]
        if kms_key is not None:
            actions += needs.kms
        if needs.cloudfront:
            actions.append(f"{len(needs.cloudfront)} cloudfront actions")
        pad = " " * (width + 4)
        lines.append(f"  {command:<{width}}  {', '.join(actions)}")
        lines.append(textwrap.fill(needs.why, 92, initial_indent=pad, subsequent_indent=pad))
    if kms_key is None and any(needs_for(c, write_only=write_only).kms for c in commands):
        lines.append(
            "If the bucket's default encryption is SSE-KMS, pass its key's ARN (--kms-key) "
            "for the KMS actions these commands need on it (`archiver check` names it)."
        )
    lines.append("Attach it to the user or role archiver runs as (--json prints it alone):")
    document = policy(commands, bucket, prefix, write_only=write_only, kms_key=kms_key)
    lines.append(json.dumps(document, indent=2))
    return "\n".join(lines)
