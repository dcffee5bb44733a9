"""The command line's shared options: the configuration every command reads (each option
naming its environment variables, from `settings.ENVIRONMENT`), turned into one `Settings`
before the command runs, and the display options of the long jobs, turned into one
`Display`.

Precedence: flag > environment variable > `.env` file (or `--env-file`) > default. The
`.env` file is loaded by an eager option, before click reads the environment, and never
overrides a variable that is already set.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from archiver.console import Display, quieten_stderr
from archiver.errors import ConfigError
from archiver.progress import LOG_INTERVAL_S
from archiver.settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BUCKET,
    DEFAULT_CACHE_ROOT,
    DEFAULT_CONCURRENCY,
    DEFAULT_GLACIER_DAYS,
    DEFAULT_KEY_PREFIX,
    DEFAULT_LEASE_S,
    DEFAULT_MULTIPART_THRESHOLD_BYTES,
    DEFAULT_PART_SIZE_BYTES,
    DEFAULT_REGION,
    DEFAULT_WATCH_INTERVAL_S,
    ENVIRONMENT,
    MAX_CONCURRENCY,
    MEDIA_TYPES,
    MIB,
    STORAGE_CLASSES,
    ClientOptions,
    Settings,
    parse_bandwidth,
    redact_dsn,
    validate_endpoint,
)
from archiver.sources import (
    empty_variables,
    load_env_file,
    overrides,
    settings_sources,
    without_effect,
)

F = TypeVar("F", bound=Callable[..., Any])
DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]


def env(setting: str) -> list[str]:
    """The environment variables of a setting, for click's `envvar=`."""
    return list(ENVIRONMENT[setting])


def _env_file_option(func: F) -> F:
    return click.option(
        "--env-file",
        type=click.Path(dir_okay=False),
        is_eager=True,
        expose_value=False,
        callback=load_env_file,
        metavar="PATH",
        help="Read variables from PATH instead of ./.env.",
    )(func)


def _apply(func: F, options: list[Callable[[F], F]]) -> F:
    for option in reversed(options):
        func = option(func)
    return func


DATABASE_OPTIONS = [
    click.option(
        "--database-url",
        envvar=env("database_url"),
        metavar="DSN",
        help="PostgreSQL DSN (env DATABASE_URL, then the app's SUPABASE_DB_URL).",
    ),
]
S3_OPTIONS = [
    click.option(
        "--bucket",
        envvar=env("bucket"),
        default=DEFAULT_BUCKET,
        show_default=f"{DEFAULT_BUCKET}, unless ARCHIVER_BUCKET is set",
        help="Target bucket (env ARCHIVER_BUCKET).",
    ),
    click.option(
        "--key-prefix",
        envvar=env("key_prefix"),
        default=DEFAULT_KEY_PREFIX,
        show_default=f"{DEFAULT_KEY_PREFIX}, unless ARCHIVER_KEY_PREFIX is set",
        help="First part of every key (env ARCHIVER_KEY_PREFIX).",
    ),
    click.option(
        "--profile",
        envvar=env("profile"),
        help="AWS profile (env AWS_PROFILE; default: the AWS credential chain).",
    ),
    click.option(
        "--region",
        envvar=env("region"),
        default=DEFAULT_REGION,
        show_default=f"{DEFAULT_REGION}, unless AWS_REGION is set",
        help="AWS region (env AWS_REGION, then AWS_DEFAULT_REGION).",
    ),
    click.option(
        "--endpoint-url",
        envvar=env("endpoint_url"),
        metavar="URL",
        help="S3-compatible endpoint: MinIO, R2, Ceph, moto (env AWS_ENDPOINT_URL_S3, then "
        "AWS_ENDPOINT_URL).",
    ),
]
CACHE_OPTIONS = [
    click.option(
        "--cache-root",
        envvar=env("cache_root"),
        default=DEFAULT_CACHE_ROOT,
        show_default=f"{DEFAULT_CACHE_ROOT}, unless ARCHIVER_CACHE_ROOT is set",
        type=click.Path(file_okay=False, path_type=Path),
        help="Local media cache (env ARCHIVER_CACHE_ROOT).",
    ),
]
CONFIG_NAMES = ("database_url", "bucket", "key_prefix", "profile", "region", "endpoint_url")


