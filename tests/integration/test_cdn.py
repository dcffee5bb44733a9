"""Serving the archive: `setup-cdn` on moto's CloudFront (distribution, origin access control,
public key, key group) and the bucket's policy, `archiver url` (CDN URL, signed CloudFront
URL checked against the registered public key, presigned S3 URL fetched with a plain GET
from moto and RGW), all through the real command; and the pure parts, without a server."""

from __future__ import annotations

import base64
import json
import os
import random
import stat
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from archiver.commands.setup_cdn import (
    CACHING_OPTIMIZED,
    cdn_statement,
    comment,
    statement_sid,
)
from archiver.demo.sample import SampleRow, file_bytes, insert_rows
from tests.helpers import both_servers, md5, media_file, run_cli, upload

# -- pure -----------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def moto_keeps_the_origin_access_control() -> Iterator[None]:
    """moto 5.2.5 drops an origin's OriginAccessControlId when it stores a
    distribution. The test server keeps it (the field as sent), so that what archiver
    configured can be read back; archiver itself is not changed for moto."""
    from moto.cloudfront import models

    original = models.Origin.__init__

    def init(self: Any, origin: dict[str, Any]) -> None:
        original(self, origin)
        self.origin_access_control_id = origin.get("OriginAccessControlId", "")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models.Origin, "__init__", init)
        yield


# -- setup-cdn on moto ----------------------------------------------------------------------


@pytest.fixture
def cloudfront(moto_server: Any) -> Any:
    return boto3.client("cloudfront", endpoint_url=moto_server.url, region_name="us-east-1")


def cdn_cli(env: Any, *args: str, **extra: str) -> Any:
    return run_cli(env, "setup-cdn", *args, AWS_ENDPOINT_URL_CLOUDFRONT=env.endpoint, **extra)


def ours(cloudfront: Any, bucket: str) -> list[dict[str, Any]]:
    items = cloudfront.list_distributions()["DistributionList"].get("Items") or []
    return [d for d in items if d["Comment"] == comment(bucket, "cache")]


