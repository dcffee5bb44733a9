"""`archiver setup-cdn`: serve the archive through CloudFront, idempotently.

Like setup-bucket, each part is read first and changed only where it differs from what
archiver wants, then read back; a second run changes nothing and says so. The parts:

- an Origin Access Control (SigV4, always sign) through which the distribution reads S3;
- with `--signed`, the public half of a private key the configuration names (made when the
  file does not exist) and a key group holding it, so that only signed URLs work;
- the distribution, found by its comment (`archiver: s3://{bucket}/{prefix}/`) or created:
  its one S3 origin reached through the OAC, HTTPS only (redirect-to-https), GET and HEAD,
  and AWS's managed CachingOptimized policy (no query string, header or cookie in the cache
  key, up to a year at the edge): objects under a content-addressed key never change;
- a bucket policy statement of its own Sid letting only that distribution (`AWS:SourceArn`)
  GET objects under `{prefix}/`, every other statement kept. Block Public Access stays on:
  a statement for a service principal bound to one source ARN is not public.

What archiver does not own in a distribution (aliases, certificates, other origins and
behaviours, logging, price class, WAF) is kept as it is. The desired state is built by pure
functions, tested without a server.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archiver.cloudfront import CloudFront, ensure_private_key, key_fingerprint, public_key_pem
from archiver.converge import Setting, State, converge, converge_statement, json_name
from archiver.errors import SettingRefused, SettingUnsupported
from archiver.settings import Settings
from archiver.storage import Storage

ORIGIN_ID = "archiver-s3"
# AWS's managed cache policy "Managed-CachingOptimized": the same ID in every account.
CACHING_OPTIMIZED = "658327ea-f89d-4fab-a63d-7e88639e58f6"
VIEWER_PROTOCOL = "redirect-to-https"
METHODS = ["GET", "HEAD"]
OAC_SETTINGS = {
    "SigningProtocol": "sigv4",
    "SigningBehavior": "always",
    "OriginAccessControlOriginType": "s3",
}


@dataclass(frozen=True)
class CdnOptions:
    check_only: bool = False
    signed: bool = False
    private_key: Path | None = None  # with `signed`: the PEM file (made if absent)


@dataclass
class CdnReport:
    """What setup-cdn found and did, part by part."""

    bucket: str
    prefix: str
    bucket_exists: bool = True
    distribution_id: str | None = None
    arn: str | None = None
    domain: str | None = None
    status: str | None = None
    oac_id: str | None = None
    key_id: str | None = None  # the public key's ID in CloudFront (--signed)
    key_group_id: str | None = None
    private_key: str | None = None  # its path (never its content)
    settings: dict[str, Setting] = field(default_factory=dict)
    signed_by: list[str] = field(default_factory=list)  # key groups the distribution requires
    error: str | None = None  # what stopped the command, when something did

    @property
    def public(self) -> bool:
        """Whether anyone with a URL can fetch the media (no signature required)."""
        return self.distribution_id is not None and not self.signed_by

    @property
    def not_applied(self) -> list[str]:
        bad = (State.UNSUPPORTED, State.REFUSED)
        return [name for name, s in self.settings.items() if s.state in bad]

    @property
    def would_change(self) -> list[str]:
        return [name for name, s in self.settings.items() if s.state is State.WOULD_CHANGE]

    @property
    def changed(self) -> bool:
        return any(s.state is State.CHANGED for s in self.settings.values())

    @property
    def exit_code(self) -> int:
        """0 when everything is in place (or was put there); 1 when the bucket is missing, a
        part could not be applied, or --check-only found something to change."""
        return 1 if not self.bucket_exists or self.not_applied or self.would_change else 0

    @property
    def env(self) -> dict[str, str]:
        """The variables `archiver url` needs to link through this distribution."""
        env: dict[str, str] = {}
        if self.domain:
            env["ARCHIVER_CDN_DOMAIN"] = self.domain
        if self.key_id and self.private_key:
            env["ARCHIVER_CDN_KEY_ID"] = self.key_id
            env["ARCHIVER_CDN_PRIVATE_KEY"] = self.private_key
        return env

    def as_json(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "bucket_exists": self.bucket_exists,
            "distribution_id": self.distribution_id,
            "public": self.public,
            "arn": self.arn,
            "domain": self.domain,
            "status": self.status,
            "key_id": self.key_id,
            "changed": self.changed,
            "settings": {json_name(name): s.as_json() for name, s in self.settings.items()},
            "not_applied": [json_name(name) for name in self.not_applied],
            "env": self.env,
        }


# -- desired state (pure) -------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-")


def comment(bucket: str, prefix: str) -> str:
    """The comment that marks archiver's distribution for this bucket and prefix."""
    return f"archiver: s3://{bucket}/{prefix}/"


