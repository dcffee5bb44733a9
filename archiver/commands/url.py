"""`archiver url MEDIA_ID...`: the link the app can use for each archived row.

Three kinds, by configuration: the CDN URL (`https://{domain}/{key}`) when a CloudFront
domain is configured; that URL signed (canned policy, `--expires`) when a key pair is
configured as well; otherwise a presigned S3 GET URL (`--expires`, at most 7 days, which is
SigV4's limit). Nothing is sent to S3 or CloudFront: URLs are signed locally.

The database is not trusted here either: a row's `archive_url` must name the object
archiver would have made for it (`keys.row_key`), or no link is made for it.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from archiver.errors import ConfigError
from archiver.keys import NotOurs, row_key
from archiver.models import Problem, ProblemKind
from archiver.progress import printable
from archiver.services import database
from archiver.settings import DEFAULT_URL_EXPIRES_S, Settings
from archiver.sql import RowFilter
from archiver.storage import Storage

if TYPE_CHECKING:
    from archiver.cloudfront import UrlSigner


PRESIGN_MAX_S = 7 * 24 * 3600  # SigV4 presigned URLs last at most 7 days
# A signed CloudFront URL lasts as long as it says; archiver signs none for more than a
# year (a link handed out for longer is a public link: use an unsigned CDN URL for that).
CDN_SIGNED_MAX_S = 365 * 24 * 3600
_DOMAIN_RE = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+$"
)


def cdn_domain(text: str) -> str:
    """The CloudFront domain (or alias) as a bare host name: `https://` and a trailing `/`
    are taken off; anything else than a host name is a ConfigError."""
    host = text.strip().removeprefix("https://").removesuffix("/")
    if not _DOMAIN_RE.match(host):
        raise ConfigError(
            f"ARCHIVER_CDN_DOMAIN {text!r} is not a host name (e.g. d111111abcdef8.cloudfront.net)"
        )
    return host


@dataclass(frozen=True)
class UrlOptions:
    media_ids: tuple[str, ...]
    expires_s: int = DEFAULT_URL_EXPIRES_S
    cdn_domain: str | None = None
    key_id: str | None = None  # the CloudFront public key's ID
    private_key: Path | None = None  # its private half (PEM)

    def __post_init__(self) -> None:
        if not self.media_ids:
            raise ConfigError("name at least one MEDIA_ID")
        if (self.key_id is None) != (self.private_key is None):
            raise ConfigError(
                "a signed CloudFront URL needs both ARCHIVER_CDN_KEY_ID (--cdn-key-id) and "
                "ARCHIVER_CDN_PRIVATE_KEY (--cdn-private-key)"
            )
        if self.key_id is not None and self.cdn_domain is None:
            raise ConfigError("a signed CloudFront URL needs ARCHIVER_CDN_DOMAIN (--cdn-domain)")
        if self.kind == "s3_presigned" and self.expires_s > PRESIGN_MAX_S:
            raise ConfigError("--expires: a presigned S3 URL lasts at most 7 days")
        if self.kind == "cdn_signed" and self.expires_s > CDN_SIGNED_MAX_S:
            raise ConfigError("--expires: archiver signs CloudFront URLs for at most 365 days")

    @property
    def kind(self) -> str:
        if self.cdn_domain is None:
            return "s3_presigned"
        return "cdn" if self.key_id is None else "cdn_signed"


@dataclass
class UrlReport:
    kind: str
    asked: int = 0  # distinct media ids asked for
    expires_at: dt.datetime | None = None  # None: the CDN URL does not expire
    urls: dict[str, str] = field(default_factory=dict)  # media_id -> URL, in the order asked
    problems: list[Problem] = field(default_factory=list)
    # Why the URLs may stop working before --expires says: signed with temporary credentials.
    note: str | None = None
    error: str | None = None  # what stopped the command, when something did

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0

    def as_json(self) -> dict[str, Any]:
        expires = self.expires_at.isoformat().replace("+00:00", "Z") if self.expires_at else None
        return {
            "kind": self.kind,
            "expires_at": expires,
            "urls": self.urls,
            "problems": [p.as_json() for p in self.problems],
            "note": self.note,
        }


def cdn_url(domain: str, key: str) -> str:
    return f"https://{domain}/{quote(key)}"


async def run_url(
    settings: Settings, options: UrlOptions, *, now: dt.datetime | None = None
) -> UrlReport:
    """The link of each row named; the rows that have none, with why."""
    now = now or dt.datetime.now(dt.UTC)
    wanted = tuple(dict.fromkeys(options.media_ids))
    report = UrlReport(options.kind, asked=len(wanted))
    signer = None
    if options.key_id is not None and options.private_key is not None:
        from archiver.cloudfront import UrlSigner

        # The key file is proved usable (ours, open to no one else, a PEM key) first.
        signer = UrlSigner(options.key_id, options.private_key)
    if options.kind != "cdn":
        report.expires_at = (now + dt.timedelta(seconds=options.expires_s)).replace(microsecond=0)
    async with database(settings) as db:
        rows = await db.fetch_page(
            RowFilter(archived=None, media_ids=wanted), after=None, limit=len(wanted)
        )
    by_id = {row.media_id: row for row in rows}
    keys: dict[str, str] = {}
    for media_id in wanted:
        row = by_id.get(media_id)
        if row is None:
            report.problems.append(Problem(media_id, ProblemKind.NO_SUCH_ROW, "no such row"))
            continue
        if row.archive_url is None:
            report.problems.append(Problem(media_id, ProblemKind.NOT_ARCHIVED, "not archived yet"))
            continue
        found = row_key(row, bucket=settings.bucket, prefix=settings.key_prefix)
        if isinstance(found, NotOurs):
            report.problems.append(
                Problem(media_id, ProblemKind.INVALID, found.reason, url=row.archive_url)
            )
            continue
        keys[media_id] = found[1]
    if keys:
        report.urls = await _sign(settings, options, keys, report, signer)
    return report


def temporary_limit(
    expires_at: dt.datetime, temporary: bool, credentials_expire: dt.datetime | None
) -> tuple[dt.datetime, str | None]:
    """When a presigned URL really stops working, and why when that is sooner than asked: a
    URL signed with temporary credentials (a role, SSO, AWS_SESSION_TOKEN) is refused once
    their session ends, whatever its X-Amz-Expires says."""
    if not temporary:
        return expires_at, None
    if credentials_expire is None:
        return expires_at, (
            "signed with temporary credentials (a session token) whose end is not known here: "
            "the URLs stop working when that session ends, which may be before expires_at"
        )
    ends = credentials_expire.astimezone(dt.UTC).replace(microsecond=0)
    if ends >= expires_at:
        return expires_at, None
    return ends, (
        f"signed with temporary credentials that expire at {ends.isoformat()}: the URLs stop "
        "working then, before the --expires asked (sign with longer-lived credentials)"
    )


async def _sign(
    settings: Settings,
    options: UrlOptions,
    keys: dict[str, str],
    report: UrlReport,
    signer: UrlSigner | None,
) -> dict[str, str]:
    expires_at = report.expires_at
    if options.cdn_domain is not None:
        urls = {media_id: cdn_url(options.cdn_domain, key) for media_id, key in keys.items()}
        if signer is None or expires_at is None:
            return urls
        return {media_id: signer.sign(url, expires_at) for media_id, url in urls.items()}
    async with Storage.open(settings, max_connections=1) as store:
        if expires_at is not None:
            report.expires_at, report.note = temporary_limit(
                expires_at, *await store.credential_lifetime()
            )
        return {
            media_id: await store.presigned_get(key, options.expires_s)
            for media_id, key in keys.items()
        }


def format_urls(report: UrlReport) -> str:
    """One URL per line: the URL alone when one row was asked for, `media_id URL` for
    several. The rows without one go to stderr (see the CLI)."""
    if report.asked == 1:
        return "\n".join(report.urls.values())
    return "\n".join(f"{printable(media_id)} {url}" for media_id, url in report.urls.items())


def problem_line(problem: Problem) -> str:
    return f"{printable(problem.media_id)}: {problem.kind}: {printable(problem.detail)}"
