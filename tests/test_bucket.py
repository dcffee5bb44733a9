"""`archiver setup-bucket`: desired state (pure) and the real thing against moto."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest

from archiver.bucket import (
    CHANGED,
    IN_PLACE,
    SetupOptions,
    _tls_policy,
    lifecycle_rules,
    merge_lifecycle,
    merge_policy,
    setup_bucket,
    tls_statement,
)
from archiver.settings import Settings
from archiver.storage import Storage
from tests.helpers import run_cli

OTHER_RULE = {
    "ID": "logs-expire",
    "Filter": {"Prefix": "logs/"},
    "Status": "Enabled",
    "Expiration": {"Days": 30},
}


def test_merge_lifecycle_adds_ours_and_keeps_others() -> None:
    wanted = lifecycle_rules("cache", 90)
    merged = merge_lifecycle([OTHER_RULE], wanted)
    assert merged == [OTHER_RULE, *wanted]
    assert merge_lifecycle(merged, wanted) is None  # in place: nothing to do
    # the server may echo a rule in another shape: still in place
    echoed = [
        dict(r, Filter={"And": dict(r["Filter"]["And"], Tags=[])}) if "And" in r["Filter"] else r
        for r in wanted
    ]
    assert merge_lifecycle([OTHER_RULE, *echoed], wanted) is None
    # an echo without the size filter (moto keeps none) is still in place, another day count not
    no_size = [
        dict(r, Filter={"And": {"Prefix": "cache/"}}) if "And" in r["Filter"] else r for r in wanted
    ]
    assert merge_lifecycle(no_size, wanted) is None
    assert merge_lifecycle(no_size, lifecycle_rules("cache", 91)) is not None
    # a changed day count replaces our rule only
    changed = merge_lifecycle(merged, lifecycle_rules("cache", 30))
    assert changed is not None and changed[0] == OTHER_RULE and len(changed) == 3
    assert changed[1]["Transitions"] == [{"Days": 30, "StorageClass": "GLACIER_IR"}]


def test_lifecycle_rules_only_move_objects_over_128_kib() -> None:
    glacier, abort = lifecycle_rules("media/cache", 90)
    assert glacier["Filter"]["And"] == {"Prefix": "media/cache/", "ObjectSizeGreaterThan": 131072}
    assert abort["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}


def test_merge_policy_keeps_other_statements() -> None:
    other = {
        "Sid": "ReadForCdn",
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::1:root"},
        "Action": "s3:GetObject",
        "Resource": "arn:aws:s3:::b/*",
    }
    document = merge_policy(json.dumps({"Version": "2012-10-17", "Statement": [other]}), "b")
    assert document is not None
    statements = json.loads(document)["Statement"]
    assert statements == [other, tls_statement("b")]
    assert merge_policy(document, "b") is None
    assert json.loads(merge_policy(None, "b") or "")["Statement"] == [tls_statement("b")]


def storage_settings(endpoint: str, bucket: str, region: str = "us-east-1") -> Settings:
    return Settings(bucket=bucket, endpoint_url=endpoint, region=region)


async def run_setup(settings: Settings, **options: object):
    async with Storage.open(settings, max_connections=2) as store:
        return await setup_bucket(store, settings, SetupOptions(region=settings.region, **options))  # type: ignore[arg-type]


def new_name() -> str:
    return f"setup-{uuid.uuid4().hex[:12]}"


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
async def test_creates_the_bucket_and_every_setting_reads_back(s3_endpoint, s3, region) -> None:
    name = new_name()
    report = await run_setup(storage_settings(s3_endpoint, name, region), enable_versioning=True)
    assert report.created and report.exists and report.region == region

    location = s3.get_bucket_location(Bucket=name)["LocationConstraint"]
    assert (location or "us-east-1") == region
    pab = s3.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"]
    assert pab == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    rules = s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert s3.get_bucket_versioning(Bucket=name)["Status"] == "Enabled"
    response = s3.get_bucket_lifecycle_configuration(Bucket=name)
    lifecycle = response["Rules"]
    assert merge_lifecycle(lifecycle, lifecycle_rules("cache", 90)) is None
    # moto does not keep ObjectSizeGreaterThan in a rule; the bucket-wide minimum size does
    # the same job (GLACIER_IR bills at least 128 KiB per object).
    assert response["TransitionDefaultMinimumObjectSize"] == "all_storage_classes_128K"
    glacier = next(r for r in lifecycle if r["ID"] == "archiver-cache-glacier-ir")
    assert glacier["Transitions"] == [{"Days": 90, "StorageClass": "GLACIER_IR"}]
    prefix = glacier["Filter"].get("And", glacier["Filter"]).get("Prefix")
    assert prefix == "cache/"
    assert {r["ID"] for r in lifecycle} == {
        "archiver-cache-glacier-ir",
        "archiver-cache-abort-incomplete-uploads",
    }
    # the write probe cleaned up after itself, versions included
    versions = s3.list_object_versions(Bucket=name)
    assert not versions.get("Versions") and not versions.get("DeleteMarkers")
    assert report.settings["write probe"].startswith("ok")
    assert report.settings["TLS-only policy"].startswith("skipped: the endpoint is plain HTTP")


async def test_a_second_run_changes_nothing(s3_endpoint, s3) -> None:
    settings = storage_settings(s3_endpoint, new_name())
    first = await run_setup(settings)
    assert first.changed
    assert all(not v.startswith(CHANGED) for v in (await run_setup(settings)).settings.values())
    second = await run_setup(settings)
    assert not second.changed and not second.created
    assert second.settings["public access block"] == IN_PLACE
    assert second.settings["lifecycle"] == IN_PLACE
    assert second.settings["default encryption"].startswith(IN_PLACE)


async def test_other_lifecycle_rules_are_kept(s3_endpoint, s3) -> None:
    name = new_name()
    s3.create_bucket(Bucket=name)
    s3.put_bucket_lifecycle_configuration(
        Bucket=name, LifecycleConfiguration={"Rules": [OTHER_RULE]}
    )
    report = await run_setup(storage_settings(s3_endpoint, name))
    assert not report.created
    ids = {r["ID"] for r in s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]}
    assert ids == {
        "logs-expire",
        "archiver-cache-glacier-ir",
        "archiver-cache-abort-incomplete-uploads",
    }


async def test_skip_lifecycle_leaves_it_alone(s3_endpoint, s3) -> None:
    name = new_name()
    report = await run_setup(storage_settings(s3_endpoint, name), skip_lifecycle=True)
    assert report.settings["lifecycle"].startswith("left alone")
    with pytest.raises(s3.exceptions.ClientError):
        s3.get_bucket_lifecycle_configuration(Bucket=name)


async def test_tls_only_policy_over_https(s3_tls, monkeypatch) -> None:
    # Only the policy step: moto ignores policy Conditions, so after this Deny it refuses
    # every object request (real S3 refuses only those without TLS), and a full setup's
    # write probe would fail there for moto's reason, not ours.
    endpoint, ca_file = s3_tls
    monkeypatch.setenv("AWS_CA_BUNDLE", ca_file)
    name = new_name()
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", verify=ca_file)
    client.create_bucket(Bucket=name)
    other = {
        "Sid": "Keep",
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::1:root"},
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{name}/*",
    }
    client.put_bucket_policy(
        Bucket=name, Policy=json.dumps({"Version": "2012-10-17", "Statement": [other]})
    )
    settings = storage_settings(endpoint, name)
    options = SetupOptions(region="us-east-1")
    async with Storage.open(settings, max_connections=2) as store:
        assert (await _tls_policy(store, settings, options)).startswith(CHANGED)
        policy = json.loads(client.get_bucket_policy(Bucket=name)["Policy"])
        assert tls_statement(name) in policy["Statement"]
        assert other in policy["Statement"]  # the owner's own statement is kept
        assert await _tls_policy(store, settings, options) == IN_PLACE


def test_cli_check_only_absent_then_present(env, s3) -> None:
    name = new_name()
    out = run_cli(env, "setup-bucket", "--bucket", name, "--check-only")
    assert out.returncode == 1, out.stderr
    assert "does not exist" in out.stdout
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]  # nothing created

    out = run_cli(env, "setup-bucket", "--bucket", name, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["created"] is True

    s3.delete_bucket_lifecycle(Bucket=name)
    out = run_cli(env, "setup-bucket", "--bucket", name, "--check-only", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["settings"]["lifecycle"].startswith("would change")
    with pytest.raises(s3.exceptions.ClientError):  # check-only changed nothing
        s3.get_bucket_lifecycle_configuration(Bucket=name)

    out = run_cli(env, "setup-bucket", "--bucket", name)
    assert out.returncode == 0 and "Done" in out.stdout
    out = run_cli(env, "setup-bucket", "--bucket", name)
    assert out.returncode == 0 and "Nothing changed" in out.stdout, out.stdout
