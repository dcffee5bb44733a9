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

from archiver import envfile
from archiver.console import Display, quieten_stderr
from archiver.errors import ConfigError
from archiver.progress import LOG_INTERVAL_S
from archiver.settings import (
    DATABASE_VARIABLES,
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
)

F = TypeVar("F", bound=Callable[..., Any])
DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]


def env(setting: str) -> list[str]:
    """The environment variables of a setting, for click's `envvar=`."""
    return list(ENVIRONMENT[setting])


def _load_env_file(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    path = value or ctx.find_root().meta.get("archiver.env_file")
    if path:
        if not Path(path).is_file():
            raise click.BadParameter(f"{path} is not a file", param_hint="--env-file")
    elif Path(".env").is_file():
        path = ".env"
    warnings = envfile.environment_warnings(dict(os.environ))
    if path:
        in_file, keys, shadowed = envfile.load(Path(path))
        warnings += in_file
        ctx.meta["archiver.env_loaded"] = str(Path(path).resolve())
        ctx.meta["archiver.env_keys"] = keys
        ctx.meta["archiver.env_shadowed"] = shadowed
    for warning in warnings:
        click.echo(f"archiver: warning: {warning}", err=True)


def overrides(ctx: click.Context) -> list[str]:
    """What of the .env the environment overrides, one sentence each (for -v and check):
    a key the environment sets too, and the app's SUPABASE_DB_URL when DATABASE_URL, from
    the environment, comes first."""
    meta = ctx.find_root().meta
    where = meta.get("archiver.env_loaded")
    if where is None:
        return []
    said = [
        f"{key} in {where} is not used: the environment sets it"
        for key in sorted(meta.get("archiver.env_shadowed", ()))
    ]
    first, app = DATABASE_VARIABLES
    keys = meta.get("archiver.env_keys", ())
    if os.environ.get(first) and first not in keys and app in keys:
        said.append(f"{app} in {where} is not used: {first}, from the environment, comes first")
    return said


def _env_file_option(func: F) -> F:
    return click.option(
        "--env-file",
        type=click.Path(dir_okay=False),
        is_eager=True,
        expose_value=False,
        callback=_load_env_file,
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
        show_default=True,
        help="Target bucket (env ARCHIVER_BUCKET).",
    ),
    click.option(
        "--key-prefix",
        envvar=env("key_prefix"),
        default=DEFAULT_KEY_PREFIX,
        show_default=True,
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
        show_default=True,
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
        show_default=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Local media cache (env ARCHIVER_CACHE_ROOT).",
    ),
]
CONFIG_NAMES = ("database_url", "bucket", "key_prefix", "profile", "region", "endpoint_url")


def config_options(
    *, database: bool = True, s3: bool = True, cache: bool = True
) -> Callable[[F], F]:
    """The configuration options a command uses (and only those), each naming its
    environment variables, and `--env-file` for all. The command is called with one
    `settings` built from them (the defaults for the options it does not have)."""

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
        if s3:
            options += S3_OPTIONS
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


def source_of(ctx: click.Context, name: str) -> str | None:
    """Where the value of option `name` came from, as an error should name it: its flag
    (`--storage-class`), its variable (`ARCHIVER_STORAGE_CLASS`), or the variable and the
    .env file that set it; None for its default."""
    param = next((p for p in ctx.command.params if p.name == name), None)
    source = ctx.get_parameter_source(name)
    if param is None or source is None:
        return None
    if source is click.core.ParameterSource.ENVIRONMENT:
        names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
        variable = next((n for n in names if os.environ.get(n)), names[0] if names else None)
        meta = ctx.find_root().meta
        if variable in meta.get("archiver.env_keys", ()):
            return f"{variable} in {meta['archiver.env_loaded']}"
        return variable
    if source is click.core.ParameterSource.COMMANDLINE:
        opts: list[str] = list(getattr(param, "opts", None) or [name])
        return max(opts, key=len)
    return None


def name_its_source(exc: click.UsageError) -> None:
    """A bad value from a variable (or the .env) is named by it, not by its flag."""
    if isinstance(exc, click.BadParameter) and exc.ctx and exc.param and exc.param.name:
        from_env = click.core.ParameterSource.ENVIRONMENT
        if exc.ctx.get_parameter_source(exc.param.name) is from_env:
            exc.param_hint = source_of(exc.ctx, exc.param.name)


def empty_variables(ctx: click.Context) -> None:
    """ConfigError for a variable of one of the command's options that is set but empty
    (`ARCHIVER_BUCKET=`): left alone it would mean the default without a word."""
    meta = ctx.find_root().meta
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name or "") is click.core.ParameterSource.COMMANDLINE:
            continue
        names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
        for variable in names:
            if variable in os.environ and not os.environ[variable].strip():
                where = (
                    f" in {meta['archiver.env_loaded']}"
                    if variable in meta.get("archiver.env_keys", ())
                    else ""
                )
                raise ConfigError(
                    f"{variable} is set but empty{where}: give it a value, or remove it for "
                    "the default"
                )


def _source(name: str) -> str | None:
    ctx = click.get_current_context(silent=True)
    return source_of(ctx, name) if ctx is not None else None


def _env_file() -> str | None:
    """The .env read, or "" when there was none to read."""
    ctx = click.get_current_context(silent=True)
    return ctx.find_root().meta.get("archiver.env_loaded", "") if ctx is not None else None


def _database_from(database_url: str | None) -> str | None:
    """Where the command line's database URL came from: the flag, or which variable (and
    the .env that set it)."""
    ctx = click.get_current_context(silent=True)
    if not database_url or ctx is None:
        return None
    return source_of(ctx, "database_url")


def build_settings(params: dict[str, Any], *, verbose: bool = False) -> Settings:
    """A Settings from the shared options (removed from `params`); the defaults for the
    options a command does not have. With `verbose`, a line on stderr says which database
    URL is used (password hidden) and where it came from."""
    database_url = params.pop("database_url", None) or None
    settings = Settings(
        database_url=database_url,
        database_from=_database_from(database_url),
        bucket=params.pop("bucket", DEFAULT_BUCKET),
        key_prefix=params.pop("key_prefix", DEFAULT_KEY_PREFIX),
        cache_root=params.pop("cache_root", Path(DEFAULT_CACHE_ROOT)),
        cache_root_from=_source("cache_root"),
        env_file=_env_file(),
        profile=params.pop("profile", None) or None,
        profile_from=_source("profile"),
        region=params.pop("region", None) or DEFAULT_REGION,
        endpoint_url=params.pop("endpoint_url", None) or None,
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
