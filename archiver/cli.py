"""The command line: click commands with typed parameters. Settings are built once from
the shared options (`options`), each command runs its job (`commands/`) and ends through
`console.end`, which prints the report and decides the exit code."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from archiver import __version__, iam
from archiver.console import (
    Display,
    configure_logging,
    end,
    long_job,
    pin_mmap_threshold,
    progress_mode,
    run_log,
    watch_upload,
)
from archiver.errors import INTERRUPTED_EXIT_CODE, ArchiverError, ConfigError, Interrupted
from archiver.models import Outcome
from archiver.options import (
    PRIVATE_KEY_OPTION,
    Number,
    Whole,
    concurrency_option,
    config_options,
    env,
    json_option,
    kms_arn,
    media_type_option,
    parsed,
    plain_http,
    run_options,
    setup_bucket_options,
    upload_options,
    watch_flags,
)
from archiver.pipeline import Interrupt
from archiver.progress import format_summary
from archiver.settings import (
    DEFAULT_CHECK_SAMPLE,
    DEFAULT_URL_EXPIRES_S,
    MEDIA_TYPES,
    Settings,
    UploadOptions,
    first_set,
    parse_duration,
    validate_endpoint,
)
from archiver.signals import run_async, run_job
from archiver.sources import name_its_source, overrides, without_effect


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


@cli.command()
@config_options()
@upload_options
@run_options
def upload(
    settings: Settings,
    *,
    display: Display,
    concurrency: int,
    batch_size: int,
    limit: int | None,
    dry_run: bool,
    force: bool,
    media_types: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    storage_class: str | None,
    max_bandwidth: int | None,
    multipart_threshold: int,
    part_size: int,
    lease_s: float,
    media_ids: tuple[str, ...],
    retry_problems: bool,
    report: Path | None,
    watch: bool,
    interval: float,
) -> int:
    """Upload every unarchived row's file and record its archive_url."""
    from archiver.commands.upload import run_upload
    from archiver.progress import RowLog

    watch_flags(watch, dry_run=dry_run, force=force, media_ids=media_ids)
    options = UploadOptions(
        concurrency=concurrency,
        batch_size=batch_size,
        limit=limit,
        dry_run=dry_run,
        force=force,
        media_types=media_types,
        multipart_threshold=multipart_threshold,
        part_size=part_size,
        lease_s=lease_s,
        retry_problems=retry_problems,
        media_ids=media_ids,
        created_since=since,
        created_until=until,
        storage_class=(storage_class or "").upper() or None,
        max_bandwidth=max_bandwidth,
    )
    with contextlib.ExitStack() as stack:
        row_log = stack.enter_context(contextlib.closing(RowLog(report))) if report else None
        on_result = row_log.write if row_log else None
        stack.enter_context(run_log(display, "upload"))
        if watch:
            return watch_upload(settings, options, display, interval, on_result)
        reporter = display.reporter(dry_run=options.dry_run)
        summary = run_async(
            lambda interrupt: run_upload(
                settings, options, reporter, interrupt=interrupt, on_result=on_result
            )
        )
        text = functools.partial(format_summary, bucket=settings.bucket)
        return end(summary, as_json=display.as_json, text=text, quiet=display.quiet)


