"""`archiver setup-bucket`: create the bucket and lock it down, idempotently.

Each setting is read first and changed only when it differs from what archiver wants, so a
second run changes nothing and says so; what was changed is read back and compared field
by field, because S3-compatible servers accept settings they then store in part (Ceph RGW
drops a lifecycle rule's size filter) or do not apply (a TLS-only policy). Each setting is
reported on its own (a `Setting`: in place, changed, not supported, refused, ...) and one
refused does not stop the others; the write probe runs last, as an upload would. Lifecycle
rules and policy statements of others are kept: archiver only adds or replaces its own (by
rule ID / statement Sid). The desired state is built by pure functions, tested without a
server.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from archiver.converge import Setting, State, converge, converge_statement, json_name
from archiver.errors import AccessDenied, SettingRefused, SettingUnsupported, StorageError
from archiver.iam import WRITE_PROBE_NAME
from archiver.settings import DEFAULT_GLACIER_DAYS, Settings
from archiver.storage import Storage

GLACIER_IR_MIN_BYTES = 128 * 1024  # GLACIER_IR bills at least 128 KiB per object
SMALL_OBJECTS_STAY = "all_storage_classes_128K"  # TransitionDefaultMinimumObjectSize
ABORT_INCOMPLETE_DAYS = 7
TLS_SID = "archiver-deny-insecure-transport"
PROBE_BODY = b"archiver write probe\n"
log = logging.getLogger(__name__)
RGW_BPA_BUG = (
    "or the server is a Ceph RGW from before the fix of its tracker issue 49135, which "
    "refuses every PutObject while BlockPublicAcls is on (then run setup-bucket "
    "--no-block-public-acls: IgnorePublicAcls still makes any public ACL ineffective)"
)


# Without these the bucket is not safe to archive into (it could be made public), or not
# usable (uploads would be refused): setup-bucket exits 1 when one could not be applied.
SAFETY_SETTINGS = ("public access block", "write probe")


@dataclass(frozen=True)
class SetupOptions:
    region: str
    check_only: bool = False
    enable_versioning: bool = False
    skip_lifecycle: bool = False
    # None: the days of archiver's rule already in place (DEFAULT_GLACIER_DAYS without one),
    # so that a re-run without the flag does not undo an earlier --glacier-days
    glacier_days: int | None = None
    block_public_acls: bool = True
    http_endpoint_url: str | None = None  # the server over plain HTTP (TLS policy check)


@dataclass
class SetupReport:
    """What setup-bucket found and did, setting by setting."""

    bucket: str
    region: str | None = None
    exists: bool = False
    created: bool = False
    settings: dict[str, Setting] = field(default_factory=dict)
    error: str | None = None  # what stopped the command, when something did

    @property
    def not_applied(self) -> list[str]:
        """The safety settings (SAFETY_SETTINGS) that could not be applied."""
        bad = (State.UNSUPPORTED, State.REFUSED)
        return [n for n in SAFETY_SETTINGS if n in self.settings and self.settings[n].state in bad]

    @property
    def exit_code(self) -> int:
        """0 when the bucket exists (or was made) and is safe to use; 1 when --check-only
        found none, or a safety setting could not be applied."""
        return 0 if self.exists and not self.not_applied else 1

    @property
    def changed(self) -> bool:
        return self.created or any(v.state is State.CHANGED for v in self.settings.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "region": self.region,
            "exists": self.exists,
            "created": self.created,
            "changed": self.changed,
            "settings": {json_name(name): v.as_json() for name, v in self.settings.items()},
            "not_applied": [json_name(name) for name in self.not_applied],
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


def lifecycle_difference(
    echoed: list[dict[str, Any]], minimum_size: str | None, wanted: list[dict[str, Any]]
) -> str | None:
    """How the rules a server reads back differ from ours (None: ours are in place), field
    by field, whatever shape the server echoes a rule in. A transition's size filter may be
    missing only when the bucket-wide minimum size (`minimum_size`, moto's way) keeps objects
    under 128 KiB where they are: otherwise the rule would move them."""
    current = {r.get("ID"): r for r in echoed}
    for rule in wanted:
        got = current.get(rule["ID"])
        if got is None:
            return f"rule {rule['ID']} is missing"
        for name, want, have in zip(_FIELDS, _fields(rule), _fields(got), strict=True):
            if have == want:
                continue
            if (
                name == "ObjectSizeGreaterThan"
                and have is None
                and minimum_size == SMALL_OBJECTS_STAY
            ):
                continue
            return f"rule {rule['ID']}: {name} is {have!r}, not {want!r}"
    return None


_FIELDS = (
    "Status",
    "Prefix",
    "ObjectSizeGreaterThan",
    "Transitions",
    "AbortIncompleteMultipartUpload",
)


def _fields(rule: dict[str, Any]) -> tuple[Any, ...]:
    filt = rule.get("Filter") or {}
    conj = filt.get("And") or filt
    transitions = [(t.get("Days"), t.get("StorageClass")) for t in rule.get("Transitions") or []]
    abort = (rule.get("AbortIncompleteMultipartUpload") or {}).get("DaysAfterInitiation")
    return (
        rule.get("Status"),
        conj.get("Prefix", rule.get("Prefix", "")),
        conj.get("ObjectSizeGreaterThan"),
        transitions,
        abort,
    )


def glacier_days_in_place(rules: list[dict[str, Any]], prefix: str) -> int | None:
    """The days of archiver's GLACIER_IR transition for `prefix` among `rules` (as a
    server reads them back), None when there is no such rule."""
    rule_id = lifecycle_rules(prefix, DEFAULT_GLACIER_DAYS)[0]["ID"]
    for rule in rules:
        if rule.get("ID") == rule_id:
            for transition in rule.get("Transitions") or []:
                if isinstance(transition.get("Days"), int):
                    return int(transition["Days"])
    return None


def merge_lifecycle(
    existing: list[dict[str, Any]], wanted: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The rules to put: others' rules kept, ours added or replaced."""
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


