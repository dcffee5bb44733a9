"""The command line: flags and environment -> Settings, `asyncio.run`, exit codes.

Precedence: flag > environment variable > `.env` file (or `--env-file`) > default. The
`.env` file is loaded by an eager option, before click reads the environment, and never
overrides a variable that is already set.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from archiver import __version__, envfile, iam
from archiver.errors import ArchiverError, ConfigError
from archiver.models import Outcome
from archiver.pipeline import Interrupt
from archiver.progress import (
    LOG_INTERVAL_S,
    RUN_LOG,
    Progress,
    Reporter,
    event,
    format_summary,
    open_log_file,
)
from archiver.settings import (
    DATABASE_VARIABLES,
    DEFAULT_BATCH_SIZE,
    DEFAULT_BUCKET,
    DEFAULT_CACHE_ROOT,
    DEFAULT_CONCURRENCY,
    DEFAULT_KEY_PREFIX,
    DEFAULT_MULTIPART_THRESHOLD_BYTES,
    DEFAULT_PART_SIZE_BYTES,
    DEFAULT_REGION,
    MAX_CONCURRENCY,
    MEDIA_TYPES,
    MIB,
    STORAGE_CLASSES,
    ClientOptions,
    Settings,
    UploadOptions,
    database_variable,
    parse_bandwidth,
    parse_duration,
    redact_dsn,
    validate_endpoint,
)
from archiver.signals import run_async, run_job

F = TypeVar("F", bound=Callable[..., Any])


def _load_env_file(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    path = value or ctx.find_root().meta.get("archiver.env_file")
    if path:
        if not Path(path).is_file():
            raise click.BadParameter(f"{path} is not a file", param_hint="--env-file")
    elif Path(".env").is_file():
        path = ".env"
    if path:
        warnings, keys = envfile.load(Path(path))
        for warning in warnings:
            click.echo(f"archiver: warning: {warning}", err=True)
        ctx.meta["archiver.env_loaded"] = str(Path(path).resolve())
        ctx.meta["archiver.env_keys"] = keys


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
        envvar=list(DATABASE_VARIABLES),
        metavar="DSN",
        help="PostgreSQL DSN (env DATABASE_URL, then the app's SUPABASE_DB_URL).",
    ),
]
S3_OPTIONS = [
    click.option(
        "--bucket",
        envvar="ARCHIVER_BUCKET",
        default=DEFAULT_BUCKET,
        show_default=True,
        help="Target bucket (env ARCHIVER_BUCKET).",
    ),
    click.option(
        "--key-prefix",
        envvar="ARCHIVER_KEY_PREFIX",
        default=DEFAULT_KEY_PREFIX,
        show_default=True,
        help="First part of every key (env ARCHIVER_KEY_PREFIX).",
    ),
    click.option(
        "--profile",
        envvar="AWS_PROFILE",
        help="AWS profile (env AWS_PROFILE; default: the AWS credential chain).",
    ),
    click.option(
        "--region",
        envvar=["AWS_REGION", "AWS_DEFAULT_REGION"],
        default=DEFAULT_REGION,
        show_default=True,
        help="AWS region (env AWS_REGION, then AWS_DEFAULT_REGION).",
    ),
    click.option(
        "--endpoint-url",
        envvar=["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"],
        metavar="URL",
        help="S3-compatible endpoint: MinIO, R2, Ceph, moto (env AWS_ENDPOINT_URL_S3, then "
        "AWS_ENDPOINT_URL).",
    ),
]
CACHE_OPTIONS = [
    click.option(
        "--cache-root",
        envvar="ARCHIVER_CACHE_ROOT",
        default=DEFAULT_CACHE_ROOT,
        show_default=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Local media cache (env ARCHIVER_CACHE_ROOT).",
    ),
]


def config_options(
    *, database: bool = True, s3: bool = True, cache: bool = True
) -> Callable[[F], F]:
    """The configuration options a command uses (and only those), each naming its
    environment variable; `--env-file` for all."""

    def decorate(func: F) -> F:
        options: list[Callable[[F], F]] = [_env_file_option]
        if database:
            options += DATABASE_OPTIONS
        if s3:
            options += S3_OPTIONS
        if cache:
            options += CACHE_OPTIONS
        return _apply(func, options)

    return decorate


def run_options(func: F) -> F:
    """What every long job (upload, verify, prune-local, restore) shows and logs."""
    return _apply(
        func,
        [
            click.option(
                "--json", "as_json", is_flag=True, help="Print one JSON object on stdout."
            ),
            click.option("--no-progress", is_flag=True, help="No progress bar or progress lines."),
            click.option("-v", "--verbose", is_flag=True, help="One line per row."),
            click.option(
                "--progress-interval",
                envvar="ARCHIVER_PROGRESS_INTERVAL",
                type=click.FloatRange(0),
                default=LOG_INTERVAL_S,
                show_default=True,
                metavar="SECONDS",
                help="Seconds between progress lines when stderr is not a terminal, and in "
                "--log-file (env ARCHIVER_PROGRESS_INTERVAL).",
            ),
            click.option(
                "--log-file",
                envvar="ARCHIVER_LOG_FILE",
                type=click.Path(dir_okay=False, path_type=Path),
                metavar="FILE",
                help="Append timestamped progress, warnings and the summary to FILE "
                "(env ARCHIVER_LOG_FILE).",
            ),
            click.option(
                "--log-format",
                envvar="ARCHIVER_LOG_FORMAT",
                type=click.Choice(["text", "json"]),
                default="text",
                show_default=True,
                help="--log-file as text lines or JSON lines (env ARCHIVER_LOG_FORMAT).",
            ),
        ],
    )


def _database_from(database_url: str | None) -> str | None:
    """Where the command line's database URL came from: the flag, or which variable (and
    the .env that set it)."""
    ctx = click.get_current_context(silent=True)
    if not database_url or ctx is None:
        return None
    if ctx.get_parameter_source("database_url") is not click.core.ParameterSource.ENVIRONMENT:
        return "--database-url"
    name = database_variable(os.environ) or DATABASE_VARIABLES[0]
    meta = ctx.find_root().meta
    if name in meta.get("archiver.env_keys", ()):
        return f"{name} in {meta['archiver.env_loaded']}"
    return name


def build_settings(params: dict[str, Any]) -> Settings:
    """A Settings from the shared options (removed from `params`); the defaults for the
    options a command does not have. With -v, a line on stderr says which database URL is
    used (password hidden) and where it came from."""
    database_url = params.pop("database_url", None) or None
    settings = Settings(
        database_url=database_url,
        database_from=_database_from(database_url),
        bucket=params.pop("bucket", DEFAULT_BUCKET),
        key_prefix=params.pop("key_prefix", DEFAULT_KEY_PREFIX),
        cache_root=params.pop("cache_root", Path(DEFAULT_CACHE_ROOT)),
        profile=params.pop("profile", None) or None,
        region=params.pop("region", None) or DEFAULT_REGION,
        endpoint_url=params.pop("endpoint_url", None) or None,
        # AWS_RETRY_MODE, AWS_MAX_ATTEMPTS, AWS_REQUEST_CHECKSUM_CALCULATION: read here, for
        # every command, and passed to botocore explicitly (see `ClientOptions`).
        client=ClientOptions.from_env(os.environ),
    )
    if params.get("verbose") and settings.database_url:
        click.echo(
            f"archiver: database {redact_dsn(settings.database_url)} "
            f"(from {settings.database_from})",
            err=True,
        )
    return settings


def progress_mode(no_progress: bool) -> str:
    return "off" if no_progress else ("bar" if sys.stderr.isatty() else "log")


@contextlib.contextmanager
def run_log(params: dict[str, Any], command: str) -> Iterator[None]:
    """`--log-file`: the run's events (start, progress, warnings, summary) appended to it."""
    path, fmt = params.pop("log_file", None), params.pop("log_format", "text")
    if path is None:
        yield
        return
    handler = open_log_file(path, fmt)
    root = logging.getLogger()
    root.addHandler(handler)
    RUN_LOG.setLevel(logging.INFO)
    event("start", f"archiver {__version__} {command}", command=command, pid=os.getpid())
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        RUN_LOG.setLevel(logging.NOTSET)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="archiver")
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False),
    metavar="PATH",
    help="Read variables from PATH instead of ./.env.",
)
@click.pass_context
def cli(ctx: click.Context, env_file: str | None) -> None:
    """Move cached media into S3 for good and record each object's URL in post_media."""
    ctx.meta["archiver.env_file"] = env_file