@cli.command("setup-bucket")
@config_options(database=False, cache=False)
@setup_bucket_options
@json_option()
def setup_bucket(
    settings: Settings,
    *,
    check_only: bool,
    enable_versioning: bool,
    skip_lifecycle: bool,
    glacier_days: int | None,
    block_public_acls: bool,
    http_endpoint_url: str | None,
    as_json: bool,
) -> int:
    """Create the bucket if absent and lock it down (idempotent)."""
    from archiver.commands.setup_bucket import SetupOptions, format_setup, setup_bucket
    from archiver.storage import Storage

    options = SetupOptions(
        region=settings.region,
        check_only=check_only,
        enable_versioning=enable_versioning,
        skip_lifecycle=skip_lifecycle,
        glacier_days=glacier_days,
        block_public_acls=block_public_acls,
        http_endpoint_url=plain_http(http_endpoint_url),
    )

    async def job(_interrupt: Interrupt) -> Any:
        async with Storage.open(settings, max_connections=2) as store:
            return await setup_bucket(store, settings, options)

    report, interrupted = run_job(job, doing="setting up the bucket (run it again to finish)")
    return end(report, as_json=as_json, text=format_setup, interrupted=interrupted)


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
    envvar=env("cloudfront_endpoint_url"),
    metavar="URL",
    help="CloudFront API endpoint (env AWS_ENDPOINT_URL_CLOUDFRONT, then AWS_ENDPOINT_URL; "
    "default: AWS's).",
)
@json_option()
def setup_cdn(
    settings: Settings,
    *,
    check_only: bool,
    signed: bool,
    cdn_private_key: Path | None,
    cloudfront_endpoint_url: str | None,
    as_json: bool,
) -> int:
    """Serve the archive through CloudFront: distribution, origin access control, bucket
    policy statement, and (--signed) a key group (idempotent)."""
    from archiver.cloudfront import CloudFront
    from archiver.commands.setup_cdn import CdnOptions, format_cdn, setup_cdn
    from archiver.storage import Storage

    if signed and cdn_private_key is None:
        raise ConfigError(
            "--signed needs --cdn-private-key or ARCHIVER_CDN_PRIVATE_KEY: the PEM file of the "
            "key pair (made there when it does not exist)"
        )
    options = CdnOptions(
        check_only=check_only,
        signed=signed,
        private_key=cdn_private_key.absolute() if cdn_private_key else None,
    )
    endpoint = validate_endpoint(cloudfront_endpoint_url)

    async def job(_interrupt: Interrupt) -> Any:
        async with (
            Storage.open(settings, max_connections=2) as store,
            CloudFront.open(settings, endpoint) as cf,
        ):
            return await setup_cdn(store, cf, settings, options)

    report, interrupted = run_job(job, doing="setting up the CDN (run it again to finish)")
    return end(report, as_json=as_json, text=format_cdn, interrupted=interrupted)


@cli.command()
@config_options(cache=False)
@click.argument("media_ids", nargs=-1, required=True, metavar="MEDIA_ID...")
@click.option(
    "--cdn-domain",
    envvar=env("cdn_domain"),
    metavar="HOST",
    help="CloudFront domain (or alias) of the archive (env ARCHIVER_CDN_DOMAIN; setup-cdn "
    "prints it). Without it: presigned S3 URLs.",
)
@click.option(
    "--cdn-key-id",
    envvar=env("cdn_key_id"),
    metavar="ID",
    help="CloudFront public key ID, to sign CDN URLs (env ARCHIVER_CDN_KEY_ID).",
)
@PRIVATE_KEY_OPTION
@click.option(
    "--expires",
    callback=parsed(parse_duration),
    default=f"{DEFAULT_URL_EXPIRES_S // 3600}h",
    show_default=True,
    metavar="DURATION",
    help="How long a signed or presigned URL works: seconds, or 90s, 15m, 12h, 7d.",
)
@json_option()
def url(
    settings: Settings,
    *,
    media_ids: tuple[str, ...],
    cdn_domain: str | None,
    cdn_key_id: str | None,
    cdn_private_key: Path | None,
    expires: int,
    as_json: bool,
) -> int:
    """Print the link the app can use for each archived row: the CDN URL, a signed CloudFront
    URL, or a presigned S3 URL."""
    from archiver.commands import url as job

    options = job.UrlOptions(
        media_ids=media_ids,
        expires_s=expires,
        cdn_domain=job.cdn_domain(cdn_domain) if cdn_domain else None,
        key_id=cdn_key_id or None,
        private_key=cdn_private_key,
    )
    report = run_async(lambda _i: job.run_url(settings, options), doing="making URLs")
    stderr_lines = [job.problem_line(problem) for problem in report.problems]
    if report.note:
        stderr_lines.append(f"note: {report.note}")
    return end(report, as_json=as_json, text=job.format_urls, stderr_lines=stderr_lines)


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
@click.option("--limit", type=Whole(1), help="Check at most N rows.")
@concurrency_option("Checks")
@run_options
def verify(
    settings: Settings,
    *,
    display: Display,
    verify_s3: bool,
    check_local: bool,
    repair: bool,
    dry_run: bool,
    limit: int | None,
    concurrency: int,
) -> int:
    """Archive statistics; with --verify-s3 / --check-local, check objects and files."""
    from archiver.commands.verify import VerifyOptions, format_report, run_verify

    if not (verify_s3 or check_local):
        without_effect("--limit", "--verify-s3 or --check-local")
    options = VerifyOptions(
        verify_s3=verify_s3,
        check_local=check_local,
        limit=limit,
        concurrency=concurrency,
        repair=repair,
        dry_run=dry_run,
    )
    return long_job(
        display,
        "verify",
        lambda progress, interrupt: run_verify(
            settings, options, progress=progress, interrupt=interrupt
        ),
        format_report,
    )