# -- applying it ----------------------------------------------------------------------------

Step = Callable[[Storage, Settings, SetupOptions], Awaitable[Setting]]


async def setup_bucket(store: Storage, settings: Settings, options: SetupOptions) -> SetupReport:
    """Create (unless check-only) and configure the bucket; the report of what happened.
    Each setting is applied on its own: one the server refuses is reported and the others
    still run; the write probe runs last, as the uploads will."""
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
    steps: list[tuple[str, Step]] = [
        ("public access block", _public_access_block),
        ("default encryption", _encryption),
        ("TLS-only policy", _tls_policy),
        ("versioning", _versioning),
        ("lifecycle", _lifecycle),
    ]
    if not options.check_only:
        steps.append(("write probe", _write_probe))
    for name, step in steps:
        try:
            report.settings[name] = await step(store, settings, options)
        except SettingUnsupported:
            report.settings[name] = Setting(State.UNSUPPORTED)
        except SettingRefused as exc:
            report.settings[name] = Setting(State.REFUSED, str(exc))
    return report


def public_access_block(options: SetupOptions) -> dict[str, bool]:
    return dict(PUBLIC_ACCESS_BLOCK, BlockPublicAcls=options.block_public_acls)


async def _public_access_config(store: Storage) -> dict[str, Any]:
    current = await store.get_setting(
        "get_public_access_block", ("NoSuchPublicAccessBlockConfiguration",)
    )
    return dict((current or {}).get("PublicAccessBlockConfiguration") or {})


async def _public_access_block(store: Storage, _s: Settings, options: SetupOptions) -> Setting:
    wanted = public_access_block(options)

    async def read() -> dict[str, Any]:
        return await _public_access_config(store)

    def difference(config: dict[str, Any]) -> str | None:
        off = [k for k, v in wanted.items() if config.get(k, False) is not v]
        return ", ".join(f"{k} {'on' if config.get(k) else 'off'}" for k in off) or None

    async def write(_current: object) -> None:
        await store.put_setting("put_public_access_block", PublicAccessBlockConfiguration=wanted)

    what = "all four Block Public Access flags on"
    if not options.block_public_acls:
        what = "BlockPublicAcls off (--no-block-public-acls), the other three flags on"
    return await converge(
        options.check_only, read, difference, write, what, in_place=lambda _c: what
    )


