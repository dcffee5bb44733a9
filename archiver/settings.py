"""Settings: built once at the edge (the CLI), frozen, secrets redacted in `repr`.

Nothing below `cli.py` and this module reads `os.environ`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

from archiver.errors import ConfigError

DEFAULT_BUCKET = "social-tui"
DEFAULT_KEY_PREFIX = "cache"
DEFAULT_CACHE_ROOT = "cache/media"
DEFAULT_REGION = "us-east-1"

DEFAULT_CONCURRENCY = 32  # uploads, checks or downloads in flight
DEFAULT_LEASE_S = 300.0  # how long a claim on a row lasts unless renewed
DEFAULT_WATCH_INTERVAL_S = 60.0  # upload --watch: seconds between passes
DEFAULT_URL_EXPIRES_S = 3600  # url: how long a signed or presigned URL works
DEFAULT_CHECK_SAMPLE = 200  # check: rows whose local file is looked for
DEFAULT_GLACIER_DAYS = 90  # setup-bucket: days before objects over 128 KiB move to GLACIER_IR
MAX_CONCURRENCY = 1024
DEFAULT_BATCH_SIZE = 50  # rows per grouped UPDATE
MIB = 1024 * 1024
# Files above this are uploaded in parts; below, one PUT (streamed from the file when it is
# larger than a part buffer), so a file's bytes are hashed once. Measured on the realistic
# mix (benchmarks/threshold.py): 64 MiB sent it 1.5x faster than 8 MiB at 20% less client
# CPU per file, and no slower than 256 MiB; a failed PUT costs at most 64 MiB sent again.
DEFAULT_MULTIPART_THRESHOLD_BYTES = 64 * MIB
DEFAULT_PART_SIZE_BYTES = 8 * MIB
MIN_PART_SIZE_BYTES = 5 * MIB  # S3's minimum for every part but the last
MAX_PART_SIZE_BYTES = 5 * 1024 * MIB
MAX_PARTS = 10_000  # S3's limit per multipart upload
# Bytes of file content held in memory at once across all workers (single PUT bodies and
# multipart parts together). Each 8 MiB part in flight costs about 20-25 MB of RSS.
PARTS_IN_FLIGHT_MAX = 8  # parts held in memory at once by default, whatever the concurrency

MEDIA_TYPES = ("image", "video", "document")
# `upload --storage-class`: the classes an archive that is read back now and then can use
# (GLACIER and DEEP_ARCHIVE objects cannot be read back without a restore first).
STORAGE_CLASSES = ("STANDARD", "STANDARD_IA", "INTELLIGENT_TIERING", "GLACIER_IR")
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*\Z", re.IGNORECASE)
_DURATION_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_BANDWIDTH_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(i?)(b?)(?:/s)?\s*\Z", re.IGNORECASE)

# The S3 client, the same for every command (`ClientOptions`).
RETRY_MODES = ("standard", "adaptive", "legacy")  # botocore's retry modes
DEFAULT_RETRY_MODE = "standard"  # retries 503 SlowDown, 500s, throttling, dropped connections
DEFAULT_MAX_ATTEMPTS = 6  # attempts per S3 request, the first one included
CHECKSUM_CALCULATIONS = ("when_required", "when_supported")
# Every PUT carries Content-MD5 and its ETag is checked, so botocore's extra CRC32 on each
# request body (its default since 1.36) is CPU spent for nothing, and a header some
# S3-compatible servers reject.
DEFAULT_CHECKSUM_CALCULATION = "when_required"
DEFAULT_PUT_CLIENT = "obstore"
PUT_CLIENTS = ("obstore", "botocore")

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")


_LIBPQ_PASSWORD_RE = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_QUERY_PASSWORD_RE = re.compile(r"((?:^|[?&])password=)[^&#]*", re.IGNORECASE)
# libpq's keyword/value form: `host=h port=5432 user=u password='p w'`, and nothing else.
_LIBPQ_DSN_RE = re.compile(r"(?:\s*[A-Za-z_]+\s*=\s*(?:'(?:[^'\\]|\\.)*'|[^\s'=]*)\s*)+")
NOT_A_DSN = "(hidden: neither a postgresql:// URL nor key=value pairs)"


def _keyword_dsn(dsn: str) -> bool:
    """Whether `dsn` is libpq's keyword/value form (no `://`, only key=value pairs)."""
    return _LIBPQ_DSN_RE.fullmatch(dsn) is not None


