"""setup-bucket's desired state, built by pure functions: lifecycle rules merged with
others' and read back field by field, the TLS-only policy statement, where the policy is
checked, and which settings fail the run."""

from __future__ import annotations

import json

import pytest

from archiver.commands.setup_bucket import (
    SMALL_OBJECTS_STAY,
    SetupOptions,
    SetupReport,
    glacier_days_in_place,
    lifecycle_difference,
    lifecycle_rules,
    merge_lifecycle,
    plain_http_endpoint,
    tls_statement,
)
from archiver.converge import Setting, State, merge_policy
from archiver.settings import Settings

OTHER_RULE = {
    "ID": "logs-expire",
    "Filter": {"Prefix": "logs/"},
    "Status": "Enabled",
    "Expiration": {"Days": 30},
}
GLACIER_ID, ABORT_ID = "archiver-cache-glacier-ir", "archiver-cache-abort-incomplete-uploads"


def test_merge_lifecycle_adds_ours_and_keeps_others() -> None:
    wanted = lifecycle_rules("cache", 90)
    merged = merge_lifecycle([OTHER_RULE], wanted)
    assert merged == [OTHER_RULE, *wanted]
    assert merge_lifecycle(merged, wanted) == merged  # ours replaced, not repeated
    changed = merge_lifecycle(merged, lifecycle_rules("cache", 30))
    assert changed[0] == OTHER_RULE and len(changed) == 3
    assert changed[1]["Transitions"] == [{"Days": 30, "StorageClass": "GLACIER_IR"}]


def test_lifecycle_difference_reads_back_field_by_field() -> None:
    wanted = lifecycle_rules("cache", 90)
    assert lifecycle_difference([OTHER_RULE, *wanted], None, wanted) is None
    # another shape of the same rules (an And with empty tags) is still in place
    echoed = [
        dict(r, Filter={"And": dict(r["Filter"]["And"], Tags=[])}) if "And" in r["Filter"] else r
        for r in wanted
    ]
    assert lifecycle_difference(echoed, None, wanted) is None
    # a dropped size filter: in place only when the bucket keeps small objects anyway (moto);
    # without that (Ceph RGW) the rule would move every object, small ones too
    no_size = [dict(r, Filter={"Prefix": "cache/"}) for r in wanted]
    assert lifecycle_difference(no_size, SMALL_OBJECTS_STAY, wanted) is None
    problem = lifecycle_difference(no_size, None, wanted)
    assert problem == f"rule {GLACIER_ID}: ObjectSizeGreaterThan is None, not 131072"
    assert "Transitions" in (lifecycle_difference(wanted, None, lifecycle_rules("cache", 91)) or "")
    disabled = [dict(wanted[0], Status="Disabled"), wanted[1]]
    assert "Status is 'Disabled'" in (lifecycle_difference(disabled, None, wanted) or "")
    assert lifecycle_difference([wanted[1]], None, wanted) == f"rule {GLACIER_ID} is missing"


def test_the_glacier_days_in_place_are_read_from_archivers_own_rule() -> None:
    ours = lifecycle_rules("cache", 30)
    assert glacier_days_in_place([OTHER_RULE, *ours], "cache") == 30
    assert glacier_days_in_place(lifecycle_rules("other", 45), "cache") is None  # not ours
    assert glacier_days_in_place([OTHER_RULE], "cache") is None
    assert glacier_days_in_place([], "cache") is None


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
    ours = tls_statement("b")
    document = merge_policy(json.dumps({"Version": "2012-10-17", "Statement": [other]}), ours)
    assert document is not None
    statements = json.loads(document)["Statement"]
    assert statements == [other, ours]
    assert merge_policy(document, ours) is None
    assert json.loads(merge_policy(None, ours) or "")["Statement"] == [ours]


@pytest.mark.parametrize(
    ("endpoint", "flag", "expected"),
    [
        (None, None, (True, None)),  # AWS: its own endpoint over http
        ("https://s3.example.com", None, (True, "http://s3.example.com")),
        ("https://s3.example.com:443", None, (True, "http://s3.example.com")),
        ("https://127.0.0.1:8443", None, (False, None)),  # no way to guess the http port
        ("https://127.0.0.1:8443", "http://127.0.0.1:8080", (True, "http://127.0.0.1:8080")),
    ],
)
def test_where_the_tls_policy_is_checked(endpoint, flag, expected) -> None:
    settings = Settings(endpoint_url=endpoint)
    options = SetupOptions(region="us-east-1", http_endpoint_url=flag)
    assert plain_http_endpoint(settings, options) == expected


def test_only_safety_settings_that_were_not_applied_fail_the_run() -> None:
    report = SetupReport(bucket="b", exists=True)
    report.settings = {
        "public access block": Setting(State.CHANGED),
        "default encryption": Setting(State.REFUSED, "InvalidArgument (HTTP 400)"),
        "lifecycle": Setting(State.UNSUPPORTED, "size filter dropped"),
        "write probe": Setting(State.OK),
    }
    assert report.exit_code == 0 and report.not_applied == []
    report.settings["write probe"] = Setting(State.REFUSED, "S3 denied s3:PutObject")
    assert report.exit_code == 1 and report.not_applied == ["write probe"]
    report.settings["public access block"] = Setting(State.UNSUPPORTED)
    assert report.not_applied == ["public access block", "write probe"]
    assert report.as_json()["settings"]["write_probe"] == {
        "state": "refused",
        "detail": "S3 denied s3:PutObject",
    }