@cli.command("prune-local")
@config_options()
@click.option(
    "--older-than",
    type=Number(0),
    metavar="DAYS",
    help="Only rows whose created_at is older than DAYS.",
)
@media_type_option(MEDIA_TYPES)
@click.option(
    "--limit",
    type=Whole(1),
    help="Prove at most N local files (rows without one take none).",
)
@click.option("--dry-run", is_flag=True, help="Delete nothing; list what would go.")
@concurrency_option("Checks")
@run_options
def prune_local(
    settings: Settings,
    *,
    display: Display,
    older_than: float | None,
    media_types: tuple[str, ...],
    limit: int | None,
    dry_run: bool,
    concurrency: int,
) -> int:
    """Delete local files whose archived object was checked present and intact."""
    from archiver.commands.prune_local import PruneOptions, format_prune, run_prune

    options = PruneOptions(
        older_than_days=older_than,
        media_types=media_types,
        limit=limit,
        dry_run=dry_run,
        concurrency=concurrency,
    )
    return long_job(
        display,
        "prune-local",
        lambda progress, interrupt: run_prune(settings, options, progress, interrupt=interrupt),
        format_prune,
    )


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
def restore(
    settings: Settings,
    *,
    display: Display,
    media_ids: tuple[str, ...],
    all_missing: bool,
    concurrency: int,
    dry_run: bool,
) -> int:
    """Download archived objects back into the local cache, verified."""
    from archiver.commands.restore import RestoreOptions, format_restore, run_restore

    options = RestoreOptions(
        media_ids=media_ids, all_missing=all_missing, concurrency=concurrency, dry_run=dry_run
    )
    return long_job(
        display,
        "restore",
        lambda progress, interrupt: run_restore(settings, options, progress, interrupt=interrupt),
        format_restore,
    )


@cli.command()
@config_options()
@click.option(
    "--sample",
    type=Whole(1, 100_000),
    default=DEFAULT_CHECK_SAMPLE,
    show_default=True,
    help="Rows whose local file is looked for.",
)
@json_option()
def check(settings: Settings, *, sample: int, as_json: bool) -> int:
    """Check database, credentials, bucket, S3 permissions and cache before a long run
    (changes nothing)."""
    from archiver.commands.check import CheckOptions, format_check, run_check

    options = CheckOptions(
        sample=sample,
        env_file=settings.env_file or None,
        overrides=tuple(overrides(click.get_current_context())),
        # STS where the AWS SDK would look for it (botocore reads these for its STS client).
        sts_endpoint_url=first_set(os.environ, "sts_endpoint_url"),
    )
    report, interrupted = run_job(lambda _i: run_check(settings, options), doing="checking")
    return end(report, as_json=as_json, text=format_check, interrupted=interrupted)