def _url_parts(dsn: str) -> tuple[str, str | None, str] | None:
    """(scheme://, userinfo or None, the rest) of a URL DSN, cutting at the LAST `@`: a
    password may hold unescaped `@`, `/`, `?` or `#`, and then no URL parser agrees on where
    it ends; everything before the last `@` is treated as secret. None for key=value DSNs."""
    scheme, sep, rest = dsn.partition("://")
    if not sep:
        return None
    userinfo, at, after = rest.rpartition("@")
    return (f"{scheme}://", userinfo if at else None, after if at else rest)


def redact_dsn(dsn: str | None) -> str:
    """The DSN with its password replaced by `***`, safe to print, whatever its shape."""
    if not dsn:
        return "(unset)"
    parts = _url_parts(dsn)
    if parts is None:
        if not _keyword_dsn(dsn):  # `user:pw@host/db` without its scheme, `postgresql//...`
            return NOT_A_DSN
        return _LIBPQ_PASSWORD_RE.sub(r"\1***", dsn)
    scheme, userinfo, rest = parts
    rest = _QUERY_PASSWORD_RE.sub(r"\1***", rest)
    if userinfo is None:
        return f"{scheme}{rest}"
    user, colon, _password = userinfo.partition(":")
    if any(c in user for c in "/?#@"):  # the cut is not where a parser would make it
        user = "***"
    return f"{scheme}{user}{':***' if colon else ''}@{rest}"


def dsn_secrets(dsn: str | None) -> list[str]:
    """Every string of the DSN that must never be printed: the password (raw and decoded)
    and, for a malformed one, the pieces a URL parser would cut it into."""
    if not dsn:
        return []
    found: list[str] = []
    parts = _url_parts(dsn)
    if parts is None and not _keyword_dsn(dsn):
        # Any piece of a string of unknown shape may be (part of) its password.
        found += [dsn, *re.split(r"[\s@/?#:=]", dsn)]
    elif parts is None:
        found += [m.group(2).strip("'") for m in _LIBPQ_PASSWORD_RE.finditer(dsn)]
    else:
        _scheme, userinfo, rest = parts
        if userinfo is not None and ":" in userinfo:
            found.append(userinfo.partition(":")[2])
        found += [m.group(0).partition("=")[2] for m in _QUERY_PASSWORD_RE.finditer(rest)]
    secrets: set[str] = set()
    for value in found:
        if not value:
            continue
        secrets.update({value, unquote(value)})
        # What a parser would take for a host, a path or a query when the password holds
        # an unescaped delimiter: pieces long enough to mean something.
        secrets.update(p for p in re.split(r"[@/?#:]", value) if len(p) >= 3)
    return sorted(secrets, key=len, reverse=True)


def scrub(text: str, dsn: str | None) -> str:
    """`text` (a library's message) with the DSN redacted and every secret of it removed."""
    if dsn:
        text = text.replace(dsn, redact_dsn(dsn))
    for secret in dsn_secrets(dsn):
        text = text.replace(secret, "***")
    return text