def config_options(
    *, database: bool = True, s3: bool = True, cache: bool = True, bucket: bool = False
) -> Callable[[F], F]:
    """The configuration options a command uses (and only those), each naming its
    environment variables, and `--env-file` for all (`bucket`: of the S3 options, only the
    bucket and the key prefix, for a command that talks to no S3). The command is called
    with one `settings` built from them (the defaults for the options it does not have)."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def command(**params: Any) -> Any:
            if params.get("quiet") and params.get("verbose"):
                raise click.UsageError("-q/--quiet and -v/--verbose cannot be combined")
            empty_variables(click.get_current_context())
            settings = build_settings(params, verbose=bool(params.get("verbose")))
            return func(settings, **params)

        options: list[Callable[[F], F]] = [_env_file_option]
        if database:
            options += DATABASE_OPTIONS
        if s3 or bucket:
            options += S3_OPTIONS if s3 else S3_OPTIONS[:2]  # --bucket, --key-prefix
        if cache:
            options += CACHE_OPTIONS
        return _apply(cast(F, command), options)

    return decorate


QUIET_HELP = (
    "For cron: print nothing unless something needs a person (a new problem, an error); "
    "missing files are counted, not listed. Implies --no-progress."
)


def run_options(func: F) -> F:
    """What every long job (upload, verify, prune-local, restore) shows and logs; the
    command is called with one `display` built from them."""

    @functools.wraps(func)
    def command(*args: Any, **params: Any) -> Any:
        quiet = params.pop("quiet")
        if quiet:
            quieten_stderr()
        display = Display(
            as_json=params.pop("as_json"),
            no_progress=params.pop("no_progress"),
            quiet=quiet,
            verbose=params.pop("verbose"),
            progress_interval=params.pop("progress_interval"),
            log_file=params.pop("log_file"),
            log_format=params.pop("log_format"),
        )
        return func(*args, display=display, **params)

    return _apply(
        cast(F, command),
        [
            json_option(),
            click.option("--no-progress", is_flag=True, help="No progress bar or progress lines."),
            click.option("-v", "--verbose", is_flag=True, help="One line per row."),
            click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP),
            click.option(
                "--progress-interval",
                envvar=env("progress_interval"),
                type=Number(0),
                default=LOG_INTERVAL_S,
                show_default=True,
                metavar="SECONDS",
                help="Seconds between progress lines when stderr is not a terminal, and in "
                "--log-file (env ARCHIVER_PROGRESS_INTERVAL).",
            ),
            click.option(
                "--log-file",
                envvar=env("log_file"),
                type=click.Path(dir_okay=False, path_type=Path),
                metavar="FILE",
                help="Append timestamped progress, warnings and the summary to FILE "
                "(env ARCHIVER_LOG_FILE).",
            ),
            click.option(
                "--log-format",
                envvar=env("log_format"),
                type=click.Choice(["text", "json"]),
                default="text",
                show_default=True,
                help="--log-file as text lines or JSON lines (env ARCHIVER_LOG_FORMAT).",
            ),
        ],
    )


def json_option(help: str = "Print one JSON object on stdout.") -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help=help)


class Number(click.FloatRange):
    """A number of seconds, days, MiB: `'abc' is not a valid number.` when it is none."""

    name = "number"


class Whole(click.IntRange):
    """A count: `'abc' is not a valid whole number.` when it is none."""

    name = "whole number"


def build_settings(params: dict[str, Any], *, verbose: bool = False) -> Settings:
    """A Settings from the shared options (removed from `params`); the defaults for the
    options a command does not have. With `verbose`, a line on stderr says which database
    URL is used (password hidden) and where it came from."""
    database_url = params.pop("database_url", None) or None
    settings = Settings(
        database_url=database_url,
        bucket=params.pop("bucket", DEFAULT_BUCKET),
        key_prefix=params.pop("key_prefix", DEFAULT_KEY_PREFIX),
        cache_root=params.pop("cache_root", Path(DEFAULT_CACHE_ROOT)),
        profile=params.pop("profile", None) or None,
        region=params.pop("region", None) or DEFAULT_REGION,
        endpoint_url=params.pop("endpoint_url", None) or None,
        **settings_sources(database_url),
        # AWS_RETRY_MODE, AWS_MAX_ATTEMPTS, AWS_REQUEST_CHECKSUM_CALCULATION: read here, for
        # every command, and passed to botocore explicitly (see `ClientOptions`).
        client=ClientOptions.from_env(os.environ),
    )
    if verbose and settings.database_url:
        click.echo(
            f"archiver: database {redact_dsn(settings.database_url)} "
            f"(from {settings.database_from})",
            err=True,
        )
    ctx = click.get_current_context(silent=True)
    if verbose and ctx is not None:
        for line in overrides(ctx):
            click.echo(f"archiver: {line}", err=True)
    return settings


def mib(_ctx: click.Context, _param: click.Parameter, value: float | None) -> int | None:
    """A click callback: MiB as bytes."""
    return None if value is None else int(value * MIB)


def parsed(parse: Callable[[str], int]) -> Callable[..., int | None]:
    """A click callback: the option's value through `parse` (None when unset), a ValueError
    as a usage error."""

    def callback(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
        if value is None or value == "":
            return None
        try:
            return parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc

    return callback


def concurrency_option(what: str) -> Callable[[F], F]:
    return click.option(
        "--concurrency",
        envvar=env("concurrency"),
        type=Whole(1, MAX_CONCURRENCY),
        default=DEFAULT_CONCURRENCY,
        show_default=True,
        help=f"{what} in flight at once (env ARCHIVER_CONCURRENCY).",
    )


def media_type_option(media_types: tuple[str, ...]) -> Callable[[F], F]:
    return click.option(
        "--media-type",
        "media_types",
        type=click.Choice(media_types),
        multiple=True,
        help="Only rows of this media type (repeatable).",
    )


PRIVATE_KEY_OPTION = click.option(
    "--cdn-private-key",
    envvar=env("cdn_private_key"),
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PEM",
    help="The CloudFront key pair's private key file (env ARCHIVER_CDN_PRIVATE_KEY); never "
    "printed.",
)


UPLOAD_OPTIONS: list[Callable[[Any], Any]] = [
    concurrency_option("Uploads"),
    click.option(
        "--batch-size",
        type=Whole(1, 10_000),
        default=DEFAULT_BATCH_SIZE,
        show_default=True,
        help="Most rows written by one grouped UPDATE.",
    ),
    click.option(
        "--limit",
        type=Whole(1),
        help="Work on at most N rows (missing files and known problems take none).",
    ),
    click.option("--dry-run", is_flag=True, help="Write nothing; list what would be uploaded."),
    click.option(
        "--force",
        is_flag=True,
        help="Every row, even archived ones; upload again and rewrite archive_url.",
    ),
    media_type_option(MEDIA_TYPES),
    click.option(
        "--since",
        type=click.DateTime(DATE_FORMATS),
        metavar="DATE",
        help="Only rows whose created_at (UTC) is at or after DATE (YYYY-MM-DD, or "
        "YYYY-MM-DDTHH:MM:SS); rows with no created_at are left out.",
    ),
    click.option(
        "--until",
        type=click.DateTime(DATE_FORMATS),
        metavar="DATE",
        help="Only rows whose created_at (UTC) is before DATE; rows with no created_at are "
        "left out.",
    ),
    click.option(
        "--storage-class",
        envvar=env("storage_class"),
        type=click.Choice(STORAGE_CLASSES, case_sensitive=False),
        metavar="CLASS",
        help=f"Storage class of new objects: {', '.join(STORAGE_CLASSES)} (env "
        "ARCHIVER_STORAGE_CLASS; default: none asked, so the server's default, STANDARD on "
        "AWS).",
    ),
    click.option(
        "--max-bandwidth",
        envvar=env("max_bandwidth"),
        callback=parsed(parse_bandwidth),
        metavar="RATE",
        help="Most bytes per second sent, e.g. 50MB, 10MiB, 500KB (env "
        "ARCHIVER_MAX_BANDWIDTH; "
        "default: no limit).",
    ),
    click.option(
        "--multipart-threshold",
        type=Number(5),
        callback=mib,
        default=DEFAULT_MULTIPART_THRESHOLD_BYTES / MIB,
        show_default=True,
        metavar="MIB",
        help="Files larger than this many MiB are uploaded in parts.",
    ),
    click.option(
        "--part-size",
        type=Number(5, 5120),
        callback=mib,
        default=DEFAULT_PART_SIZE_BYTES / MIB,
        show_default=True,
        metavar="MIB",
        help="Size of each part of a multipart upload, in MiB.",
    ),
    click.option(
        "--lease",
        "lease_s",
        type=Number(1),
        default=DEFAULT_LEASE_S,
        show_default=True,
        metavar="SECONDS",
        help="How long a claim on a row lasts unless renewed.",
    ),
    click.option(
        "--media-id",
        "media_ids",
        multiple=True,
        metavar="ID",
        help="Only this row (repeatable), tried even when it is a known problem.",
    ),
    click.option(
        "--retry-problems",
        is_flag=True,
        help="Try again the known problems (corrupt or invalid rows unchanged since they failed).",
    ),
    click.option(
        "--report",
        type=click.Path(dir_okay=False, writable=True, path_type=Path),
        metavar="FILE",
        help="Write one JSON line per row handled to FILE, as the run goes.",
    ),
    click.option(
        "--watch",
        is_flag=True,
        help="Keep running: archive new rows as they appear, a pass every --interval, "
        "until "
        "Ctrl-C or SIGTERM.",
    ),
    click.option(
        "--interval",
        envvar=env("interval"),
        type=Number(0.1),
        default=DEFAULT_WATCH_INTERVAL_S,
        show_default=True,
        metavar="SECONDS",
        help="With --watch: seconds between passes (env ARCHIVER_WATCH_INTERVAL).",
    ),
]


def upload_options(func: F) -> F:
    """upload's own options."""
    return _apply(func, UPLOAD_OPTIONS)