def log_end(code: int, report: dict[str, Any]) -> None:
    """The run log's last record: the exit code and the report `--json` prints."""
    event("end", f"finished, exit code {code}", exit_code=code, report=report)


def finish(ran: tuple[Any, bool], as_json: bool, text: Callable[[Any], str]) -> int:
    """Print a job's report, as one JSON object or as text; its exit code (130 when it was
    interrupted: what it had done is in the report). The run log gets the same object."""
    report, interrupted = ran
    data = report.as_json()
    if interrupted:
        data["interrupted"] = True
    code = 130 if interrupted else int(report.exit_code)
    log_end(code, data)
    if as_json:
        click.echo(json.dumps(data))
    else:
        click.echo(text(report))
        if interrupted:
            click.echo("Interrupted: the counts above are what was done; run again to finish.")
    return code


def _mib(_ctx: click.Context, _param: click.Parameter, value: float | None) -> int | None:
    return None if value is None else int(value * MIB)


def _parsed(parse: Callable[[str], int]) -> Callable[..., int | None]:
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
        type=click.IntRange(1, MAX_CONCURRENCY),
        default=DEFAULT_CONCURRENCY,
        show_default=True,
        help=f"{what} in flight at once.",
    )


DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]


@cli.command()
@config_options()
@concurrency_option("Uploads")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Most rows written by one grouped UPDATE.",
)
@click.option("--limit", type=click.IntRange(1), help="Archive at most N rows.")
@click.option("--dry-run", is_flag=True, help="Write nothing; list what would be uploaded.")
@click.option(
    "--force",
    is_flag=True,
    help="Every row, even archived ones; upload again and rewrite archive_url.",
)
@click.option(
    "--media-type",
    "media_types",
    type=click.Choice(MEDIA_TYPES),
    multiple=True,
    help="Only rows of this media type (repeatable).",
)
@click.option(
    "--since",
    type=click.DateTime(DATE_FORMATS),
    metavar="DATE",
    help="Only rows whose created_at (UTC) is at or after DATE (YYYY-MM-DD, or "
    "YYYY-MM-DDTHH:MM:SS); rows with no created_at are left out.",
)
@click.option(
    "--until",
    type=click.DateTime(DATE_FORMATS),
    metavar="DATE",
    help="Only rows whose created_at (UTC) is before DATE; rows with no created_at are left out.",
)
@click.option(
    "--storage-class",
    envvar="ARCHIVER_STORAGE_CLASS",
    type=click.Choice(STORAGE_CLASSES, case_sensitive=False),
    metavar="CLASS",
    help=f"Storage class of new objects: {', '.join(STORAGE_CLASSES)} (env "
    "ARCHIVER_STORAGE_CLASS; default: none asked, so the server's default, STANDARD on AWS).",
)
@click.option(
    "--max-bandwidth",
    envvar="ARCHIVER_MAX_BANDWIDTH",
    callback=_parsed(parse_bandwidth),
    metavar="RATE",
    help="Most bytes per second sent, e.g. 50MB, 10MiB, 500KB (env ARCHIVER_MAX_BANDWIDTH; "
    "default: no limit).",
)
@click.option(
    "--multipart-threshold",
    type=click.FloatRange(5),
    callback=_mib,
    default=DEFAULT_MULTIPART_THRESHOLD_BYTES / MIB,
    show_default=True,
    metavar="MIB",
    help="Files larger than this many MiB are uploaded in parts.",
)
@click.option(
    "--part-size",
    type=click.FloatRange(5, 5120),
    callback=_mib,
    default=DEFAULT_PART_SIZE_BYTES / MIB,
    show_default=True,
    metavar="MIB",
    help="Size of each part of a multipart upload, in MiB.",
)
@click.option(
    "--lease",
    "lease_s",
    type=click.FloatRange(1),
    default=300,
    show_default=True,
    metavar="SECONDS",
    help="How long a claim on a row lasts unless renewed.",
)
@click.option(
    "--media-id",
    "media_ids",
    multiple=True,
    metavar="ID",
    help="Only this row (repeatable), tried even when it is a known problem.",
)
@click.option(
    "--retry-problems",
    is_flag=True,
    help="Try again the known problems (corrupt or invalid rows unchanged since they failed).",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    metavar="FILE",
    help="Write one JSON line per row handled to FILE, as the run goes.",
)
@click.option(
    "--watch",
    is_flag=True,
    help="Keep running: archive new rows as they appear, a pass every --interval, until "
    "Ctrl-C or SIGTERM.",
)
@click.option(
    "--interval",
    envvar="ARCHIVER_WATCH_INTERVAL",
    type=click.FloatRange(0.1),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="With --watch: seconds between passes (env ARCHIVER_WATCH_INTERVAL).",
)
@run_options
def upload(**params: Any) -> int:
    """Upload every unarchived row's file and record its archive_url."""
    from archiver.commands.upload import run_upload
    from archiver.progress import RowLog

    settings = build_settings(params)
    if params["watch"]:
        clash = [f for f in ("dry_run", "force", "media_ids") if params[f]]
        if clash:
            flag = "--" + clash[0].replace("_", "-").replace("media-ids", "media-id")
            raise ConfigError(f"--watch cannot be combined with {flag}")
    options = UploadOptions(
        concurrency=params["concurrency"],
        batch_size=params["batch_size"],
        limit=params["limit"],
        dry_run=params["dry_run"],
        force=params["force"],
        media_types=tuple(params["media_types"]),
        multipart_threshold=params["multipart_threshold"],
        part_size=params["part_size"],
        lease_s=params["lease_s"],
        retry_problems=params["retry_problems"],
        media_ids=tuple(params["media_ids"]),
        created_since=params["since"],
        created_until=params["until"],
        storage_class=params["storage_class"].upper() if params["storage_class"] else None,
        max_bandwidth=params["max_bandwidth"],
    )
    with contextlib.ExitStack() as stack:
        on_result = None
        if params["report"] is not None:
            report = RowLog(params["report"])
            stack.callback(report.close)
            on_result = report.write
        stack.enter_context(run_log(params, "upload"))
        if params["watch"]:
            return _watch(settings, options, params, on_result)
        reporter = Reporter(
            mode=progress_mode(params["no_progress"]),
            verbose=params["verbose"],
            dry_run=options.dry_run,
            out=sys.stderr if params["as_json"] else sys.stdout,
            interval=params["progress_interval"],
        )
        summary = run_async(
            lambda interrupt: run_upload(
                settings, options, reporter, interrupt=interrupt, on_result=on_result
            )
        )
        code, data = summary.exit_code, summary.as_json()
        log_end(code, data)
    if params["as_json"]:
        click.echo(json.dumps(data))
    else:
        click.echo(format_summary(summary, bucket=settings.bucket))
    if summary.error:
        click.echo(f"archiver: error: {summary.error}", err=True)
    return code


