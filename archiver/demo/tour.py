"""`archiver demo`: the whole tool on one machine, with nothing to configure.

It starts an embedded PostgreSQL (the local server binaries, or those bundled by the
`pgserver` wheel) and a loopback S3 server (moto in server mode), makes a synthetic media
cache with the awkward cases the README describes (odd paths, missing files, a wrong
MD5), then runs the real jobs, setup-bucket, upload and verify --verify-s3, and stops and
removes everything it made.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from archiver.commands.setup_bucket import SetupOptions, format_setup, setup_bucket
from archiver.commands.upload import run_upload
from archiver.commands.verify import VerifyOptions, format_report, run_verify
from archiver.demo.localpg import LocalPostgres, free_port
from archiver.demo.sample import (
    DEMO_CASES,
    SampleSet,
    create_schema,
    insert_rows,
    make_sample_set,
)
from archiver.errors import ConfigError
from archiver.models import Summary
from archiver.pipeline import Interrupt
from archiver.progress import Reporter, format_summary, human_bytes
from archiver.settings import DEFAULT_CONCURRENCY, Settings, UploadOptions
from archiver.signals import run_async
from archiver.storage import Storage

DEMO_BUCKET = "social-tui"


@dataclass(frozen=True)
class DemoOptions:
    files: int = 300
    concurrency: int = DEFAULT_CONCURRENCY
    keep: bool = False
    progress: str = "bar"  # "bar", "log" or "off"


MOTO_MISSING = (
    "the demo needs moto's server, which an installed archiver does not have: run it from a "
    "checkout (uv run archiver demo) or install archiver's dev dependencies"
)


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """A moto S3 server on a free loopback port, for the duration of the block."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # installed without the development dependencies
        raise ConfigError(MOTO_MISSING) from exc
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def server_version(pg: LocalPostgres) -> str:
    out = subprocess.run(
        [str(pg.bindir / "postgres"), "--version"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or "PostgreSQL"


def _heading(out: TextIO, text: str) -> None:
    print(f"\n── {text} " + "─" * max(0, 76 - len(text)), file=out, flush=True)


async def _prepare_database(dsn: str, sample: SampleSet) -> None:
    import asyncpg  # the demo's own table set-up; archiver's jobs go through db.py

    conn = await asyncpg.connect(dsn)
    try:
        await create_schema(conn)
        await insert_rows(conn, sample.rows)
    finally:
        await conn.close()


async def _show_rows(dsn: str, out: TextIO) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT media_id, media_type, archive_url FROM post_media "
            "WHERE archive_url IS NOT NULL ORDER BY media_id LIMIT 5"
        )
    finally:
        await conn.close()
    for r in rows:
        print(f"  {r['media_id']}  {r['media_type']:<9} {r['archive_url']}", file=out)


async def _run(
    settings: Settings,
    sample: SampleSet,
    options: DemoOptions,
    interrupt: Interrupt,
    workdir: Path,
    out: TextIO,
) -> Summary:
    dsn = settings.require_database()
    await _prepare_database(dsn, sample)

    _heading(out, "1. archiver setup-bucket")
    async with Storage.open(settings, max_connections=2) as store:
        report = await setup_bucket(store, settings, SetupOptions(region=settings.region))
    print(format_setup(report), file=out)

    _heading(out, "2. archiver upload")
    reporter = Reporter(mode=options.progress, verbose=False, dry_run=False, out=out)
    summary = await run_upload(
        settings,
        UploadOptions(concurrency=options.concurrency),
        reporter,
        interrupt=interrupt,
        cwd=workdir,
    )
    print(format_summary(summary, bucket=settings.bucket), file=out)

    _heading(out, "3. archiver verify --verify-s3")
    verified = await run_verify(settings, VerifyOptions(verify_s3=True), cwd=workdir)
    print(format_report(verified), file=out)

    _heading(out, "What it did")
    await _show_rows(dsn, out)
    return summary


def run_demo(options: DemoOptions, out: TextIO | None = None) -> Summary:
    """The whole tour; returns the upload summary."""
    out = out or sys.stdout
    if importlib.util.find_spec("moto") is None:  # said before 120 MB of media are made
        raise ConfigError(MOTO_MISSING)
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="archiver-demo-"))
    workdir = base / "work"
    cache_root = workdir / "cache" / "media"
    pg = LocalPostgres.create()
    made = 0  # bytes of media written
    try:
        print("archiver demo: a tour on an embedded PostgreSQL and a loopback S3 server", file=out)
        sample = make_sample_set(workdir, cache_root, options.files)
        made = sample.total_bytes
        print(
            f"\nMade {len(sample.rows):,} rows and {human_bytes(sample.total_bytes)} of media in "
            f"{cache_root}:",
            file=out,
        )
        for case, count in sorted(sample.made.items(), key=lambda kv: kv[0] != "normal"):
            what = DEMO_CASES.get(case, "ordinary files, realistic sizes")
            print(f"  {count:>6,} × {case:<16} {what}", file=out)
        pg.start()
        print(f"\nStarted {server_version(pg)} on 127.0.0.1:{pg.port}", file=out)
        with s3_server() as endpoint:
            print(f"Started a moto S3 server on {endpoint}", file=out)
            settings = Settings(
                database_url=pg.dsn,
                bucket=DEMO_BUCKET,
                cache_root=cache_root,
                endpoint_url=endpoint,
                region="us-east-1",
            )
            summary = run_async(
                lambda interrupt: _run(settings, sample, options, interrupt, workdir, out)
            )
            _outcomes(summary, sample, time.monotonic() - started, out)
            if options.keep and not summary.interrupted:
                serve_until_interrupted(settings, workdir, out)
            else:
                print(NEXT_STEPS, file=out)
        return summary
    finally:
        pg.stop()
        if options.keep:
            print(
                f"Kept the demo's media cache ({human_bytes(made)}) in {cache_root}: "
                f"`rm -rf {base}` removes it.",
                file=out,
                flush=True,
            )
        else:
            shutil.rmtree(base, ignore_errors=True)