SETUP_BUCKET_OPTIONS: list[Callable[[Any], Any]] = [
    click.option(
        "--check-only",
        is_flag=True,
        help="Change nothing: exit 0 if the bucket exists and is reachable, 1 if not.",
    ),
    click.option("--enable-versioning", is_flag=True, help="Turn on object versioning."),
    click.option("--skip-lifecycle", is_flag=True, help="Leave lifecycle rules alone."),
    click.option(
        "--glacier-days",
        type=Whole(1, 36_500),
        help=f"Days before objects over 128 KiB move to GLACIER_IR (default: the days of the "
        f"rule in place, {DEFAULT_GLACIER_DAYS} for a new one).",
    ),
    click.option(
        "--no-block-public-acls",
        "block_public_acls",
        flag_value=False,
        default=True,
        help="Leave BlockPublicAcls off (the other three flags stay on): for Ceph RGW "
        "before "
        "the fix of its tracker issue 49135, which refuses every upload while it is on.",
    ),
    click.option(
        "--http-endpoint-url",
        metavar="URL",
        help="The same S3 server over plain HTTP, where setup-bucket checks that its "
        "TLS-only "
        "policy is enforced (known without it for AWS and https endpoints on port 443).",
    ),
]


def setup_bucket_options(func: F) -> F:
    """setup-bucket's own options."""
    return _apply(func, SETUP_BUCKET_OPTIONS)


def watch_flags(watch: bool, *, dry_run: bool, force: bool, media_ids: tuple[str, ...]) -> None:
    """--watch archives what appears, unattended: no dry run, no forced or named rows; and
    --interval means nothing without it."""
    if not watch:
        without_effect("--interval", "--watch")
        return
    given = (("--dry-run", dry_run), ("--force", force), ("--media-id", bool(media_ids)))
    clash = [flag for flag, on in given if on]
    if clash:
        raise ConfigError(f"--watch cannot be combined with {clash[0]}")


def plain_http(url: str | None) -> str | None:
    url = validate_endpoint(url)
    if url is not None and not url.startswith("http://"):
        raise ConfigError(f"--http-endpoint-url {url!r} is not a plain http:// URL")
    return url


def kms_arn(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.startswith("arn:"):
        raise click.BadParameter("give the key's ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)")
    return value