def _watch(
    settings: Settings,
    options: UploadOptions,
    params: dict[str, Any],
    on_result: Callable[[Any], None] | None,
) -> int:
    """`upload --watch`: a line (or a JSON object) for each pass that did work, one for each
    that failed, and the totals at the end."""
    from archiver.commands.watch import format_watch, pass_line, run_watch
    from archiver.progress import utc_stamp

    as_json = params["as_json"]
    click.echo(
        f"archiver: watch: archiving new rows every {params['interval']:g} s into "
        f"s3://{settings.bucket}/{settings.key_prefix}/ (Ctrl-C or SIGTERM stops it)",
        err=True,
    )

    def on_pass(number: int, summary: Any) -> None:
        line = pass_line(number, summary)
        event("pass", line, number=number, report=summary.as_json())
        if as_json:
            click.echo(
                json.dumps({"pass": number, "at": utc_stamp(time.time()), **summary.as_json()})
            )
        else:
            click.echo(f"{utc_stamp(time.time())} archiver: watch: {line}")

    def on_error(number: int, message: str, wait_s: float) -> None:
        line = f"pass {number} failed: {message}; next pass in {wait_s:,.0f} s"
        event("pass", line, level=logging.WARNING, number=number, error=message)
        click.echo(f"{utc_stamp(time.time())} archiver: watch: {line}", err=True)

    def reporter() -> Reporter:
        return Reporter(
            mode="off",
            verbose=params["verbose"],
            dry_run=False,
            out=sys.stderr if as_json else sys.stdout,
            warn_missing=False,
        )

    report = run_async(
        lambda interrupt: run_watch(
            settings,
            options,
            interval_s=params["interval"],
            reporter=reporter,
            interrupt=interrupt,
            on_pass=on_pass,
            on_error=on_error,
            on_result=on_result,
        )
    )
    code, data = report.exit_code, report.as_json()
    log_end(code, data)
    click.echo(json.dumps(data) if as_json else format_watch(report))
    if report.error:
        click.echo(f"archiver: error: {report.error}", err=True)
    return code