@cli.command("iam-policy")
@config_options(database=False, s3=False, cache=False, bucket=True)
@click.argument("commands", nargs=-1, type=click.Choice(iam.CHOICES), metavar="[COMMAND]...")
@click.option(
    "--write-only",
    is_flag=True,
    help="upload without s3:GetObject: objects already stored are sent again.",
)
@click.option(
    "--kms-key",
    callback=kms_arn,
    metavar="ARN",
    help="The ARN of the bucket's SSE-KMS key: adds the KMS actions the commands need on it.",
)
@json_option("Print the policy document alone.")
def iam_policy(
    settings: Settings,
    *,
    commands: tuple[str, ...],
    write_only: bool,
    kms_key: str | None,
    as_json: bool,
) -> int:
    """Print the least-privilege IAM policy for COMMANDs (default: upload, verify,
    prune-local, restore and url) on the configured bucket and key prefix."""
    from archiver.commands.iam_policy import format_iam_policy, run_iam_policy

    report = run_iam_policy(settings, commands, write_only=write_only, kms_key=kms_key)
    return end(report, as_json=as_json, text=format_iam_policy, indent=2)


@cli.command()
@config_options(s3=False, cache=False)
@click.option(
    "--kind",
    "kinds",
    type=click.Choice([o.value for o in Outcome if o.is_problem]),
    multiple=True,
    help="Only problems of this kind (repeatable).",
)
@click.option("--limit", type=Whole(1), help="List at most N problems.")
@json_option()
def problems(
    settings: Settings, *, kinds: tuple[str, ...], limit: int | None, as_json: bool
) -> int:
    """List the rows upload could not archive (corrupt, invalid, failed), oldest id first."""
    from archiver.commands.problems import format_problems, run_problems

    report, interrupted = run_job(lambda _i: run_problems(settings, kinds, limit), doing="reading")
    return end(report, as_json=as_json, text=format_problems, interrupted=interrupted)


@cli.group("db")
def db_group() -> None:
    """Database set-up for archiver."""


@db_group.command("init")
@config_options(s3=False, cache=False)
def db_init(settings: Settings) -> int:
    """Create what makes upload fast and safe at scale (idempotent; upload works without)."""
    from archiver.commands.db import format_db_init, run_db_init

    report = run_async(lambda _i: run_db_init(settings), doing="setting up the database")
    return end(report, as_json=False, text=format_db_init)


@cli.command()
@click.option(
    "--files",
    type=Whole(1, 100_000),
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
    os.environ.update(AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo")
    os.environ.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    summary = run_demo(
        DemoOptions(
            files=files, concurrency=concurrency, keep=keep, progress=progress_mode(no_progress)
        )
    )
    return INTERRUPTED_EXIT_CODE if summary.interrupted else 0


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one readable line and exit 2 for usage errors, no tracebacks."""
    pin_mmap_threshold()
    configure_logging()
    try:
        code = cli.main(args=argv, prog_name="archiver", standalone_mode=False)
    except click.exceptions.Abort:
        code = INTERRUPTED_EXIT_CODE
    except click.UsageError as exc:
        name_its_source(exc)
        hint = f" (see 'archiver {exc.ctx.info_name} --help')" if exc.ctx else ""
        hint = hint.replace("archiver archiver", "archiver")
        click.echo(f"archiver: error: {exc.format_message()}{hint}", err=True)
        code = 2
    except click.ClickException as exc:
        click.echo(f"archiver: error: {exc.format_message()}", err=True)
        code = exc.exit_code
    except ArchiverError as exc:
        kind = "" if isinstance(exc, Interrupted) else "error: "  # a signal is no error
        click.echo(f"archiver: {kind}{exc}", err=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = INTERRUPTED_EXIT_CODE
    sys.exit(code if isinstance(code, int) else 0)