def check_dsn(dsn: str, variable: str = "DATABASE_URL") -> str:
    """The DSN when a PostgreSQL driver can read it as meant, else a ConfigError whose
    message names `variable` (where the DSN came from: `SUPABASE_DB_URL in /app/.env`) and
    what is wrong, and never holds any of the password."""
    parts = _url_parts(dsn)
    if parts is None:
        if _keyword_dsn(dsn):
            return dsn  # key=value form: libpq's own syntax, passed on as it is
        # Nothing of it is echoed: `user:password@host/db` copied without its scheme.
        raise ConfigError(
            f"{variable} is not a database URL: it must start with postgresql:// "
            "(postgresql://user:password@host:port/dbname) or be libpq key=value pairs"
        )
    scheme = parts[0]
    if scheme.lower() not in ("postgres://", "postgresql://"):
        raise ConfigError(
            f"{variable} must start with postgresql:// (got {scheme!r}): {redact_dsn(dsn)}"
        )
    # Read as a URL parser reads it (the authority ends at the first `/`, `?` or `#`): an `@`
    # in the user info, or an `@` after the authority that is not inside a query value,
    # means the password holds a delimiter, and drivers would cut it apart.
    netloc = urlsplit(dsn).netloc
    after = dsn[len(scheme) + len(netloc) :]
    stray_at = "@" in after and ("=" not in after or after.index("@") < after.index("="))
    if "@" in netloc.rpartition("@")[0] or stray_at:
        raise ConfigError(
            f"{variable}: the user name or password holds an unescaped '@', '/', '?' or '#': "
            "percent-encode it (for example '@' as %40, '/' as %2F, '?' as %3F, '#' as %23)"
        )
    hostlist = netloc.rpartition("@")[2]
    for hostspec in hostlist.split(","):
        after_ipv6 = hostspec.rpartition("]")[2]  # `[::1]:5432`: the port follows the `]`
        if ":" not in after_ipv6:
            continue
        port = after_ipv6.rpartition(":")[2]
        if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
            raise ConfigError(f"{variable} has an invalid port {port!r}: {redact_dsn(dsn)}")
    return dsn


def validate_bucket(name: str) -> str:
    """Return the bucket name or raise ConfigError if S3 would reject it."""
    if not _BUCKET_RE.match(name) or ".." in name:
        raise ConfigError(f"invalid bucket name {name!r}: 3-63 characters of a-z, 0-9, '.' and '-'")
    return name


def validate_key_prefix(prefix: str) -> str:
    """Return the prefix without surrounding slashes, or raise ConfigError."""
    cleaned = prefix.strip("/")
    if not cleaned or any(part in ("", ".", "..") for part in cleaned.split("/")):
        raise ConfigError(f"invalid key prefix {prefix!r}: use e.g. 'cache' or 'media/cache'")
    return cleaned


def validate_endpoint(url: str | None) -> str | None:
    """Return the endpoint URL or raise ConfigError when it is not an http(s) URL."""
    if url is None or url == "":
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"invalid endpoint URL {url!r}: expected http(s)://host[:port]")
    return url


