"""setup-cdn and url, the pure parts: the distribution archiver wants, its bucket policy
statement and Sid, CDN domains and URL expiry."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from archiver.commands.setup_cdn import (
    CACHING_OPTIMIZED,
    ORIGIN_ID,
    WantedDistribution,
    cdn_statement,
    comment,
    statement_sid,
)
from archiver.commands.url import cdn_domain
from archiver.converge import merge_policy
from archiver.errors import ConfigError
from archiver.settings import parse_duration

# -- pure -----------------------------------------------------------------------------------


def wanted(key_group: str | None = None) -> WantedDistribution:
    return WantedDistribution(
        "archiver: s3://b/cache/", "b.s3.us-east-1.amazonaws.com", "OAC1", key_group
    )


def test_a_new_distribution_is_what_archiver_wants() -> None:
    config = wanted("KG1").new()
    assert wanted("KG1").difference(config) is None
    behaviour = config["DefaultCacheBehavior"]
    assert behaviour["ViewerProtocolPolicy"] == "redirect-to-https"
    assert behaviour["CachePolicyId"] == CACHING_OPTIMIZED
    assert behaviour["TrustedKeyGroups"] == {"Enabled": True, "Quantity": 1, "Items": ["KG1"]}
    assert config["Origins"]["Items"][0]["OriginAccessControlId"] == "OAC1"


def test_merging_keeps_what_archiver_does_not_own() -> None:
    other_origin = {"Id": "app", "DomainName": "app.example.com"}
    current = {
        "Comment": "archiver: s3://b/cache/",
        "Aliases": {"Quantity": 1, "Items": ["media.example.com"]},
        "Origins": {"Quantity": 1, "Items": [other_origin]},
        "DefaultCacheBehavior": {
            "TargetOriginId": "app",
            "ViewerProtocolPolicy": "allow-all",
            "ForwardedValues": {"QueryString": False},
            "MinTTL": 0,
            "TrustedKeyGroups": {"Enabled": True, "Quantity": 1, "Items": ["OLD"]},
        },
        "Enabled": False,
    }
    assert wanted().difference(current) == f"no origin {ORIGIN_ID}"
    merged = wanted().merged(current)
    assert wanted().difference(merged) is None
    assert merged["Aliases"] == current["Aliases"]
    assert merged["Origins"]["Items"][0] == other_origin
    assert "ForwardedValues" not in merged["DefaultCacheBehavior"]  # a cache policy replaces it
    # Without --signed, the key groups a distribution trusts are left as they are.
    assert merged["DefaultCacheBehavior"]["TrustedKeyGroups"]["Items"] == ["OLD"]
    # With it, ours is added beside them: another signer's URLs keep working.
    signed = wanted("KG1").merged(current)["DefaultCacheBehavior"]["TrustedKeyGroups"]
    assert signed == {"Enabled": True, "Quantity": 2, "Items": ["OLD", "KG1"]}
    assert wanted("KG1").difference(wanted("KG1").merged(current)) is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda c: c["Origins"]["Items"][0].update(OriginAccessControlId=""),
            "OriginAccessControlId",
        ),
        (lambda c: c["Origins"]["Items"][0].update(DomainName="x.s3.amazonaws.com"), "DomainName"),
        (
            lambda c: c["DefaultCacheBehavior"].update(ViewerProtocolPolicy="allow-all"),
            "ViewerProtocol",
        ),
        (lambda c: c["DefaultCacheBehavior"].update(CachePolicyId="other"), "CachePolicyId"),
        (
            lambda c: c["DefaultCacheBehavior"]["TrustedKeyGroups"].update(Enabled=False),
            "signed URLs",
        ),
        (lambda c: c.update(Enabled=False), "disabled"),
    ],
)
def test_each_difference_is_named(change: Any, expected: str) -> None:
    config = wanted("KG1").new()
    change(config)
    assert expected in (wanted("KG1").difference(config) or "")


def test_the_policy_statement_is_for_one_distribution_and_keeps_the_others() -> None:
    arn = "arn:aws:cloudfront::1:distribution/E1"
    ours = cdn_statement("b", "media/cache", arn)
    assert ours["Resource"] == "arn:aws:s3:::b/media/cache/*"
    assert ours["Condition"] == {"StringEquals": {"AWS:SourceArn": arn}}
    assert ours["Sid"] == statement_sid("media/cache")
    assert ours["Sid"].startswith("archiver-cloudfront-read-media-cache-")
    # Issue 30, item 9: prefixes that slug alike keep a statement each.
    assert statement_sid("media/cache") != statement_sid("media-cache")
    sibling = cdn_statement("b", "media-cache", arn)
    both = json.loads(merge_policy(merge_policy(None, ours), sibling) or "")["Statement"]
    assert both == [ours, sibling]
    other = {"Sid": "Other", "Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": "*"}
    document = merge_policy(json.dumps({"Statement": [other]}), ours)
    assert json.loads(document or "")["Statement"] == [other, ours]
    moved = cdn_statement("b", "media/cache", "arn:aws:cloudfront::1:distribution/E2")
    assert json.loads(merge_policy(document, moved) or "")["Statement"] == [other, moved]


@pytest.mark.parametrize(
    ("text", "seconds"), [("3600", 3600), ("90s", 90), ("15m", 900), ("12H", 43200), ("7d", 604800)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "1w", "-5", "1.5h", "h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_cdn_domains() -> None:
    assert cdn_domain("https://d1.cloudfront.net/") == "d1.cloudfront.net"
    assert cdn_domain("media.example.com") == "media.example.com"
    for bad in ("d1.cloudfront.net/path", "http://d1.cloudfront.net", "localhost", "a b.com"):
        with pytest.raises(ConfigError):
            cdn_domain(bad)


def ours(cloudfront: Any, bucket: str) -> list[dict[str, Any]]:
    items = cloudfront.list_distributions()["DistributionList"].get("Items") or []
    return [d for d in items if d["Comment"] == comment(bucket, "cache")]


# -- archiver url ---------------------------------------------------------------------------


def test_temporary_credentials_shorten_what_expires_at_promises() -> None:
    """Issue 30, item 8: a presigned URL stops working when the session that signed it
    ends, whatever X-Amz-Expires says: expires_at says when, and a note why."""
    from archiver.commands.url import temporary_limit

    asked = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    assert temporary_limit(asked, False, None) == (asked, None)
    sooner = datetime(2026, 12, 3, 10, 30, 15, 999, tzinfo=UTC)
    ends, note = temporary_limit(asked, True, sooner)
    assert ends == sooner.replace(microsecond=0) and "2026-12-03T10:30:15" in (note or "")
    assert temporary_limit(asked, True, datetime(2026, 12, 4, tzinfo=UTC)) == (asked, None)
    ends, note = temporary_limit(asked, True, None)
    assert ends == asked and "may be before expires_at" in (note or "")


class RefusingCloudFront:
    """A CloudFront whose credentials may list but not create (a fake: the refusal path)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def list_all(self, method: str, _list_key: str) -> list[dict[str, Any]]:
        self.calls.append(method)
        return []

    async def call(self, method: str, **_params: Any) -> dict[str, Any]:
        from archiver.errors import SettingRefused

        self.calls.append(method)
        raise SettingRefused(f"AccessDenied: these credentials need cloudfront:{method}")