def _plain_http(url: str | None) -> str | None:
    url = validate_endpoint(url)
    if url is not None and not url.startswith("http://"):
        raise ConfigError(f"--http-endpoint-url {url!r} is not a plain http:// URL")
    return url


@cli.command("setup-bucket")
@config_options(database=False, cache=False)
@click.option(
    "--check-only",
    is_flag=True,
    help="Change nothing: exit 0 if the bucket exists and is reachable, 1 if not.",
)
@click.option("--enable-versioning", is_flag=True, help="Turn on object versioning.")
@click.option("--skip-lifecycle", is_flag=True, help="Leave lifecycle rules alone.")
@click.option(
    "--glacier-days",
    type=click.IntRange(1, 36_500),
    default=90,
    show_default=True,
    help="Days before objects over 128 KiB move to GLACIER_IR.",
)
@click.option(
    "--no-block-public-acls",
    "block_public_acls",
    flag_value=False,
    default=True,
    help="Leave BlockPublicAcls off (the other three flags stay on): for Ceph RGW before "
    "the fix of its tracker issue 49135, which refuses every upload while it is on.",
)
@click.option(
    "--http-endpoint-url",
    metavar="URL",
    help="The same S3 server over plain HTTP, where setup-bucket checks that its TLS-only "
    "policy is enforced (known without it for AWS and https endpoints on port 443).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def setup_bucket(**params: Any) -> int:
    """Create the bucket if absent and lock it down (idempotent)."""
    from archiver.commands.setup_bucket import SetupOptions, format_setup, setup_bucket
    from archiver.storage import Storage

    settings = build_settings(params)
    options = SetupOptions(
        region=settings.region,
        check_only=params["check_only"],
        enable_versioning=params["enable_versioning"],
        skip_lifecycle=params["skip_lifecycle"],
        glacier_days=params["glacier_days"],
        block_public_acls=params["block_public_acls"],
        http_endpoint_url=_plain_http(params["http_endpoint_url"]),
    )

    async def job(_interrupt: Interrupt) -> Any:
        async with Storage.open(settings, max_connections=2) as store:
            return await setup_bucket(store, settings, options)

    return finish(run_job(job), params["as_json"], format_setup)


PRIVATE_KEY_OPTION = click.option(
    "--cdn-private-key",
    envvar="ARCHIVER_CDN_PRIVATE_KEY",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PEM",
    help="The CloudFront key pair's private key file (env ARCHIVER_CDN_PRIVATE_KEY); never "
    "printed.",
)


@cli.command("setup-cdn")
@config_options(database=False, cache=False)
@click.option(
    "--check-only",
    is_flag=True,
    help="Change nothing: exit 0 if everything is in place, 1 if something would change.",
)
@click.option(
    "--signed",
    is_flag=True,
    help="Require signed URLs: register the public half of --cdn-private-key (made there, "
    "mode 0600, when the file does not exist) in a key group the distribution trusts.",
)
@PRIVATE_KEY_OPTION
@click.option(
    "--cloudfront-endpoint-url",
    envvar=["AWS_ENDPOINT_URL_CLOUDFRONT", "AWS_ENDPOINT_URL"],
    metavar="URL",
    help="CloudFront API endpoint (env AWS_ENDPOINT_URL_CLOUDFRONT, then AWS_ENDPOINT_URL; "
    "default: AWS's).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def setup_cdn(**params: Any) -> int:
    """Serve the archive through CloudFront: distribution, origin access control, bucket
    policy statement, and (--signed) a key group (idempotent)."""
    from archiver.cloudfront import CloudFront
    from archiver.commands.setup_cdn import CdnOptions, format_cdn, setup_cdn
    from archiver.storage import Storage

    settings = build_settings(params)
    private_key = params["cdn_private_key"]
    if params["signed"] and private_key is None:
        raise ConfigError(
            "--signed needs --cdn-private-key or ARCHIVER_CDN_PRIVATE_KEY: the PEM file of the "
            "key pair (made there when it does not exist)"
        )
    options = CdnOptions(
        check_only=params["check_only"],
        signed=params["signed"],
        private_key=private_key.absolute() if private_key else None,
    )
    endpoint = validate_endpoint(params["cloudfront_endpoint_url"])

    async def job(_interrupt: Interrupt) -> Any:
        async with (
            Storage.open(settings, max_connections=2) as store,
            CloudFront.open(settings, endpoint) as cf,
        ):
            return await setup_cdn(store, cf, settings, options)

    return finish(run_job(job), params["as_json"], format_cdn)


@cli.command()
@config_options(cache=False)
@click.argument("media_ids", nargs=-1, required=True, metavar="MEDIA_ID...")
@click.option(
    "--cdn-domain",
    envvar="ARCHIVER_CDN_DOMAIN",
    metavar="HOST",
    help="CloudFront domain (or alias) of the archive (env ARCHIVER_CDN_DOMAIN; setup-cdn "
    "prints it). Without it: presigned S3 URLs.",
)
@click.option(
    "--cdn-key-id",
    envvar="ARCHIVER_CDN_KEY_ID",
    metavar="ID",
    help="CloudFront public key ID, to sign CDN URLs (env ARCHIVER_CDN_KEY_ID).",
)
@PRIVATE_KEY_OPTION
@click.option(
    "--expires",
    callback=_parsed(parse_duration),
    default="1h",
    show_default=True,
    metavar="DURATION",
    help="How long a signed or presigned URL works: seconds, or 90s, 15m, 12h, 7d.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def url(**params: Any) -> int:
    """Print the link the app can use for each archived row: the CDN URL, a signed CloudFront
    URL, or a presigned S3 URL."""
    from archiver.commands.url import UrlOptions, cdn_domain, format_urls, problem_line, run_url

    settings = build_settings(params)
    options = UrlOptions(
        media_ids=tuple(params["media_ids"]),
        expires_s=params["expires"],
        cdn_domain=cdn_domain(params["cdn_domain"]) if params["cdn_domain"] else None,
        key_id=params["cdn_key_id"] or None,
        private_key=params["cdn_private_key"],
    )
    report = run_async(lambda _interrupt: run_url(settings, options))
    if params["as_json"]:
        click.echo(json.dumps(report.as_json()))
    else:
        if report.urls:
            click.echo(format_urls(report))
        for problem in report.problems:
            click.echo(f"archiver: {problem_line(problem)}", err=True)
        if report.note:
            click.echo(f"archiver: note: {report.note}", err=True)
    return report.exit_code


@cli.command()
@config_options()
@click.option("--verify-s3", is_flag=True, help="Check every archived row's object in S3.")
@click.option("--check-local", is_flag=True, help="List rows whose local file is missing.")
@click.option(
    "--repair",
    is_flag=True,
    help="With --verify-s3: clear archive_url of rows whose object is missing or not intact, "
    "so that the next upload sends them again.",
)
@click.option("--dry-run", is_flag=True, help="With --repair: list what would be cleared.")
@click.option("--limit", type=click.IntRange(1), help="Check at most N rows.")
@concurrency_option("Checks")
@run_options
def verify(**params: Any) -> int:
    """Archive statistics; with --verify-s3 / --check-local, check objects and files."""
    from archiver.commands.verify import VerifyOptions, format_report, run_verify

    settings = build_settings(params)
    options = VerifyOptions(
        verify_s3=params["verify_s3"],
        check_local=params["check_local"],
        limit=params["limit"],
        concurrency=params["concurrency"],
        repair=params["repair"],
        dry_run=params["dry_run"],
    )
    with run_log(params, "verify"):
        progress = _progress("verify", params)
        ran = run_job(
            lambda interrupt: run_verify(settings, options, progress=progress, interrupt=interrupt)
        )
        return finish(ran, params["as_json"], format_report)


def _progress(desc: str, params: dict[str, Any]) -> Progress:
    return Progress(
        mode=progress_mode(params["no_progress"]),
        desc=desc,
        verbose=params["verbose"],
        out=sys.stderr if params["as_json"] else sys.stdout,
        interval=params["progress_interval"],
    )


@cli.command("prune-local")
@config_options()
@click.option(
    "--older-than",
    type=click.FloatRange(0),
    metavar="DAYS",
    help="Only rows whose created_at is older than DAYS.",
)
@click.option(
    "--media-type",
    "media_types",
    type=click.Choice(MEDIA_TYPES),
    multiple=True,
    help="Only rows of this media type (repeatable).",
)
@click.option("--limit", type=click.IntRange(1), help="Check at most N archived rows.")
@click.option("--dry-run", is_flag=True, help="Delete nothing; list what would go.")
@concurrency_option("Checks")
@run_options
def prune_local(**params: Any) -> int:
    """Delete local files whose archived object was checked present and intact."""
    from archiver.commands.prune_local import PruneOptions, format_prune, run_prune

    settings = build_settings(params)
    options = PruneOptions(
        older_than_days=params["older_than"],
        media_types=tuple(params["media_types"]),
        limit=params["limit"],
        dry_run=params["dry_run"],
        concurrency=params["concurrency"],
    )
    with run_log(params, "prune-local"):
        progress = _progress("prune-local", params)
        ran = run_job(lambda interrupt: run_prune(settings, options, progress, interrupt=interrupt))
        return finish(ran, params["as_json"], format_prune)


@cli.command()
@config_options()
@click.option(
    "--media-id",
    "media_ids",
    multiple=True,
    metavar="ID",
    help="Restore this row's file (repeatable).",
)
@click.option(
    "--all-missing", is_flag=True, help="Restore every archived row whose local file is missing."
)
@concurrency_option("Downloads")
@click.option("--dry-run", is_flag=True, help="Download nothing; list what would come back.")
@run_options
def restore(**params: Any) -> int:
    """Download archived objects back into the local cache, verified."""
    from archiver.commands.restore import RestoreOptions, format_restore, run_restore

    settings = build_settings(params)
    options = RestoreOptions(
        media_ids=tuple(params["media_ids"]),
        all_missing=params["all_missing"],
        concurrency=params["concurrency"],
        dry_run=params["dry_run"],
    )
    with run_log(params, "restore"):
        progress = _progress("restore", params)
        ran = run_job(
            lambda interrupt: run_restore(settings, options, progress, interrupt=interrupt)
        )
        return finish(ran, params["as_json"], format_restore)


@cli.command()
@config_options()
@click.option(
    "--sample",
    type=click.IntRange(1, 100_000),
    default=200,
    show_default=True,
    help="Rows whose local file is looked for.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.pass_context
def check(ctx: click.Context, /, **params: Any) -> int:
    """Check database, credentials, bucket, S3 permissions and cache before a long run
    (changes nothing)."""
    from archiver.commands.check import CheckOptions, format_check, run_check

    env_file = ctx.meta.get("archiver.env_loaded")
    settings = build_settings(params)
    options = CheckOptions(
        sample=params["sample"],
        env_file=env_file,
        # STS where the AWS SDK would look for it (botocore reads these for its STS client).
        sts_endpoint_url=os.environ.get("AWS_ENDPOINT_URL_STS")
        or os.environ.get("AWS_ENDPOINT_URL"),
    )
    ran = run_job(lambda _interrupt: run_check(settings, options))
    return finish(ran, params["as_json"], format_check)


@cli.command("iam-policy")
@config_options(database=False, cache=False)
@click.argument("commands", nargs=-1, type=click.Choice(iam.CHOICES), metavar="[COMMAND]...")
@click.option(
    "--write-only",
    is_flag=True,
    help="upload without s3:GetObject: objects already stored are sent again.",
)
@click.option(
    "--kms-key",
    metavar="ARN",
    help="The ARN of the bucket's SSE-KMS key: adds the KMS actions the commands need on it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the policy document alone.")
def iam_policy(**params: Any) -> int:
    """Print the least-privilege IAM policy for COMMANDs (default: upload, verify,
    prune-local, restore and url) on the configured bucket and key prefix."""
    settings = build_settings(params)
    commands = tuple(dict.fromkeys(params["commands"])) or iam.DAILY
    kms_key = params["kms_key"]
    if kms_key is not None and not kms_key.startswith("arn:"):
        raise click.BadParameter("give the key's ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)")
    args = (commands, settings.bucket, settings.key_prefix)
    options = {"write_only": params["write_only"], "kms_key": kms_key}
    if params["as_json"]:
        click.echo(json.dumps(iam.policy(*args, **options), indent=2))
    else:
        click.echo(iam.format_policy(*args, **options))
    return 0


@cli.command()
@config_options(s3=False, cache=False)
@click.option(
    "--kind",
    "kinds",
    type=click.Choice([o.value for o in Outcome if o.is_problem]),
    multiple=True,
    help="Only problems of this kind (repeatable).",
)
@click.option("--limit", type=click.IntRange(1), help="List at most N problems.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def problems(**params: Any) -> int:
    """List the rows upload could not archive (corrupt, invalid, failed), oldest id first."""
    from archiver.commands.problems import format_problems, run_problems

    settings = build_settings(params)
    ran = run_job(lambda _interrupt: run_problems(settings, params["kinds"], params["limit"]))
    return finish(ran, params["as_json"], format_problems)


@cli.group("db")
def db_group() -> None:
    """Database set-up for archiver."""


@db_group.command("init")
@config_options(s3=False, cache=False)
def db_init(**params: Any) -> int:
    """Create what makes upload fast and safe at scale (idempotent; upload works without)."""
    from archiver.services import database

    settings = build_settings(params)

    async def job(_interrupt: Interrupt) -> list[tuple[str, bool]]:
        async with database(settings) as db:
            await db.check_schema()
            return await db.init()

    for what, created in run_async(job):
        click.echo(f"{'created' if created else 'already there'}: {what}")
    return 0


@cli.command()
@click.option(
    "--files",
    type=click.IntRange(1, 100_000),
    default=300,
    show_default=True,
    help="Rows (and files) to make.",
)
@concurrency_option("Uploads")
@click.option(
    "--keep",
    is_flag=True,
    help="Keep the database, the S3 server and the cache running, and print the variables "
    "to use them with the real commands, until Ctrl-C.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar or progress lines.")
def demo(files: int, concurrency: int, keep: bool, no_progress: bool) -> int:
    """A tour on an embedded PostgreSQL and a loopback S3 server; nothing to configure."""
    try:
        from archiver.demo.tour import DemoOptions, run_demo
    except ImportError as exc:  # an installed archiver without the dev group
        raise ConfigError(
            f"the demo needs moto and pgserver ({exc.name} is not installed): run it from a "
            "checkout with `uv run archiver demo`"
        ) from exc

    # The demo talks to its own throwaway servers only: no profile, no real credentials.
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_CA_BUNDLE"):
        os.environ.pop(name, None)
    os.environ.update(
        AWS_ACCESS_KEY_ID="demo",
        AWS_SECRET_ACCESS_KEY="demo",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    summary = run_demo(
        DemoOptions(
            files=files, concurrency=concurrency, keep=keep, progress=progress_mode(no_progress)
        )
    )
    return 130 if summary.interrupted else 0


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD_BYTES = 1024 * 1024


def pin_mmap_threshold() -> None:
    """Make glibc give every buffer over 1 MiB straight back to the system when it is freed.

    Its default threshold rises after the first large free, after which freed 8 MiB part
    buffers stay in the heaps of the reader threads: measured on the 300 MB + 40 x 20 MB
    benchmark, peak RSS 240 MB by default, 166 MB with the threshold pinned, same speed.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


class OneLineFormatter(logging.Formatter):
    """Library warnings as one line (asyncpg logs its reconnect attempts with a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            message = f"{message}: {exc.__class__.__name__}: {exc}"
        return f"archiver: {record.levelname.lower()}: {message}"


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter())
    # The run's own events go to --log-file only; stderr has its progress lines already.
    handler.addFilter(lambda record: not record.name.startswith(RUN_LOG.name))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one readable line and exit 2 for usage errors, no tracebacks."""
    pin_mmap_threshold()
    configure_logging()
    try:
        code = cli.main(args=argv, prog_name="archiver", standalone_mode=False)
    except click.exceptions.Abort:
        code = 130
    except click.UsageError as exc:
        hint = f" (see 'archiver {exc.ctx.info_name} --help')" if exc.ctx else ""
        hint = hint.replace("archiver archiver", "archiver")
        click.echo(f"archiver: error: {exc.format_message()}{hint}", err=True)
        code = 2
    except click.ClickException as exc:
        click.echo(f"archiver: error: {exc.format_message()}", err=True)
        code = exc.exit_code
    except ArchiverError as exc:
        click.echo(f"archiver: error: {exc}", err=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code if isinstance(code, int) else 0)