@dataclass(frozen=True)
class ClientOptions:
    """How the S3 client behaves, for every command alike: botocore's retry mode, attempts
    per request (the first included, as AWS_MAX_ATTEMPTS counts them) and when it adds a
    checksum to a request body."""

    retry_mode: str = DEFAULT_RETRY_MODE
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    checksum_calculation: str = DEFAULT_CHECKSUM_CALCULATION
    # What sends single PUTs of small files: obstore (the data plane), or botocore for every
    # request (ARCHIVER_PUT_CLIENT=botocore, a way back should a server need it).
    put_client: str = DEFAULT_PUT_CLIENT

    def __post_init__(self) -> None:
        if self.retry_mode not in RETRY_MODES:
            raise ConfigError(
                f"AWS_RETRY_MODE must be one of {', '.join(RETRY_MODES)}, not {self.retry_mode!r}"
            )
        if self.max_attempts < 1:
            raise ConfigError(f"AWS_MAX_ATTEMPTS must be at least 1, not {self.max_attempts}")
        if self.put_client not in PUT_CLIENTS:
            raise ConfigError(
                f"ARCHIVER_PUT_CLIENT must be one of {', '.join(PUT_CLIENTS)}, "
                f"not {self.put_client!r}"
            )
        if self.checksum_calculation not in CHECKSUM_CALCULATIONS:
            raise ConfigError(
                "AWS_REQUEST_CHECKSUM_CALCULATION must be one of "
                f"{', '.join(CHECKSUM_CALCULATIONS)}, not {self.checksum_calculation!r}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ClientOptions:
        """The options the AWS SDK variables ask for; archiver's defaults where unset."""
        attempts = env.get("AWS_MAX_ATTEMPTS", "").strip()
        if attempts and not (attempts.isascii() and attempts.isdigit()):
            raise ConfigError(f"AWS_MAX_ATTEMPTS must be a whole number, not {attempts!r}")
        return cls(
            retry_mode=env.get("AWS_RETRY_MODE", "").strip().lower() or DEFAULT_RETRY_MODE,
            max_attempts=int(attempts) if attempts else DEFAULT_MAX_ATTEMPTS,
            checksum_calculation=(
                env.get("AWS_REQUEST_CHECKSUM_CALCULATION", "").strip().lower()
                or DEFAULT_CHECKSUM_CALCULATION
            ),
            put_client=env.get("ARCHIVER_PUT_CLIENT", "").strip().lower() or DEFAULT_PUT_CLIENT,
        )


# Where the database's DSN is read from, first found first: archiver's own name, then the
# name the app's .env gives it (Supabase's connection string).
# Every environment variable archiver reads, by the setting or flag it gives (the first one
# set wins): read by `Settings.from_env`, the command line's options and the `.env` check.
ENVIRONMENT: dict[str, tuple[str, ...]] = {
    "database_url": ("DATABASE_URL", "SUPABASE_DB_URL"),
    "bucket": ("ARCHIVER_BUCKET",),
    "key_prefix": ("ARCHIVER_KEY_PREFIX",),
    "cache_root": ("ARCHIVER_CACHE_ROOT",),
    "profile": ("AWS_PROFILE",),
    "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "endpoint_url": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "concurrency": ("ARCHIVER_CONCURRENCY",),
    "storage_class": ("ARCHIVER_STORAGE_CLASS",),
    "max_bandwidth": ("ARCHIVER_MAX_BANDWIDTH",),
    "interval": ("ARCHIVER_WATCH_INTERVAL",),
    "progress_interval": ("ARCHIVER_PROGRESS_INTERVAL",),
    "log_file": ("ARCHIVER_LOG_FILE",),
    "log_format": ("ARCHIVER_LOG_FORMAT",),
    "cdn_domain": ("ARCHIVER_CDN_DOMAIN",),
    "cdn_key_id": ("ARCHIVER_CDN_KEY_ID",),
    "cdn_private_key": ("ARCHIVER_CDN_PRIVATE_KEY",),
    "cloudfront_endpoint_url": ("AWS_ENDPOINT_URL_CLOUDFRONT", "AWS_ENDPOINT_URL"),
    "sts_endpoint_url": ("AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL"),
}
DATABASE_VARIABLES = ENVIRONMENT["database_url"]


def first_set(environ: Mapping[str, str], setting: str) -> str | None:
    """The value of the first of `setting`'s variables set (not empty) in `environ`."""
    return next((environ[n] for n in ENVIRONMENT[setting] if environ.get(n)), None)


def database_variable(environ: Mapping[str, str]) -> str | None:
    """The first of DATABASE_VARIABLES set (not empty) in `environ`, or None."""
    return next((name for name in DATABASE_VARIABLES if environ.get(name)), None)


@dataclass(frozen=True)
class Settings:
    """Where things are: database, bucket, keys, local cache, AWS session and client."""

    database_url: str | None = field(default=None, repr=False)
    bucket: str = DEFAULT_BUCKET
    key_prefix: str = DEFAULT_KEY_PREFIX
    cache_root: Path = Path(DEFAULT_CACHE_ROOT)
    profile: str | None = None
    region: str = DEFAULT_REGION
    endpoint_url: str | None = None
    client: ClientOptions = field(default_factory=ClientOptions)
    # Where database_url came from, for -v and check: `DATABASE_URL`, `SUPABASE_DB_URL`
    # (either with " in PATH" when a .env set it) or `--database-url`.
    database_from: str | None = None
    # Where profile came from, for its errors: `AWS_PROFILE in /app/.env`, `--profile`
    profile_from: str | None = None
    cache_root_from: str | None = None  # ... and cache_root (None: the default)
    # The .env the command line read; "" when it found none in the working directory (None:
    # settings not made by the command line)
    env_file: str | None = None

    def __post_init__(self) -> None:
        validate_bucket(self.bucket)
        object.__setattr__(self, "key_prefix", validate_key_prefix(self.key_prefix))
        object.__setattr__(self, "endpoint_url", validate_endpoint(self.endpoint_url))

    def __repr__(self) -> str:
        return (
            f"Settings(database_url={redact_dsn(self.database_url)!r}, bucket={self.bucket!r}, "
            f"key_prefix={self.key_prefix!r}, cache_root={str(self.cache_root)!r}, "
            f"profile={self.profile!r}, region={self.region!r}, "
            f"endpoint_url={self.endpoint_url!r}, client={self.client!r}, "
            f"database_from={self.database_from!r})"
        )

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        env_file: str | Path | None = ".env",
        **overrides: object,
    ) -> Settings:
        """Settings from the variables the command line reads (DATABASE_URL, else
        SUPABASE_DB_URL; ARCHIVER_BUCKET, ARCHIVER_KEY_PREFIX, ARCHIVER_CACHE_ROOT,
        AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL_S3, ...), with the same defaults, as the
        command line reads them: `environ` (default: the process's environment) over the
        `env_file` when there is one (default: `.env` in the working directory, the app's;
        None: no file); `overrides` win. For programs that archive through the Python API
        (`archiver.archive`)."""
        process = environ is None or environ is os.environ
        merged = dict(os.environ if environ is None else environ)
        read: str | None = None
        from_file: set[str] = set()
        if env_file is not None and Path(env_file).is_file():
            from dotenv import dotenv_values

            values_in_file = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
            from_file = set(values_in_file) - set(merged)
            merged = {**values_in_file, **merged}
            read = str(Path(env_file).resolve())
            if process:  # as the command line does: the AWS SDK reads its keys from there
                os.environ.update({k: values_in_file[k] for k in from_file})
        environ = merged
        variable = database_variable(environ)
        values: dict[str, object] = {
            "database_url": first_set(environ, "database_url"),
            "database_from": f"{variable} in {read}" if variable in from_file else variable,
            "profile_from": "AWS_PROFILE" if first_set(environ, "profile") else None,
            "bucket": first_set(environ, "bucket") or DEFAULT_BUCKET,
            "key_prefix": first_set(environ, "key_prefix") or DEFAULT_KEY_PREFIX,
            "cache_root": Path(first_set(environ, "cache_root") or DEFAULT_CACHE_ROOT),
            "profile": first_set(environ, "profile"),
            "region": first_set(environ, "region") or DEFAULT_REGION,
            "endpoint_url": first_set(environ, "endpoint_url"),
            "client": ClientOptions.from_env(environ),
            "env_file": read or "",
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def no_env_file_here(self) -> str:
        """For errors of a run that read no .env: there is none in the working directory,
        which is the likely cause (cron, or a unit, started elsewhere than the app's)."""
        if self.env_file != "":
            return ""
        return (
            f" (there is no .env in {os.getcwd()}: run archiver from the app's directory, "
            "e.g. `cd /srv/app && archiver ...` in cron, or pass --env-file)"
        )

    def require_database(self) -> str:
        """The DSN, or a ConfigError saying how to give one."""
        if not self.database_url:
            raise ConfigError(
                "no database configured: set DATABASE_URL (or the app's SUPABASE_DB_URL), in the "
                "environment or ./.env, or pass --database-url" + self.no_env_file_here()
            )
        # Named as it was given: `SUPABASE_DB_URL in /app/.env`, `DATABASE_URL`, the flag.
        return check_dsn(self.database_url, self.database_from or "DATABASE_URL")


def parse_bandwidth(text: str) -> int:
    """Bytes per second from `50MB`, `10MiB`, `500k`, `2000000` (`/s` allowed; k, M, G, T
    are powers of 1000, Ki, Mi, Gi, Ti of 1024); 0 for `0` (no limit); ValueError when it is
    not one."""
    m = _BANDWIDTH_RE.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not a rate: use bytes per second, e.g. 50MB, 10MiB, 500KB")
    number, unit, binary = float(m.group(1)), m.group(2).lower(), bool(m.group(3))
    if binary and not unit:
        raise ValueError(f"{text!r} is not a rate: use bytes per second, e.g. 50MB, 10MiB, 500KB")
    power = " kmgt".index(unit) if unit else 0
    rate = int(number * (1024 if binary else 1000) ** power)
    if number == 0:
        return 0  # no limit, as rclone's --bwlimit 0 and s5cmd read it
    if rate < 1024:
        raise ValueError(f"{text!r} is below 1 KiB/s (0 means no limit)")
    return rate


def parse_duration(text: str) -> int:
    """Seconds from `3600`, `90s`, `15m`, `12h` or `7d`; ValueError when it is not one."""
    m = _DURATION_RE.match(text)
    if m is None or int(m.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration: use e.g. 3600, 90s, 15m, 12h or 7d")
    return int(m.group(1)) * _DURATION_UNIT_S[m.group(2).lower()]


@dataclass(frozen=True)
class UploadOptions:
    """How `archiver upload` runs."""

    concurrency: int = DEFAULT_CONCURRENCY
    batch_size: int = DEFAULT_BATCH_SIZE
    limit: int | None = None
    dry_run: bool = False
    force: bool = False
    media_types: tuple[str, ...] = ()
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD_BYTES
    part_size: int = DEFAULT_PART_SIZE_BYTES
    memory_budget: int | None = None  # bytes of file content held at once; None: byte_budget
    flush_interval_s: float = 1.0
    lease_s: float = DEFAULT_LEASE_S
    retry_problems: bool = False  # try known problems again (they are set aside otherwise)
    media_ids: tuple[str, ...] = ()  # only these rows (their known problems tried again)
    created_since: datetime | None = None  # only rows created at or after (UTC, naive)
    created_until: datetime | None = None  # only rows created before (UTC, naive)
    storage_class: str | None = None  # of new objects; None: the bucket's default
    max_bandwidth: int | None = None  # bytes per second sent, at most

    def __post_init__(self) -> None:
        if self.storage_class is not None and self.storage_class not in STORAGE_CLASSES:
            raise ConfigError(
                f"--storage-class must be one of {', '.join(STORAGE_CLASSES)}, "
                f"not {self.storage_class!r}"
            )
        if self.max_bandwidth and self.max_bandwidth < 1024:  # (0: no limit)
            raise ConfigError("--max-bandwidth must be at least 1 KiB/s, or 0 for no limit")
        if self.created_since and self.created_until and self.created_since >= self.created_until:
            raise ConfigError("--since must be before --until")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ConfigError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}")
        if self.batch_size < 1:
            raise ConfigError("--batch-size must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("--limit must be at least 1")
        if not MIN_PART_SIZE_BYTES <= self.part_size <= MAX_PART_SIZE_BYTES:
            raise ConfigError("--part-size must be between 5 MiB and 5 GiB")
        if self.multipart_threshold < MIN_PART_SIZE_BYTES:
            raise ConfigError("--multipart-threshold must be at least 5 MiB")
        if self.lease_s < 1:
            raise ConfigError("--lease must be at least 1 second")
        if self.memory_budget is not None and self.memory_budget < self.part_size:
            # One part must fit, or a large file could never start.
            object.__setattr__(self, "memory_budget", self.part_size)
        unknown = set(self.media_types) - set(MEDIA_TYPES)
        if unknown:
            raise ConfigError(f"unknown media type(s): {', '.join(sorted(unknown))}")

    @property
    def byte_budget(self) -> int:
        """Bytes of file content held in memory at once across all workers: `memory_budget`
        when given, else a part for every four uploads in flight, between 2 and
        PARTS_IN_FLIGHT_MAX parts (64 MiB at the defaults: 32 in flight, 8 MiB parts)."""
        if self.memory_budget is not None:
            return self.memory_budget
        parts = min(PARTS_IN_FLIGHT_MAX, max(2, self.concurrency // 4))
        return parts * self.part_size
