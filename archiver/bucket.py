"""`archiver setup-bucket`: create the bucket and lock it down, idempotently.

Each setting is read back first and changed only when it differs from what archiver wants,
so a second run changes nothing and says so. Lifecycle rules and policy statements of
others are kept: archiver only adds or replaces its own (by rule ID / statement Sid).
The desired state is built by pure functions, tested without a server.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from archiver.settings import Settings
from archiver.storage import Storage, Unsupported

GLACIER_IR_MIN_BYTES = 128 * 1024  # GLACIER_IR bills at least 128 KiB per object
ABORT_INCOMPLETE_DAYS = 7
TLS_SID = "archiver-deny-insecure-transport"

IN_PLACE = "already in place"
CHANGED = "changed"
WOULD_CHANGE = "would change"


@dataclass(frozen=True)
class SetupOptions:
    region: str
    check_only: bool = False
    enable_versioning: bool = False
    skip_lifecycle: bool = False
    glacier_days: int = 90


@dataclass
class SetupReport:
    """What setup-bucket found and did, setting by setting."""

    bucket: str
    region: str | None = None
    exists: bool = False
    created: bool = False
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 when the bucket exists (or was made), 1 when --check-only found none."""
        return 0 if self.exists else 1

    @property
    def changed(self) -> bool:
        return self.created or any(v.startswith(CHANGED) for v in self.settings.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "region": self.region,
            "exists": self.exists,
            "created": self.created,
            "changed": self.changed,
            "settings": dict(self.settings),
        }


# -- desired state (pure) -------------------------------------------------------------------

PUBLIC_ACCESS_BLOCK = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}


def lifecycle_rules(prefix: str, glacier_days: int) -> list[dict[str, Any]]:
    """archiver's two lifecycle rules for `{prefix}/`."""
    return [
        {
            "ID": f"archiver-{prefix}-glacier-ir",
            "Filter": {
                "And": {"Prefix": f"{prefix}/", "ObjectSizeGreaterThan": GLACIER_IR_MIN_BYTES}
            },
            "Status": "Enabled",
            "Transitions": [{"Days": glacier_days, "StorageClass": "GLACIER_IR"}],
        },
        {
            "ID": f"archiver-{prefix}-abort-incomplete-uploads",
            "Filter": {"Prefix": f"{prefix}/"},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_INCOMPLETE_DAYS},
        },
    ]


def _rule_essence(rule: dict[str, Any]) -> tuple[Any, ...]:
    """What matters in a rule, whatever shape the server echoes it back in."""
    filt = rule.get("Filter") or {}
    conj = filt.get("And") or filt
    prefix = conj.get("Prefix", rule.get("Prefix", ""))
    transitions = tuple(
        (t.get("Days"), t.get("StorageClass")) for t in rule.get("Transitions") or []
    )
    abort = (rule.get("AbortIncompleteMultipartUpload") or {}).get("DaysAfterInitiation")
    return (
        rule.get("ID"),
        rule.get("Status"),
        prefix,
        conj.get("ObjectSizeGreaterThan"),
        transitions,
        abort,
    )


def _same_rule(echoed: tuple[Any, ...], wanted: tuple[Any, ...]) -> bool:
    # Some servers (moto) do not keep ObjectSizeGreaterThan; the bucket-wide
    # TransitionDefaultMinimumObjectSize set beside the rules covers that case.
    size = 3
    if echoed[size] is None:
        return echoed[:size] + echoed[size + 1 :] == wanted[:size] + wanted[size + 1 :]
    return echoed == wanted


def merge_lifecycle(
    existing: list[dict[str, Any]], wanted: list[dict[str, Any]]
) -> list[dict[str, Any]] | None:
    """The rules to put (others' rules kept, ours added or replaced), or None when ours are
    already in place."""
    current = {r.get("ID"): _rule_essence(r) for r in existing}
    if all(r["ID"] in current and _same_rule(current[r["ID"]], _rule_essence(r)) for r in wanted):
        return None
    ours = {r["ID"] for r in wanted}
    return [r for r in existing if r.get("ID") not in ours] + wanted