def test_setup_cdn_creates_it_as_stored_and_a_second_run_changes_nothing(
    env, s3, cloudfront
) -> None:
    other = {
        "Sid": "AppReadsThumbnails",
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::123456789012:role/app"},
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{env.bucket}/thumbs/*",
    }
    s3.put_bucket_policy(
        Bucket=env.bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [other]})
    )
    assert run_cli(env, "setup-bucket").returncode == 0  # Block Public Access on, TLS policy

    check = cdn_cli(env, "--check-only", "--json")
    assert check.returncode == 1, check.stderr
    assert json.loads(check.stdout)["settings"]["distribution"]["state"] == "would_change"
    assert ours(cloudfront, env.bucket) == []  # --check-only made nothing

    first = cdn_cli(env, "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["changed"] is True
    assert {k: v["state"] for k, v in report["settings"].items()} == {
        "origin_access_control": "changed",
        "distribution": "changed",
        "bucket_policy": "changed",
    }
    [summary] = ours(cloudfront, env.bucket)
    assert report["distribution_id"] == summary["Id"]
    assert report["domain"] == summary["DomainName"]
    assert report["env"] == {"ARCHIVER_CDN_DOMAIN": summary["DomainName"]}

    # The distribution as stored: its S3 origin through the OAC, HTTPS only, GET/HEAD,
    # CachingOptimized, unsigned.
    config = cloudfront.get_distribution_config(Id=summary["Id"])["DistributionConfig"]
    [origin] = config["Origins"]["Items"]
    assert origin["DomainName"] == f"{env.bucket}.s3.us-east-1.amazonaws.com"
    assert not (origin.get("S3OriginConfig") or {}).get("OriginAccessIdentity")  # no legacy OAI
    oac = cloudfront.get_origin_access_control(Id=origin["OriginAccessControlId"])
    oac_config = oac["OriginAccessControl"]["OriginAccessControlConfig"]
    assert (oac_config["SigningProtocol"], oac_config["SigningBehavior"]) == ("sigv4", "always")
    assert oac_config["OriginAccessControlOriginType"] == "s3"
    behaviour = config["DefaultCacheBehavior"]
    assert behaviour["TargetOriginId"] == origin["Id"]
    assert behaviour["ViewerProtocolPolicy"] == "redirect-to-https"
    assert behaviour["CachePolicyId"] == CACHING_OPTIMIZED
    assert sorted(behaviour["AllowedMethods"]["Items"]) == ["GET", "HEAD"]
    assert behaviour["TrustedKeyGroups"]["Enabled"] is False

    # The bucket policy: the app's statement and the TLS one kept, ours for this distribution
    # only; Block Public Access still on.
    policy = json.loads(s3.get_bucket_policy(Bucket=env.bucket)["Policy"])
    # (setup-bucket leaves the TLS-only statement out over plain HTTP, as moto is here.)
    sids = [s["Sid"] for s in policy["Statement"]]
    assert sids == ["AppReadsThumbnails", statement_sid("cache")]
    assert other in policy["Statement"]
    assert cdn_statement(env.bucket, "cache", summary["ARN"]) in policy["Statement"]
    block = s3.get_public_access_block(Bucket=env.bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values())

    second = cdn_cli(env, "--json")
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert again["changed"] is False
    assert {v["state"] for v in again["settings"].values()} == {"in_place"}
    assert again["distribution_id"] == summary["Id"]
    assert len(ours(cloudfront, env.bucket)) == 1
    assert json.loads(s3.get_bucket_policy(Bucket=env.bucket)["Policy"]) == policy
    text = cdn_cli(env)
    assert "Nothing changed" in text.stdout
    assert f"ARCHIVER_CDN_DOMAIN={summary['DomainName']}" in text.stdout
    assert cdn_cli(env, "--check-only").returncode == 0


def test_a_distribution_changed_by_hand_is_put_back(env, cloudfront) -> None:
    assert cdn_cli(env).returncode == 0
    [summary] = ours(cloudfront, env.bucket)
    got = cloudfront.get_distribution_config(Id=summary["Id"])
    config = got["DistributionConfig"]
    config["DefaultCacheBehavior"]["ViewerProtocolPolicy"] = "allow-all"
    cloudfront.update_distribution(Id=summary["Id"], IfMatch=got["ETag"], DistributionConfig=config)

    check = cdn_cli(env, "--check-only")
    assert check.returncode == 1
    assert "would change" in check.stdout
    out = cdn_cli(env, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["settings"]["distribution"]["state"] == "changed"
    stored = cloudfront.get_distribution_config(Id=summary["Id"])["DistributionConfig"]
    assert stored["DefaultCacheBehavior"]["ViewerProtocolPolicy"] == "redirect-to-https"


def test_signed_registers_the_key_and_requires_it(env, cloudfront, tmp_path) -> None:
    key_path = tmp_path / "keys" / "cloudfront.pem"
    key_path.parent.mkdir()
    no_key = cdn_cli(env, "--signed")
    assert no_key.returncode == 2
    assert "--signed needs --cdn-private-key" in no_key.stderr

    out = cdn_cli(env, "--signed", "--json", ARCHIVER_CDN_PRIVATE_KEY=str(key_path))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    pem = key_path.read_text()
    body = "".join(pem.splitlines()[1:-1])
    assert body[:40] not in out.stdout + out.stderr  # the private key is never printed

    registered = cloudfront.get_public_key(Id=report["key_id"])["PublicKey"]["PublicKeyConfig"]
    private = serialization.load_pem_private_key(pem.encode(), password=None)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert registered["EncodedKey"].split() == public.decode().split()
    groups = cloudfront.list_key_groups()["KeyGroupList"]["Items"]
    [group] = [
        g["KeyGroup"]
        for g in groups
        if g["KeyGroup"]["KeyGroupConfig"]["Name"] == f"archiver-{env.bucket}"
    ]
    assert group["KeyGroupConfig"]["Items"] == [report["key_id"]]
    [summary] = ours(cloudfront, env.bucket)
    config = cloudfront.get_distribution_config(Id=summary["Id"])["DistributionConfig"]
    trusted = config["DefaultCacheBehavior"]["TrustedKeyGroups"]
    assert trusted["Enabled"] is True and trusted["Items"] == [group["Id"]]
    assert report["env"] == {
        "ARCHIVER_CDN_DOMAIN": summary["DomainName"],
        "ARCHIVER_CDN_KEY_ID": report["key_id"],
        "ARCHIVER_CDN_PRIVATE_KEY": str(key_path),
    }

    again = cdn_cli(env, "--signed", "--json", ARCHIVER_CDN_PRIVATE_KEY=str(key_path))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["changed"] is False
    assert key_path.read_text() == pem  # an existing key is used, never replaced

    # The same key file, not a PEM key: one line, exit 2, the file's content not echoed.
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key SECRETSECRET\n")
    bad.chmod(0o600)
    out = cdn_cli(env, "--signed", ARCHIVER_CDN_PRIVATE_KEY=str(bad))
    assert out.returncode == 2
    assert "is not an unencrypted PEM private key" in out.stderr
    assert "SECRETSECRET" not in out.stderr + out.stdout
    assert "Traceback" not in out.stderr


def test_a_private_key_open_to_others_is_refused(env, cloudfront, tmp_path) -> None:
    """Issue 30, item 7: as ssh does, a key file that others may read or write is not used
    (it could have been planted; others could sign with it); nothing is registered."""
    key_path = tmp_path / "cloudfront.pem"
    assert cdn_cli(env, "--signed", ARCHIVER_CDN_PRIVATE_KEY=str(key_path)).returncode == 0
    pem = key_path.read_text()
    registered = len(cloudfront.list_public_keys()["PublicKeyList"].get("Items") or [])
    for mode in (0o644, 0o660, 0o602):
        key_path.chmod(mode)
        out = cdn_cli(env, "--signed", ARCHIVER_CDN_PRIVATE_KEY=str(key_path))
        assert out.returncode == 2, out.stdout
        line = out.stderr.strip()
        assert "\n" not in line and f"mode {mode:04o}" in line and "chmod 600" in line
        assert pem.splitlines()[1] not in out.stdout + out.stderr
        url = run_cli(
            env,
            "url",
            "u000",
            ARCHIVER_CDN_DOMAIN="d1.cloudfront.net",
            ARCHIVER_CDN_KEY_ID="K1",
            ARCHIVER_CDN_PRIVATE_KEY=str(key_path),
        )
        assert url.returncode == 2 and "open to others" in url.stderr, url.stderr
    assert len(cloudfront.list_public_keys()["PublicKeyList"].get("Items") or []) == registered
    key_path.chmod(0o400)
    assert cdn_cli(env, "--signed", ARCHIVER_CDN_PRIVATE_KEY=str(key_path)).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_private_key_owned_by_another_user_is_refused(env, cloudfront, tmp_path) -> None:
    key_path = tmp_path / "cloudfront.pem"
    assert cdn_cli(env, "--signed", ARCHIVER_CDN_PRIVATE_KEY=str(key_path)).returncode == 0
    os.chown(key_path, 65534, 65534)  # nobody: someone else's file at the configured path
    out = cdn_cli(env, "--signed", ARCHIVER_CDN_PRIVATE_KEY=str(key_path))
    assert out.returncode == 2
    assert "owned by uid 65534" in out.stderr and out.stderr.count("\n") == 1


def test_setup_cdn_without_signed_says_what_is_public(env, cloudfront) -> None:
    out = cdn_cli(env, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["public"] is True
    text = cdn_cli(env)
    assert "Public: signed URLs are not required" in text.stdout


def test_setup_cdn_on_a_missing_bucket(env) -> None:
    out = cdn_cli(env, "--bucket", "archiver-no-such-bucket")
    assert out.returncode == 1
    assert "the bucket does not exist" in out.stdout


# -- archiver url ---------------------------------------------------------------------------


async def archived_rows(
    env: Any, db: Any, n: int, *, seed: int = 3
) -> tuple[list[SampleRow], dict[str, bytes]]:
    """`n` rows uploaded and recorded; their bytes by media_id."""
    rng = random.Random(seed)
    rows, data = [], {}
    for i in range(n):
        body = file_bytes(".jpg", 3000 + i, rng)
        media_file(env.cache_root / "images", f"{md5(body)}.jpg", body)
        rows.append(
            SampleRow(f"u{i:03d}", "image", md5(body), "image/jpeg", None, datetime(2025, 12, 3))
        )
        data[rows[-1].media_id] = body
    await insert_rows(db, rows)
    summary = await upload(env)
    assert summary.exit_code == 0
    return rows, data


def get(url: str) -> bytes:
    """A plain HTTP GET, no credentials."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


@both_servers
async def test_presigned_s3_urls_fetch_the_files_bytes(env, db) -> None:
    _rows, data = await archived_rows(env, db, 2)
    await insert_rows(
        db, [SampleRow("u-new", "image", "0" * 32, "image/jpeg", None, datetime(2025, 12, 3))]
    )

    one = run_cli(env, "url", "u000", "--expires", "10m")
    assert one.returncode == 0, one.stderr
    url = one.stdout.strip()
    assert "\n" not in url and "X-Amz-Expires=600" in url
    assert get(url) == data["u000"]

    out = run_cli(env, "url", "u001", "u-new", "u-none", "u000", "--json")
    assert out.returncode == 1  # a row not archived, and one that does not exist
    report = json.loads(out.stdout)
    assert report["kind"] == "s3_presigned"
    assert list(report["urls"]) == ["u001", "u000"]
    for media_id, link in report["urls"].items():
        assert get(link) == data[media_id]
    assert {(p["media_id"], p["kind"]) for p in report["problems"]} == {
        ("u-new", "not_archived"),
        ("u-none", "no_such_row"),
    }
    expires = datetime.fromisoformat(report["expires_at"])
    assert 3500 < (expires - datetime.now(UTC)).total_seconds() <= 3600

    text = run_cli(env, "url", "u001", "u-new")
    assert text.returncode == 1
    assert text.stdout.startswith("u001 http")
    assert "archiver: u-new: not_archived: not archived yet" in text.stderr


async def test_a_row_whose_archive_url_is_not_ours_gets_no_link(env, db) -> None:
    await archived_rows(env, db, 1)
    await db.execute(
        "UPDATE post_media SET archive_url = $1 WHERE media_id = 'u000'",
        "s3://other-bucket/cache/2025/12/x.jpg",
    )
    out = run_cli(env, "url", "u000", "--json", ARCHIVER_CDN_DOMAIN="d1.cloudfront.net")
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["urls"] == {}
    assert report["problems"][0]["kind"] == "invalid"


async def test_cdn_urls_and_signed_urls_verify_with_the_registered_key(
    env, db, cloudfront, tmp_path
) -> None:
    await archived_rows(env, db, 2)
    key_path = tmp_path / "cf.pem"
    setup = cdn_cli(env, "--signed", "--json", ARCHIVER_CDN_PRIVATE_KEY=str(key_path))
    assert setup.returncode == 0, setup.stderr
    cdn_env = json.loads(setup.stdout)["env"]
    domain = cdn_env["ARCHIVER_CDN_DOMAIN"]
    record = await db.fetchval("SELECT archive_url FROM post_media WHERE media_id = 'u000'")
    key = record.removeprefix(f"s3://{env.bucket}/")

    plain = run_cli(env, "url", "u000", ARCHIVER_CDN_DOMAIN=domain)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == f"https://{domain}/{key}"

    signed = run_cli(env, "url", "u000", "u001", "--expires", "2h", "--json", **cdn_env)
    assert signed.returncode == 0, signed.stderr
    report = json.loads(signed.stdout)
    assert report["kind"] == "cdn_signed"
    link = report["urls"]["u000"]
    parts = urlsplit(link)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"https://{domain}/{key}"
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query["Key-Pair-Id"] == cdn_env["ARCHIVER_CDN_KEY_ID"]
    expires = int(query["Expires"])
    assert expires == int(datetime.fromisoformat(report["expires_at"]).timestamp())
    assert 7100 < expires - datetime.now(UTC).timestamp() <= 7200

    # CloudFront's canned policy, rebuilt from its documentation, verified with the public
    # key CloudFront holds (not the private key file).
    resource = f"https://{domain}/{key}"
    policy = json.dumps(
        {
            "Statement": [
                {"Resource": resource, "Condition": {"DateLessThan": {"AWS:EpochTime": expires}}}
            ]
        },
        separators=(",", ":"),
    )
    signature = base64.b64decode(query["Signature"].translate(str.maketrans("-_~", "+=/")))
    registered = cloudfront.get_public_key(Id=query["Key-Pair-Id"])["PublicKey"]
    public = serialization.load_pem_public_key(registered["PublicKeyConfig"]["EncodedKey"].encode())
    public.verify(signature, policy.encode(), padding.PKCS1v15(), hashes.SHA1())  # raises if bad
    with pytest.raises(InvalidSignature):  # and it is this policy that was signed
        tampered = policy.replace(str(expires), str(expires + 1)).encode()
        public.verify(signature, tampered, padding.PKCS1v15(), hashes.SHA1())

    # A key id without its private key (or the reverse), or a key pair without a domain: exit 2.
    for extra in (
        {"ARCHIVER_CDN_DOMAIN": domain, "ARCHIVER_CDN_KEY_ID": "K1"},
        {"ARCHIVER_CDN_KEY_ID": "K1", "ARCHIVER_CDN_PRIVATE_KEY": str(key_path)},
    ):
        out = run_cli(env, "url", "u000", **extra)
        assert out.returncode == 2, out.stderr
        assert out.stderr.count("\n") == 1 and "archiver: error:" in out.stderr
    too_long = run_cli(env, "url", "u000", "--expires", "8d")
    assert too_long.returncode == 2
    assert "at most 7 days" in too_long.stderr
    signed_env = {
        "ARCHIVER_CDN_DOMAIN": domain,
        "ARCHIVER_CDN_KEY_ID": "K1",
        "ARCHIVER_CDN_PRIVATE_KEY": str(key_path),
    }
    for expires in ("366d", "36500d", "99999999999999999999d"):
        out = run_cli(env, "url", "u000", "--expires", expires, **signed_env)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.count("\n") == 1 and "at most 365 days" in out.stderr


async def test_a_presigned_url_with_a_session_token_says_it_may_end_sooner(env, db) -> None:
    await archived_rows(env, db, 1)
    out = run_cli(env, "url", "u000", "--json", AWS_SESSION_TOKEN="session-token")
    assert out.returncode == 0, out.stderr
    assert "temporary credentials" in json.loads(out.stdout)["note"]
    assert "X-Amz-Security-Token=session-token" in json.loads(out.stdout)["urls"]["u000"]
    text = run_cli(env, "url", "u000", AWS_SESSION_TOKEN="session-token")
    assert text.returncode == 0 and "archiver: note: signed with temporary" in text.stderr
    plain = run_cli(env, "url", "u000", "--json")
    assert json.loads(plain.stdout)["note"] is None


def test_url_needs_a_media_id(offline_env) -> None:
    env = offline_env
    out = run_cli(env, "url")
    assert out.returncode == 2
    assert "Missing argument" in out.stderr


@pytest.fixture(autouse=True)
def _no_cdn_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CDN variables come from each test, never from the machine's environment."""
    for name in ("ARCHIVER_CDN_DOMAIN", "ARCHIVER_CDN_KEY_ID", "ARCHIVER_CDN_PRIVATE_KEY"):
        monkeypatch.delenv(name, raising=False)