class BucketOnly:
    async def bucket_region(self) -> str:
        return "eu-west-1"


async def test_a_refused_origin_access_control_leaves_the_distribution_alone() -> None:
    from archiver.commands.setup_cdn import CdnOptions, format_cdn, setup_cdn
    from archiver.settings import Settings

    cf = RefusingCloudFront()
    report = await setup_cdn(BucketOnly(), cf, Settings(bucket="bkt"), CdnOptions())  # type: ignore[arg-type]
    states = {name: s.state.name for name, s in report.settings.items()}
    assert states == {"origin access control": "REFUSED", "distribution": "LEFT_ALONE"}
    assert (
        "cloudfront:create_origin_access_control" in report.settings["origin access control"].detail
    )
    assert cf.calls == ["list_origin_access_controls", "create_origin_access_control"]
    assert report.exit_code == 1
    assert "Not set up: origin access control could not be applied." in format_cdn(report)


def test_a_key_file_in_a_directory_that_does_not_exist_is_one_plain_line(tmp_path) -> None:
    from archiver.cloudfront import ensure_private_key
    from archiver.errors import ConfigError

    path = tmp_path / "no" / "such" / "cloudfront.pem"
    with pytest.raises(ConfigError) as caught:
        ensure_private_key(path, create=True)
    message = str(caught.value)
    assert f"its directory {path.parent} does not exist" in message and "Errno" not in message
    assert not path.parent.exists()  # nothing made