def resource_name(bucket: str) -> str:
    """The name of archiver's OAC and key group for `bucket` (letters, digits and `-`)."""
    return f"archiver-{_slug(bucket)}"[:64]


def statement_sid(prefix: str) -> str:
    """The Sid of the bucket policy statement for `prefix`: readable, and unique per prefix
    (a slug alone makes `media/cache` and `media-cache` one Sid, each run evicting the
    other's statement), so a hash of the prefix itself ends it."""
    digest = hashlib.sha256(prefix.encode()).hexdigest()[:10]
    return f"archiver-cloudfront-read-{_slug(prefix)[:40]}-{digest}"


def origin_domain(bucket: str, region: str) -> str:
    """The S3 REST endpoint of the bucket, as a CloudFront S3 origin names it."""
    return f"{bucket}.s3.{region}.amazonaws.com"


def cdn_statement(bucket: str, prefix: str, distribution_arn: str) -> dict[str, Any]:
    """Let only the distribution `distribution_arn` GET objects under `{prefix}/`."""
    return {
        "Sid": statement_sid(prefix),
        "Effect": "Allow",
        "Principal": {"Service": "cloudfront.amazonaws.com"},
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{bucket}/{prefix}/*",
        "Condition": {"StringEquals": {"AWS:SourceArn": distribution_arn}},
    }


def oac_difference(config: dict[str, Any]) -> str | None:
    off = [f"{k} {config.get(k)!r}" for k, v in OAC_SETTINGS.items() if config.get(k) != v]
    return ", ".join(off) or None


@dataclass(frozen=True)
class WantedDistribution:
    """archiver's part of a distribution: its origin and its default behaviour."""

    comment: str
    origin_domain: str
    oac_id: str
    key_group_id: str | None  # None: leave the trusted key groups as they are

    def origin(self) -> dict[str, Any]:
        return {
            "Id": ORIGIN_ID,
            "DomainName": self.origin_domain,
            "OriginPath": "",
            "S3OriginConfig": {"OriginAccessIdentity": ""},
            "OriginAccessControlId": self.oac_id,
            "CustomHeaders": {"Quantity": 0},
        }

    def behaviour(self, current: dict[str, Any]) -> dict[str, Any]:
        """The default behaviour: `current`'s with ours set and the legacy cache settings,
        which a cache policy replaces, taken out."""
        legacy = ("ForwardedValues", "MinTTL", "DefaultTTL", "MaxTTL")
        behaviour = {k: v for k, v in current.items() if k not in legacy}
        behaviour.update(
            TargetOriginId=ORIGIN_ID,
            ViewerProtocolPolicy=VIEWER_PROTOCOL,
            CachePolicyId=CACHING_OPTIMIZED,
            Compress=True,
            AllowedMethods={
                "Quantity": len(METHODS),
                "Items": METHODS,
                "CachedMethods": {"Quantity": len(METHODS), "Items": METHODS},
            },
        )
        if self.key_group_id is not None:
            # Ours is added to the key groups the distribution trusts already: a group of
            # another signer (another app, a key being rotated in) keeps working.
            current_groups = current.get("TrustedKeyGroups") or {}
            kept = list(current_groups.get("Items") or []) if current_groups.get("Enabled") else []
            items = list(dict.fromkeys([*kept, self.key_group_id]))
            behaviour["TrustedKeyGroups"] = {
                "Enabled": True,
                "Quantity": len(items),
                "Items": items,
            }
        behaviour.setdefault("TrustedKeyGroups", {"Enabled": False, "Quantity": 0})
        return behaviour

    def new(self) -> dict[str, Any]:
        """A whole distribution config, for a distribution not made yet."""
        return self.merged(
            {
                "CallerReference": f"archiver-{uuid.uuid4()}",
                "Comment": self.comment,
                "Enabled": True,
                "HttpVersion": "http2and3",
                "IsIPV6Enabled": True,
                "Origins": {"Quantity": 0, "Items": []},
                "DefaultCacheBehavior": {},
            }
        )

    def merged(self, current: dict[str, Any]) -> dict[str, Any]:
        """`current` with archiver's origin and default behaviour in it; the rest kept."""
        config = dict(current)
        others = [
            o for o in (current.get("Origins") or {}).get("Items") or [] if o["Id"] != ORIGIN_ID
        ]
        origins = [*others, self.origin()]
        config["Origins"] = {"Quantity": len(origins), "Items": origins}
        config["DefaultCacheBehavior"] = self.behaviour(current.get("DefaultCacheBehavior") or {})
        config["Enabled"] = True
        return config

    def difference(self, config: dict[str, Any]) -> str | None:
        """How a stored distribution config differs from archiver's part (None: it is in
        place), in words."""
        origins = {o.get("Id"): o for o in (config.get("Origins") or {}).get("Items") or []}
        origin = origins.get(ORIGIN_ID)
        if origin is None:
            return f"no origin {ORIGIN_ID}"
        for name, want in (
            ("DomainName", self.origin_domain),
            ("OriginAccessControlId", self.oac_id),
            ("OriginPath", ""),
        ):
            if (origin.get(name) or "") != want:
                return f"origin {name} is {origin.get(name)!r}, not {want!r}"
        if (origin.get("S3OriginConfig") or {}).get("OriginAccessIdentity"):
            return "the origin uses a legacy origin access identity"
        behaviour = config.get("DefaultCacheBehavior") or {}
        for name, want in (
            ("TargetOriginId", ORIGIN_ID),
            ("ViewerProtocolPolicy", VIEWER_PROTOCOL),
            ("CachePolicyId", CACHING_OPTIMIZED),
        ):
            if behaviour.get(name) != want:
                return f"default behaviour {name} is {behaviour.get(name)!r}, not {want!r}"
        methods = (behaviour.get("AllowedMethods") or {}).get("Items") or []
        if sorted(methods) != sorted(METHODS):
            return f"default behaviour allows {sorted(methods)}, not {METHODS}"
        if self.key_group_id is not None:
            groups = behaviour.get("TrustedKeyGroups") or {}
            if not groups.get("Enabled") or self.key_group_id not in (groups.get("Items") or []):
                return f"signed URLs do not require key group {self.key_group_id}"
        if config.get("Enabled") is not True:
            return "the distribution is disabled"
        return None


def signing_required(config: dict[str, Any]) -> list[str]:
    """The key groups whose signatures the default behaviour requires (empty: none)."""
    groups = (config.get("DefaultCacheBehavior") or {}).get("TrustedKeyGroups") or {}
    return list(groups.get("Items") or []) if groups.get("Enabled") else []


PUBLIC_WARNING = (
    "Public: signed URLs are not required, so anyone who has a media URL (a post, a log, a "
    "browser's history) can fetch that file through the CDN, for as long as it is archived; "
    "the bucket itself stays closed to everyone but this distribution. Run setup-cdn --signed "
    "to require signed, expiring URLs."
)


# -- applying it ----------------------------------------------------------------------------


async def setup_cdn(
    store: Storage, cf: CloudFront, settings: Settings, options: CdnOptions
) -> CdnReport:
    """Make (unless check-only) and check archiver's CloudFront distribution; the report."""
    report = CdnReport(settings.bucket, settings.key_prefix)
    region = await store.bucket_region()
    if region is None:
        report.bucket_exists = False
        return report
    domain = origin_domain(settings.bucket, region)

    async def step(name: str, run: Callable[[], Awaitable[Setting]]) -> None:
        try:
            report.settings[name] = await run()
        except SettingUnsupported:
            report.settings[name] = Setting(State.UNSUPPORTED)
        except SettingRefused as exc:
            report.settings[name] = Setting(State.REFUSED, str(exc))

    await step(
        "origin access control", lambda: _origin_access_control(cf, settings, options, report)
    )
    if options.signed:
        await step("public key", lambda: _public_key(cf, settings, options, report))
        if report.key_id:
            await step("key group", lambda: _key_group(cf, settings, options, report))
    wanted = WantedDistribution(
        comment(settings.bucket, settings.key_prefix),
        domain,
        report.oac_id or "",
        report.key_group_id,
    )
    await step("distribution", lambda: _distribution(cf, options, wanted, report))
    if report.arn:
        await step("bucket policy", lambda: _policy(store, settings, options, report.arn or ""))
    return report


async def _origin_access_control(
    cf: CloudFront, settings: Settings, options: CdnOptions, report: CdnReport
) -> Setting:
    name = resource_name(settings.bucket)
    controls = await cf.list_all("list_origin_access_controls", "OriginAccessControlList")
    mine = [c for c in controls if c.get("Name") == name]
    what = f"{name} (SigV4, always sign)"
    if not mine:
        if options.check_only:
            return Setting(State.WOULD_CHANGE, f"create {what}")
        created = await cf.call(
            "create_origin_access_control",
            OriginAccessControlConfig={
                "Name": name,
                "Description": comment(settings.bucket, settings.key_prefix),
                **OAC_SETTINGS,
            },
        )
        report.oac_id = str(created["OriginAccessControl"]["Id"])
        return Setting(State.CHANGED, f"created {report.oac_id}: {what}")
    oac_id = report.oac_id = str(mine[0]["Id"])

    async def read() -> tuple[dict[str, Any], str]:
        got = await cf.call("get_origin_access_control", Id=oac_id)
        return got["OriginAccessControl"]["OriginAccessControlConfig"], got["ETag"]

    async def write(current: tuple[dict[str, Any], str]) -> None:
        config, etag = current
        await cf.call(
            "update_origin_access_control",
            Id=oac_id,
            IfMatch=etag,
            OriginAccessControlConfig={**config, **OAC_SETTINGS},
        )

    return await converge(
        options.check_only,
        read,
        lambda current: oac_difference(current[0]),
        write,
        f"{oac_id}: {what}",
        in_place=lambda _c: f"{oac_id}: {what}",
    )


async def _public_key(
    cf: CloudFront, settings: Settings, options: CdnOptions, report: CdnReport
) -> Setting:
    path = options.private_key
    assert path is not None
    report.private_key = str(path)
    if options.check_only and not path.exists():
        return Setting(State.WOULD_CHANGE, f"make a key pair at {path} and register its public key")
    key, made = ensure_private_key(path, create=not options.check_only)
    pem = public_key_pem(key)
    fingerprint = key_fingerprint(pem)
    keys = await cf.list_all("list_public_keys", "PublicKeyList")
    mine = [k for k in keys if key_fingerprint(str(k.get("EncodedKey", ""))) == fingerprint]
    made_note = f"private key made at {path} (mode 0600); " if made else ""
    if mine:
        report.key_id = str(mine[0]["Id"])
        return Setting(State.IN_PLACE, f"{report.key_id}, the public half of {path}")
    if options.check_only:
        return Setting(State.WOULD_CHANGE, f"register the public half of {path}")
    created = await cf.call(
        "create_public_key",
        PublicKeyConfig={
            "CallerReference": fingerprint,
            "Name": f"archiver-{fingerprint[:16]}",
            "EncodedKey": pem,
            "Comment": comment(settings.bucket, settings.key_prefix),
        },
    )
    report.key_id = str(created["PublicKey"]["Id"])
    return Setting(State.CHANGED, f"{made_note}registered {report.key_id}, its public half")


async def _key_group(
    cf: CloudFront, settings: Settings, options: CdnOptions, report: CdnReport
) -> Setting:
    name = resource_name(settings.bucket)
    key_id = report.key_id or ""
    groups = [g["KeyGroup"] for g in await cf.list_all("list_key_groups", "KeyGroupList")]
    mine = [g for g in groups if g.get("KeyGroupConfig", {}).get("Name") == name]
    if not mine:
        if options.check_only:
            return Setting(State.WOULD_CHANGE, f"create {name} with {key_id}")
        created = await cf.call(
            "create_key_group",
            KeyGroupConfig={
                "Name": name,
                "Items": [key_id],
                "Comment": comment(settings.bucket, settings.key_prefix),
            },
        )
        report.key_group_id = str(created["KeyGroup"]["Id"])
        return Setting(State.CHANGED, f"created {name} ({report.key_group_id}) with {key_id}")
    group_id = report.key_group_id = str(mine[0]["Id"])

    async def read() -> tuple[dict[str, Any], str]:
        got = await cf.call("get_key_group", Id=group_id)
        return got["KeyGroup"]["KeyGroupConfig"], got["ETag"]

    def difference(current: tuple[dict[str, Any], str]) -> str | None:
        return None if key_id in (current[0].get("Items") or []) else f"{key_id} not in it"

    async def write(current: tuple[dict[str, Any], str]) -> None:
        # The key is added, the others kept: URLs signed with an older key keep working.
        config, etag = current
        items = [*(config.get("Items") or []), key_id]
        await cf.call(
            "update_key_group", Id=group_id, IfMatch=etag, KeyGroupConfig={**config, "Items": items}
        )

    what = f"{name} ({group_id}) holds {key_id}"
    return await converge(
        options.check_only, read, difference, write, what, in_place=lambda _c: what
    )


def _describe(wanted: WantedDistribution, config: dict[str, Any]) -> str:
    groups = signing_required(config)
    signed = f"signed URLs required (key group {', '.join(groups)})" if groups else "unsigned URLs"
    return (
        f"{VIEWER_PROTOCOL}, GET/HEAD, CachingOptimized, origin via OAC {wanted.oac_id}, {signed}"
    )


async def _distribution(
    cf: CloudFront, options: CdnOptions, wanted: WantedDistribution, report: CdnReport
) -> Setting:
    if not wanted.oac_id and not options.check_only:
        return Setting(
            State.LEFT_ALONE, "not created or changed: the origin access control is not there"
        )
    summaries = await cf.list_all("list_distributions", "DistributionList")
    mine = sorted(
        (d for d in summaries if d.get("Comment") == wanted.comment), key=lambda d: d["Id"]
    )
    if not mine:
        if options.check_only:
            return Setting(State.WOULD_CHANGE, f"create a distribution ({wanted.comment})")
        config = wanted.new()
        created = (await cf.call("create_distribution", DistributionConfig=config))["Distribution"]
        _remember(report, created)
        stored = (await cf.call("get_distribution_config", Id=created["Id"]))["DistributionConfig"]
        report.signed_by = signing_required(stored)
        problem = wanted.difference(stored)
        if problem is not None:
            return Setting(State.REFUSED, f"created {created['Id']}, but read back: {problem}")
        return Setting(State.CHANGED, f"created {created['Id']}: {_describe(wanted, stored)}")
    _remember(report, mine[0])
    dist_id = report.distribution_id
    extra = f" ({len(mine) - 1} more with the same comment left alone)" if len(mine) > 1 else ""

    async def read() -> tuple[dict[str, Any], str]:
        got = await cf.call("get_distribution_config", Id=dist_id)
        config = got["DistributionConfig"]
        # What signing the distribution requires once archiver's part is in place.
        report.signed_by = signing_required(config if options.check_only else wanted.merged(config))
        return got["DistributionConfig"], got["ETag"]

    async def write(current: tuple[dict[str, Any], str]) -> None:
        config, etag = current
        updated = await cf.call(
            "update_distribution",
            Id=dist_id,
            IfMatch=etag,
            DistributionConfig=wanted.merged(config),
        )
        _remember(report, updated["Distribution"])

    return await converge(
        options.check_only,
        read,
        lambda current: wanted.difference(current[0]),
        write,
        lambda current: f"{dist_id}: {_describe(wanted, wanted.merged(current[0]))}{extra}",
        in_place=lambda current: f"{dist_id}: {_describe(wanted, current[0])}{extra}",
    )


def _remember(report: CdnReport, distribution: dict[str, Any]) -> None:
    report.distribution_id = str(distribution["Id"])
    report.arn = str(distribution["ARN"])
    report.domain = str(distribution["DomainName"])
    report.status = str(distribution.get("Status") or "")


async def _policy(store: Storage, settings: Settings, options: CdnOptions, arn: str) -> Setting:
    wanted = cdn_statement(settings.bucket, settings.key_prefix, arn)
    what = (
        f"{wanted['Sid']}: only distribution {arn.rpartition('/')[2]} may GET "
        f"{settings.key_prefix}/* (other statements kept)"
    )
    return await converge_statement(
        store,
        options.check_only,
        wanted,
        missing=f"no statement {wanted['Sid']} for this distribution",
        what=what,
        in_place=what,
    )


def format_cdn(report: CdnReport) -> str:
    """The text report: one line per part, the domain, and what `archiver url` needs."""
    where = f"s3://{report.bucket}/{report.prefix}/"
    if not report.bucket_exists:
        return f"CloudFront for {where}: the bucket does not exist (run archiver setup-bucket)"
    lines = [f"CloudFront for {where}"]
    lines += [f"  {name:<23}{setting}" for name, setting in report.settings.items()]
    if report.domain:
        lines.append(f"Domain: {report.domain} (status {report.status or 'unknown'})")
    if report.public:
        lines.append(PUBLIC_WARNING)
    if report.env:
        lines.append("For archiver url, set:")
        lines += [f"  {name}={value}" for name, value in report.env.items()]
    if report.not_applied:
        lines.append(f"Not set up: {', '.join(report.not_applied)} could not be applied.")
    elif report.would_change:
        lines.append(f"Would change: {', '.join(report.would_change)} (run without --check-only).")
    elif report.changed:
        lines.append("Done: the distribution is set up (CloudFront takes a few minutes to deploy).")
    else:
        lines.append("Nothing changed: the distribution was already set up.")
    return "\n".join(lines)