def tls_statement(bucket: str) -> dict[str, Any]:
    """A policy statement denying every request that does not use TLS."""
    return {
        "Sid": TLS_SID,
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def merge_policy(existing: str | None, bucket: str) -> str | None:
    """The policy document to put (others' statements kept), or None when ours is in place."""
    policy: dict[str, Any] = json.loads(existing) if existing else {"Version": "2012-10-17"}
    statements = policy.get("Statement") or []
    if isinstance(statements, dict):
        statements = [statements]
    wanted = tls_statement(bucket)
    if any(_same_statement(s, wanted) for s in statements):
        return None
    policy["Statement"] = [s for s in statements if s.get("Sid") != TLS_SID] + [wanted]
    return json.dumps(policy)


def _same_statement(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def norm(s: dict[str, Any]) -> str:
        s = dict(s)
        for key in ("Resource", "Action"):
            if isinstance(s.get(key), list):
                s[key] = sorted(s[key])
        return json.dumps(s, sort_keys=True)

    return norm(a) == norm(b)


# -- applying it ----------------------------------------------------------------------------


async def setup_bucket(store: Storage, settings: Settings, options: SetupOptions) -> SetupReport:
    """Create (unless check-only) and configure the bucket; the report of what happened."""
    report = SetupReport(bucket=store.bucket)
    region = await store.bucket_region()
    report.exists = region is not None
    if region is None:
        if options.check_only:
            return report
        report.created = await store.create_bucket(options.region)
        report.exists = True
        region = await store.bucket_region() or options.region
    report.region = region
    steps = [
        ("public access block", _public_access_block),
        ("default encryption", _encryption),
        ("TLS-only policy", _tls_policy),
        ("versioning", _versioning),
        ("lifecycle", _lifecycle),
    ]
    for name, step in steps:
        try:
            report.settings[name] = await step(store, settings, options)
        except Unsupported:
            report.settings[name] = "not supported by this S3 server (skipped)"
    if not options.check_only:
        probe = f"{settings.key_prefix}/.archiver-write-probe-{uuid.uuid4().hex[:12]}"
        await store.probe_write(probe)
        report.settings["write probe"] = f"ok (put and deleted {probe})"
    return report


def _outcome(options: SetupOptions, detail: str) -> str:
    return f"{WOULD_CHANGE}: {detail}" if options.check_only else f"{CHANGED}: {detail}"


async def _public_access_block(store: Storage, _s: Settings, options: SetupOptions) -> str:
    current = await store.get_setting(
        "get_public_access_block", ("NoSuchPublicAccessBlockConfiguration",)
    )
    config = (current or {}).get("PublicAccessBlockConfiguration") or {}
    if all(config.get(k) is True for k in PUBLIC_ACCESS_BLOCK):
        return IN_PLACE
    if not options.check_only:
        await store.put_setting(
            "put_public_access_block", PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK
        )
    return _outcome(options, "all four Block Public Access flags on")


async def _encryption(store: Storage, _s: Settings, options: SetupOptions) -> str:
    current = await store.get_setting(
        "get_bucket_encryption", ("ServerSideEncryptionConfigurationNotFoundError",)
    )
    rules = ((current or {}).get("ServerSideEncryptionConfiguration") or {}).get("Rules") or []
    algorithms = {
        (r.get("ApplyServerSideEncryptionByDefault") or {}).get("SSEAlgorithm") for r in rules
    }
    if "AES256" in algorithms:
        return f"{IN_PLACE} (SSE-S3)"
    if algorithms & {"aws:kms", "aws:kms:dsse"}:
        return f"{IN_PLACE} (SSE-KMS, kept)"
    if not options.check_only:
        await store.put_setting(
            "put_bucket_encryption",
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
        )
    return _outcome(options, "default encryption SSE-S3")


async def _tls_policy(store: Storage, settings: Settings, options: SetupOptions) -> str:
    if settings.endpoint_url and settings.endpoint_url.startswith("http://"):
        # The policy denies every plain-HTTP request, this client's included.
        return "skipped: the endpoint is plain HTTP (the policy would lock this client out)"
    current = await store.get_setting("get_bucket_policy", ("NoSuchBucketPolicy",))
    document = merge_policy((current or {}).get("Policy"), store.bucket)
    if document is None:
        return IN_PLACE
    if not options.check_only:
        await store.put_setting("put_bucket_policy", Policy=document)
    return _outcome(options, "requests without TLS denied")


async def _versioning(store: Storage, _s: Settings, options: SetupOptions) -> str:
    current = await store.get_setting("get_bucket_versioning", ())
    status = (current or {}).get("Status") or "never enabled"
    if status == "Enabled":
        return f"{IN_PLACE} (Enabled)"
    if not options.enable_versioning:
        return f"left alone ({status}; --enable-versioning turns it on)"
    if not options.check_only:
        await store.put_setting(
            "put_bucket_versioning", VersioningConfiguration={"Status": "Enabled"}
        )
    return _outcome(options, "versioning enabled")


async def _lifecycle(store: Storage, settings: Settings, options: SetupOptions) -> str:
    if options.skip_lifecycle:
        return "left alone (--skip-lifecycle)"
    current = await store.get_setting(
        "get_bucket_lifecycle_configuration", ("NoSuchLifecycleConfiguration",)
    )
    existing = list((current or {}).get("Rules") or [])
    rules = merge_lifecycle(existing, lifecycle_rules(settings.key_prefix, options.glacier_days))
    if rules is None:
        return IN_PLACE
    if not options.check_only:
        await store.put_setting(
            "put_bucket_lifecycle_configuration",
            LifecycleConfiguration={"Rules": rules},
            TransitionDefaultMinimumObjectSize="all_storage_classes_128K",
        )
    return _outcome(
        options,
        f"{settings.key_prefix}/ to GLACIER_IR after {options.glacier_days} days (objects over "
        f"128 KiB); incomplete uploads aborted after {ABORT_INCOMPLETE_DAYS} days",
    )


def format_setup(report: SetupReport) -> str:
    """The text report: one line per setting."""
    if not report.exists:
        return f"Bucket s3://{report.bucket}: does not exist"
    state = "created" if report.created else "already exists (owned by you)"
    lines = [f"Bucket s3://{report.bucket} ({report.region}): {state}"]
    lines += [f"  {name:<21}{status}" for name, status in report.settings.items()]
    lines.append(
        "Done: the bucket is set up."
        if report.changed
        else "Nothing changed: the bucket was already set up."
    )
    return "\n".join(lines)