async def _encryption(store: Storage, _s: Settings, options: SetupOptions) -> Setting:
    async def read() -> set[Any]:
        current = await store.get_setting(
            "get_bucket_encryption", ("ServerSideEncryptionConfigurationNotFoundError",)
        )
        config = (current or {}).get("ServerSideEncryptionConfiguration") or {}
        # SSE-KMS makes ETags no MD5: the write probe (as uploads do) then sends a checksum.
        store.learn_default_encryption(current or {})
        return {
            (r.get("ApplyServerSideEncryptionByDefault") or {}).get("SSEAlgorithm")
            for r in config.get("Rules") or []
        }

    def difference(algorithms: set[Any]) -> str | None:
        if "AES256" in algorithms or algorithms & {"aws:kms", "aws:kms:dsse"}:
            return None
        return f"default encryption {sorted(map(str, algorithms)) or 'none'}"

    async def write(_current: object) -> None:
        await store.put_setting(
            "put_bucket_encryption",
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
        )

    def in_place(algorithms: set[Any]) -> str:
        if "AES256" in algorithms:
            return "SSE-S3"
        return "SSE-KMS, kept (its ETags are not MD5s: uploads are proved by CRC32 checksums)"

    return await converge(
        options.check_only, read, difference, write, "default encryption SSE-S3", in_place=in_place
    )


def plain_http_endpoint(settings: Settings, options: SetupOptions) -> tuple[bool, str | None]:
    """Where the same server answers without TLS: (known, URL); the URL None means AWS's
    own endpoint over http. Known for AWS and for an https endpoint on the default port;
    otherwise only when --http-endpoint-url names it."""
    if options.http_endpoint_url:
        return True, options.http_endpoint_url
    if settings.endpoint_url is None:
        return True, None
    parts = urlsplit(settings.endpoint_url)
    if parts.scheme == "https" and parts.port in (None, 443) and parts.hostname:
        return True, f"http://{parts.hostname}"
    return False, None


async def _tls_policy(store: Storage, settings: Settings, options: SetupOptions) -> Setting:
    if settings.endpoint_url and settings.endpoint_url.startswith("http://"):
        # The policy denies every plain-HTTP request, this client's included.
        return Setting(
            State.LEFT_ALONE, "the endpoint is plain HTTP (the policy would lock this client out)"
        )

    setting = await converge_statement(
        store,
        options.check_only,
        tls_statement(store.bucket),
        missing=f"no statement {TLS_SID} denying requests without TLS",
        what="requests without TLS denied",
    )
    if setting.state not in (State.IN_PLACE, State.CHANGED):
        return setting
    enforced = await _tls_enforcement(store, settings, options)
    return Setting(setting.state, f"stored; {enforced}")


async def _tls_enforcement(store: Storage, settings: Settings, options: SetupOptions) -> str:
    """Whether a plain-HTTP request is seen to be refused: the only proof the policy works
    (some servers, Ceph RGW among them, store it without applying it)."""
    known, url = plain_http_endpoint(settings, options)
    if not known:
        return (
            "enforcement not checked: no plain-HTTP endpoint is known for this server "
            "(--http-endpoint-url names one)"
        )
    status = await store.plain_http_status(url, f"{settings.key_prefix}/.archiver-tls-check")
    where = url or "AWS's http endpoint"
    if status is None:
        return f"enforcement not checked: nothing answered at {where}"
    if status == 403:
        return "enforced (a plain-HTTP request was refused)"
    return (
        f"NOT enforced: a plain-HTTP request to {where} was answered {status} "
        "(the server keeps the policy without applying it)"
    )


async def _versioning(store: Storage, _s: Settings, options: SetupOptions) -> Setting:
    async def read() -> str:
        current = await store.get_setting("get_bucket_versioning", ())
        return str((current or {}).get("Status") or "never enabled")

    if not options.enable_versioning:
        status = await read()
        if status == "Enabled":
            return Setting(State.IN_PLACE, status)
        return Setting(State.LEFT_ALONE, f"{status}; --enable-versioning turns it on")

    async def write(_current: object) -> None:
        await store.put_setting(
            "put_bucket_versioning", VersioningConfiguration={"Status": "Enabled"}
        )

    def difference(status: str) -> str | None:
        return None if status == "Enabled" else f"status {status}"

    return await converge(
        options.check_only,
        read,
        difference,
        write,
        "versioning enabled",
        in_place=lambda status: status,
    )


Rules = tuple[list[dict[str, Any]], str | None]  # lifecycle rules, bucket-wide minimum size