def _outcomes(summary: Summary, sample: SampleSet, whole_s: float, out: TextIO) -> None:
    expected = sample.expected_outcomes()
    got = {k: v for k, v in summary.as_json().items() if k in expected}
    verdict = "as expected" if got == expected else f"EXPECTED {expected}"
    print(f"\nOutcomes: {json_line(got)} ({verdict})", file=out)
    print(
        f"Throughput: {summary.files_per_s:,.1f} files/s, "
        f"{summary.bytes_uploaded / 1e6 / max(summary.elapsed_s, 1e-9):,.1f} MB/s "
        f"(upload {summary.elapsed_s:,.1f} s; whole demo {whole_s:,.1f} s)",
        file=out,
    )


def serve_until_interrupted(settings: Settings, workdir: Path, out: TextIO) -> None:
    """`demo --keep`: write a `.env` for the running servers into the demo's working
    directory, say how to use it, and wait for Ctrl-C (or SIGTERM)."""
    env = {
        "DATABASE_URL": settings.database_url or "",
        "ARCHIVER_BUCKET": settings.bucket,
        "ARCHIVER_CACHE_ROOT": "cache/media",
        "AWS_ENDPOINT_URL_S3": settings.endpoint_url or "",
        "AWS_ACCESS_KEY_ID": "demo",
        "AWS_SECRET_ACCESS_KEY": "demo",
        "AWS_REGION": settings.region,
    }
    env_file = workdir / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()), encoding="utf-8")
    shown = ", ".join(k if k == "DATABASE_URL" else f"{k}={v}" for k, v in env.items())
    print(
        f"\nThe demo's servers keep running. {env_file} holds what the real commands need "
        f"({shown}); from that directory they read it themselves:\n"
        f"  cd {workdir}\n"
        "  archiver check\n"
        "  archiver verify --verify-s3\n"
        "  archiver prune-local --dry-run\n"
        "Press Ctrl-C to stop the servers.",
        file=out,
        flush=True,
    )
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nStopping the demo's servers.", file=out, flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def json_line(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


NEXT_STEPS = """
The same against your own database and bucket:
  cp .env.example .env        # set DATABASE_URL, AWS_PROFILE, ARCHIVER_BUCKET
  uv run archiver setup-bucket
  uv run archiver upload --dry-run --limit 10
  uv run archiver upload
  uv run archiver verify --verify-s3"""
