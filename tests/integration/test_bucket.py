"""`archiver setup-bucket`: desired state (pure) and the real thing on moto and Ceph RGW."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest

from archiver.commands.setup_bucket import (
    SMALL_OBJECTS_STAY,
    SetupOptions,
    SetupReport,
    _tls_policy,
    setup_bucket,
    tls_statement,
)
from archiver.converge import Setting, State
from archiver.settings import Settings
from archiver.storage import Storage
from tests.helpers import both_servers, run_cli
from tests.proxy import Respond
from tests.unit.test_setup_bucket import ABORT_ID, GLACIER_ID, OTHER_RULE


def storage_settings(endpoint: str, bucket: str, region: str = "us-east-1") -> Settings:
    return Settings(bucket=bucket, endpoint_url=endpoint, region=region)


async def run_setup(settings: Settings, **options: object):
    async with Storage.open(settings, max_connections=2) as store:
        return await setup_bucket(store, settings, SetupOptions(region=settings.region, **options))  # type: ignore[arg-type]


def new_name() -> str:
    return f"setup-{uuid.uuid4().hex[:12]}"


def states(report: SetupReport) -> dict[str, State]:
    return {name: setting.state for name, setting in report.settings.items()}


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
async def test_creates_the_bucket_and_every_setting_reads_back(s3_endpoint, s3, region) -> None:
    name = new_name()
    report = await run_setup(storage_settings(s3_endpoint, name, region), enable_versioning=True)
    assert report.created and report.exists and report.region == region
    assert report.exit_code == 0, report.settings
    assert states(report) == {
        "public access block": State.CHANGED,
        "default encryption": State.CHANGED,
        "TLS-only policy": State.LEFT_ALONE,  # plain http: it would lock archiver out
        "versioning": State.CHANGED,
        "lifecycle": State.CHANGED,
        "write probe": State.OK,
    }
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
    # moto does not keep ObjectSizeGreaterThan in a rule; the bucket-wide minimum size does
    # the same job (GLACIER_IR bills at least 128 KiB per object).
    assert response["TransitionDefaultMinimumObjectSize"] == SMALL_OBJECTS_STAY
    glacier = next(r for r in response["Rules"] if r["ID"] == GLACIER_ID)
    assert glacier["Transitions"] == [{"Days": 90, "StorageClass": "GLACIER_IR"}]
    assert glacier["Status"] == "Enabled"
    assert {r["ID"] for r in response["Rules"]} == {GLACIER_ID, ABORT_ID}
    # the write probe cleaned up after itself, versions included
    versions = s3.list_object_versions(Bucket=name)
    assert not versions.get("Versions") and not versions.get("DeleteMarkers")


async def test_on_rgw_each_setting_is_reported_and_the_rest_still_run(rgw_server) -> None:
    s3 = boto3.client("s3", endpoint_url=rgw_server.url, region_name="us-east-1")
    name = new_name()
    settings = storage_settings(rgw_server.url, name)
    report = await run_setup(settings, enable_versioning=True)
    assert report.created and report.region == "default"  # RGW names its zonegroup
    got = states(report)
    # RGW 16 refuses default encryption with 400 InvalidArgument: reported, the rest run on
    assert got["default encryption"] is State.REFUSED
    assert "InvalidArgument (HTTP 400)" in report.settings["default encryption"].detail
    assert got["public access block"] is State.CHANGED
    assert got["versioning"] is State.CHANGED
    assert s3.get_bucket_versioning(Bucket=name)["Status"] == "Enabled"
    # it drops the size filter: the GLACIER_IR rule would move small objects, so it is not
    # left in place (not even for a moment: it went in disabled), the abort rule is
    assert got["lifecycle"] is State.UNSUPPORTED
    assert "ObjectSizeGreaterThan" in report.settings["lifecycle"].detail
    rules = s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]
    assert [r["ID"] for r in rules] == [ABORT_ID]
    # with BlockPublicAcls on it refuses every PutObject (Ceph tracker 49135): the write
    # probe, done as an upload does it, says so, and the run fails
    assert got["write probe"] is State.REFUSED
    assert "s3:PutObject" in report.settings["write probe"].detail
    assert "49135" in report.settings["write probe"].detail
    assert report.exit_code == 1 and report.not_applied == ["write probe"]

    fixed = await run_setup(settings, block_public_acls=False)
    assert states(fixed)["public access block"] is State.CHANGED
    assert states(fixed)["write probe"] is State.OK
    assert fixed.exit_code == 0
    pab = s3.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"]
    assert pab["BlockPublicAcls"] is False and pab["IgnorePublicAcls"] is True
    again = await run_setup(settings, block_public_acls=False)
    assert not again.changed and again.exit_code == 0
    assert states(again)["lifecycle"] is State.UNSUPPORTED  # the same honest report
    versions = s3.list_object_versions(Bucket=name)
    assert not versions.get("Versions") and not versions.get("DeleteMarkers")


@both_servers
async def test_a_second_run_changes_nothing(s3_server, s3_endpoint, s3) -> None:
    settings = storage_settings(s3_endpoint, new_name())
    options = {"block_public_acls": s3_server.name != "rgw"}
    first = await run_setup(settings, **options)
    assert first.changed and first.exit_code == 0, first.settings
    second = await run_setup(settings, **options)
    assert not second.changed and not second.created and second.exit_code == 0
    assert State.CHANGED not in states(second).values()
    assert states(second)["public access block"] is State.IN_PLACE
    expected_lifecycle = State.IN_PLACE if s3_server.name == "moto" else State.UNSUPPORTED
    assert states(second)["lifecycle"] is expected_lifecycle


@both_servers
async def test_other_lifecycle_rules_are_kept(s3_server, s3_endpoint, s3) -> None:
    name = new_name()
    s3.create_bucket(Bucket=name)
    s3.put_bucket_lifecycle_configuration(
        Bucket=name, LifecycleConfiguration={"Rules": [OTHER_RULE]}
    )
    report = await run_setup(storage_settings(s3_endpoint, name))
    assert not report.created
    ids = {r["ID"] for r in s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]}
    ours = {GLACIER_ID, ABORT_ID} if s3_server.name == "moto" else {ABORT_ID}
    assert ids == {"logs-expire", *ours}


async def test_skip_lifecycle_leaves_it_alone(s3_endpoint, s3) -> None:
    name = new_name()
    report = await run_setup(storage_settings(s3_endpoint, name), skip_lifecycle=True)
    assert report.settings["lifecycle"] == Setting(State.LEFT_ALONE, "--skip-lifecycle")
    with pytest.raises(s3.exceptions.ClientError):
        s3.get_bucket_lifecycle_configuration(Bucket=name)


async def test_tls_only_policy_is_stored_and_enforced_only_when_seen(
    s3_tls, proxy, monkeypatch
) -> None:
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
        stored = await _tls_policy(store, settings, options)
        assert stored.state is State.CHANGED
        assert stored.detail.startswith("stored; enforcement not checked: no plain-HTTP")
        policy = json.loads(client.get_bucket_policy(Bucket=name)["Policy"])
        assert tls_statement(name) in policy["Statement"]
        assert other in policy["Statement"]  # the owner's own statement is kept
        # a plain-HTTP endpoint that refuses the request: enforced
        proxy.rule = lambda request: Respond(403, "AccessDenied")
        seen = SetupOptions(region="us-east-1", http_endpoint_url=proxy.url)
        enforced = await _tls_policy(store, settings, seen)
        assert enforced == Setting(
            State.IN_PLACE, "stored; enforced (a plain-HTTP request was refused)"
        )
        assert [r.method for r in proxy.arrived] == ["HEAD"]


async def test_on_rgw_the_tls_policy_is_stored_but_not_enforced(rgw_server, monkeypatch) -> None:
    assert rgw_server.tls_url and rgw_server.ca_file
    monkeypatch.setenv("AWS_CA_BUNDLE", rgw_server.ca_file)
    name = new_name()
    settings = storage_settings(rgw_server.tls_url, name)
    report = await run_setup(settings, block_public_acls=False, http_endpoint_url=rgw_server.url)
    policy = report.settings["TLS-only policy"]
    assert policy.state is State.CHANGED
    assert policy.detail.startswith("stored; NOT enforced: a plain-HTTP request to ")
    assert "answered 404" in policy.detail
    assert report.settings["write probe"].state is State.OK and report.exit_code == 0


@both_servers
def test_cli_check_only_absent_then_present(s3_server, env, s3) -> None:
    name = new_name()
    out = run_cli(env, "setup-bucket", "--bucket", name, "--check-only")
    assert out.returncode == 1, out.stderr
    assert "does not exist" in out.stdout
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]  # nothing created

    out = run_cli(env, "setup-bucket", "--bucket", name, "--json")
    report = json.loads(out.stdout)  # printed whatever the outcome
    assert report["created"] is True
    if s3_server.name == "rgw":
        assert out.returncode == 1 and report["not_applied"] == ["write_probe"]
        assert "49135" in report["settings"]["write_probe"]["detail"]
        assert (
            "Not safe to use yet: write probe"
            in run_cli(env, "setup-bucket", "--bucket", name).stdout
        )
        flags = ["--no-block-public-acls"]
    else:
        assert out.returncode == 0, out.stderr
        flags = []

    s3.delete_bucket_lifecycle(Bucket=name)
    out = run_cli(env, "setup-bucket", "--bucket", name, "--check-only", "--json", *flags)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["settings"]["lifecycle"]["state"] == "would_change"
    with pytest.raises(s3.exceptions.ClientError):  # check-only changed nothing
        s3.get_bucket_lifecycle_configuration(Bucket=name)

    out = run_cli(env, "setup-bucket", "--bucket", name, *flags)
    assert out.returncode == 0 and "Done" in out.stdout, out.stdout
    out = run_cli(env, "setup-bucket", "--bucket", name, *flags)
    assert out.returncode == 0 and "Nothing changed" in out.stdout, out.stdout


def test_cli_rejects_an_https_url_as_the_plain_http_endpoint(env) -> None:
    out = run_cli(env, "setup-bucket", "--http-endpoint-url", "https://127.0.0.1:1")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "archiver: error: --http-endpoint-url 'https://127.0.0.1:1' is not a plain http:// URL"
    ]