async def _lifecycle(store: Storage, settings: Settings, options: SetupOptions) -> Setting:
    if options.skip_lifecycle:
        return Setting(State.LEFT_ALONE, "--skip-lifecycle")

    async def read() -> Rules:
        current = (
            await store.get_setting(
                "get_bucket_lifecycle_configuration", ("NoSuchLifecycleConfiguration",)
            )
            or {}
        )
        return list(current.get("Rules") or []), current.get("TransitionDefaultMinimumObjectSize")

    async def put(rules: list[dict[str, Any]]) -> Rules:
        await store.put_setting(
            "put_bucket_lifecycle_configuration",
            LifecycleConfiguration={"Rules": rules},
            TransitionDefaultMinimumObjectSize=SMALL_OBJECTS_STAY,
        )
        return await read()

    existing, minimum = await read()
    days = options.glacier_days or glacier_days_in_place(existing, settings.key_prefix)
    wanted = lifecycle_rules(settings.key_prefix, days or DEFAULT_GLACIER_DAYS)
    what = (
        f"{settings.key_prefix}/ to GLACIER_IR after {days or DEFAULT_GLACIER_DAYS} days "
        f"(objects over 128 KiB); incomplete uploads aborted after {ABORT_INCOMPLETE_DAYS} days"
    )
    found = lifecycle_difference(existing, minimum, wanted)
    if found is None:
        keep = options.glacier_days is None and days
        return Setting(
            State.IN_PLACE, what + (" (kept: --glacier-days N changes it)" if keep else "")
        )
    what = f"{what} (it was: {found})"
    if options.check_only:
        return Setting(State.WOULD_CHANGE, what)
    return await _put_lifecycle(put, existing, wanted, what)


async def _put_lifecycle(
    put: Callable[[list[dict[str, Any]]], Awaitable[Rules]],
    existing: list[dict[str, Any]],
    wanted: list[dict[str, Any]],
    what: str,
) -> Setting:
    """Put archiver's rules beside the others'. The transition goes in disabled first: a
    server that drops its size filter would otherwise move every small object until
    archiver noticed."""
    transition, abort = wanted
    trial = dict(transition, Status="Disabled")
    echoed, minimum = await put(merge_lifecycle(existing, [trial, abort]))
    size_problem = lifecycle_difference(echoed, minimum, [trial])
    if size_problem is not None:
        echoed, minimum = await put(merge_lifecycle(existing, [abort]))
        wrong = lifecycle_difference(echoed, minimum, [abort])
        aborts = (
            f"incomplete uploads are aborted after {ABORT_INCOMPLETE_DAYS} days"
            if wrong is None
            else f"the abort rule read back wrong too ({wrong})"
        )
        log.info("lifecycle read back without the size filter: %s", size_problem)
        return Setting(
            State.UNSUPPORTED,
            "the server dropped the GLACIER_IR rule's size filter (ObjectSizeGreaterThan) "
            "and keeps no minimum object size, so the rule would move objects under 128 KiB "
            f"too: not kept; {aborts}",
        )
    echoed, minimum = await put(merge_lifecycle(existing, wanted))
    problem = lifecycle_difference(echoed, minimum, wanted)
    if problem is not None:
        return Setting(State.REFUSED, f"accepted, but read back: {problem}")
    return Setting(State.CHANGED, what)


async def _write_probe(store: Storage, settings: Settings, options: SetupOptions) -> Setting:
    """What an upload does (PutObject with Content-MD5, HEAD), then a delete: proves the
    bucket, as set up, takes archiver's uploads."""
    key = f"{settings.key_prefix}/{WRITE_PROBE_NAME}{uuid.uuid4().hex[:12]}"
    try:
        await store.probe_write(key, PROBE_BODY)
    except AccessDenied as exc:
        reason = str(exc)
        if "s3:PutObject" in reason and options.block_public_acls and await _blocks_acls(store):
            reason = f"{reason}, {RGW_BPA_BUG}"
        return Setting(State.REFUSED, reason)
    except StorageError as exc:
        return Setting(State.REFUSED, str(exc))
    return Setting(State.OK, f"put with Content-MD5, read back and deleted {key}")


async def _blocks_acls(store: Storage) -> bool:
    try:
        return bool((await _public_access_config(store)).get("BlockPublicAcls"))
    except (SettingUnsupported, SettingRefused):
        return False


def format_setup(report: SetupReport) -> str:
    """The text report: one line per setting."""
    if not report.exists:
        return f"Bucket s3://{report.bucket}: does not exist"
    state = "created" if report.created else "already exists (owned by you)"
    lines = [f"Bucket s3://{report.bucket} ({report.region}): {state}"]
    lines += [f"  {name:<21}{setting}" for name, setting in report.settings.items()]
    if report.not_applied:
        lines.append(f"Not safe to use yet: {', '.join(report.not_applied)} could not be applied.")
    elif report.changed:
        lines.append("Done: the bucket is set up.")
    else:
        lines.append("Nothing changed: the bucket was already set up.")
    return "\n".join(lines)
