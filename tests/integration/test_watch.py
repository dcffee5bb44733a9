"""Following the backfill: `upload --watch` through the real command (rows inserted while it
runs, a row whose file arrives after it, SIGTERM between passes and in the middle of one, an
S3 outage, the transaction-mode pooler) and the Python API `archiver.archive`; the watch's
pure rules (backoff, which passes get a line, which failures are retried) without a server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

import archiver
from archiver.demo.localpg import free_port
from archiver.demo.sample import SampleRow, file_bytes, insert_rows
from archiver.models import Outcome
from tests.helpers import (
    all_objects,
    assert_archive_invariant,
    md5,
    media_file,
    run_cli,
    start_cli,
)
from tests.integration.test_scale_out import through_pgbouncer

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
INTERVAL_S = 2.0


# -- pure -----------------------------------------------------------------------------------


# -- the real command -----------------------------------------------------------------------


async def backfill(
    env: Any, db: Any, ids: Sequence[str], *, size: int = 2000, files: bool = True
) -> dict[str, bytes]:
    """Rows (and, with `files`, their files) as the app's backfill writes them; their bytes."""
    rng = random.Random(hash(tuple(ids)) & 0xFFFF)
    data, rows = {}, []
    for media_id in ids:
        body = file_bytes(".jpg", size, rng)
        data[media_id] = body
        if files:
            media_file(env.cache_root / "images", f"{md5(body)}.jpg", body)
        rows.append(
            SampleRow(media_id, "image", md5(body), "image/jpeg", None, datetime(2025, 12, 1))
        )
    await insert_rows(db, rows)
    return data


async def archived(db: Any, ids: Sequence[str]) -> set[str]:
    rows = await db.fetch(
        "SELECT media_id FROM post_media WHERE archive_url IS NOT NULL AND media_id = ANY($1)",
        list(ids),
    )
    return {r["media_id"] for r in rows}


async def wait_archived(
    db: Any, ids: Sequence[str], proc: subprocess.Popen[str], within: float = 60
) -> float:
    """Seconds until every row of `ids` has its archive_url (fails if the watch ends)."""
    started = time.monotonic()
    while await archived(db, ids) != set(ids):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - started < within, f"not archived in {within} s"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[str, str]:
    proc.send_signal(sig)
    return proc.communicate(timeout=90)


def pass_lines(stdout: str) -> list[str]:
    return re.findall(rf"^{STAMP} archiver: watch: (pass \d+: .*)$", stdout, re.M)


async def test_watch_archives_rows_as_they_appear_and_stops_on_sigterm(env, db, s3) -> None:
    first = await backfill(env, db, ["w-a1", "w-a2"])
    proc = start_cli(env, "upload", "--watch", "--interval", str(INTERVAL_S), "--no-progress")
    await wait_archived(db, list(first), proc)

    # The backfill writes a row before its file: the row waits, the others go.
    late = await backfill(env, db, ["w-late"], files=False)
    second = await backfill(env, db, ["w-b1", "w-b2", "w-b3"])
    took = await wait_archived(db, list(second), proc)
    # Within one interval, plus the time of the pass itself (connections, three PUTs).
    assert took < INTERVAL_S + 8, took
    assert await archived(db, ["w-late"]) == set()

    body = late["w-late"]
    media_file(env.cache_root / "images", f"{md5(body)}.jpg", body)
    await wait_archived(db, ["w-late"], proc)
    await asyncio.sleep(INTERVAL_S * 2)  # passes with nothing to do: no line for them

    stdout, stderr = stop(proc)
    assert proc.returncode == 130, stderr
    lines = pass_lines(stdout)
    uploaded = [int(re.search(r": (\d+) uploaded", line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert sum(uploaded) == 6, lines
    assert any("3 uploaded, 1 file not there yet" in line for line in lines), lines
    assert len(lines) <= 4, lines  # only passes that did something
    numbers = [int(re.match(r"pass (\d+)", line).group(1)) for line in lines]  # type: ignore[union-attr]
    final = stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"watch stopped after (\d+) passes: 6 uploaded, 6 recorded, .* MB", final
    ), final
    assert int(re.search(r"after (\d+) passes", final).group(1)) > max(numbers)  # type: ignore[union-attr]
    assert "archiver: watch: archiving new rows every 2 s" in stderr
    assert "Traceback" not in stderr
    assert await assert_archive_invariant(db, s3, env.bucket) == 6
    assert len(all_objects(s3, env.bucket)) == 6


async def test_sigterm_in_the_middle_of_a_pass_records_every_upload(env, db, s3) -> None:
    ids = [f"w-m{i:03d}" for i in range(120)]
    await backfill(env, db, ids, size=50_000)  # 6 MB, sent at 1 MB/s
    proc = start_cli(env, "upload", "--watch", "--json", "--max-bandwidth", "1MB", "--no-progress")
    started = time.monotonic()
    while not await archived(db, ids):
        assert proc.poll() is None and time.monotonic() - started < 60
        await asyncio.sleep(0.05)
    stdout, stderr = stop(proc)
    assert proc.returncode == 130, stderr
    done = await archived(db, ids)
    assert 0 < len(done) < len(ids)  # stopped in the middle of the pass
    recorded = {
        r["archive_url"].removeprefix(f"s3://{env.bucket}/")
        for r in await db.fetch("SELECT archive_url FROM post_media WHERE archive_url IS NOT NULL")
    }
    assert set(all_objects(s3, env.bucket)) == recorded  # every object stored is recorded
    await assert_archive_invariant(db, s3, env.bucket)
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert lines[-1]["watch"] is True and lines[-1]["interrupted"] is True
    assert lines[-1]["uploaded"] == len(done) == lines[-1]["db_updated"]
    assert lines[0]["pass"] == 1 and lines[0]["interrupted"] is True  # the pass line, as --json


async def test_watch_outlives_an_s3_outage(penv, db, s3, proxy) -> None:
    proxy.stop()
    ids = ["w-o1", "w-o2"]
    await backfill(penv, db, ids)
    proc = start_cli(penv, "upload", "--watch", "--interval", "1", "--no-progress")
    await asyncio.sleep(3)  # the first pass fails at once; the next comes 5 s later
    assert await archived(db, ids) == set()
    proxy.start()
    await wait_archived(db, ids, proc, within=60)
    stdout, stderr = stop(proc)
    assert proc.returncode == 130, stderr
    assert re.search(
        rf"^{STAMP} archiver: watch: pass 1 failed: S3 is not reachable.*; next pass in 5 s$",
        stderr,
        re.M,
    ), stderr
    assert sum(int(n) for n in re.findall(r": (\d+) uploaded", "\n".join(pass_lines(stdout)))) == 2
    await assert_archive_invariant(db, s3, penv.bucket)


class TcpRelay:
    """A TCP relay to the database that a test can take down (every connection cut, the
    port closed) and bring back on the same port: a database outage, for one process."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


async def test_watch_outlives_a_database_outage(env, db, s3) -> None:
    parts = urlsplit(env.database_url)
    relay = TcpRelay((parts.hostname or "127.0.0.1", parts.port or 5432))
    await relay.start()
    relayed = urlunsplit(
        (parts.scheme, f"{parts.username}@127.0.0.1:{relay.port}", parts.path, "", "")
    )
    before = await backfill(env, db, ["w-d1"])
    proc = start_cli(
        env, "upload", "--watch", "--interval", "1", "--no-progress", DATABASE_URL=relayed
    )
    await wait_archived(db, list(before), proc)

    await relay.stop()  # the database goes away for the watch (not for this test)
    during = await backfill(env, db, ["w-d2", "w-d3"])
    await asyncio.sleep(4)
    assert await archived(db, list(during)) == set()
    await relay.start()
    await wait_archived(db, list(during), proc, within=60)

    # In a thread: the relay runs on this test's event loop, which must go on serving the
    # watch's connections while it records its last pass and stops.
    stdout, stderr = await asyncio.to_thread(stop, proc)
    assert proc.returncode == 130, stderr
    failed = re.findall(
        rf"^{STAMP} archiver: watch: pass \d+ failed: (.*); next pass in (\d+) s$", stderr, re.M
    )
    assert failed, stderr
    assert all("database" in why for why, _wait in failed), failed
    assert [int(wait) for _why, wait in failed][:2] == [5, 10][: len(failed)]  # backoff
    assert sum(int(n) for n in re.findall(r": (\d+) uploaded", "\n".join(pass_lines(stdout)))) == 3
    await assert_archive_invariant(db, s3, env.bucket)
    await relay.stop()


async def test_watch_through_pgbouncer_in_transaction_mode(env, db, s3, pgbouncer) -> None:
    pooled = through_pgbouncer(env.database_url, pgbouncer)
    proc = start_cli(
        env, "upload", "--watch", "--interval", "1", "--no-progress", DATABASE_URL=pooled
    )
    await asyncio.sleep(1.5)  # an empty pass or two first
    ids = [f"w-p{i}" for i in range(20)]
    await backfill(env, db, ids)
    await wait_archived(db, ids, proc)
    stdout, stderr = stop(proc, signal.SIGINT)
    assert proc.returncode == 130, stderr
    assert "watch stopped after" in stdout
    assert await assert_archive_invariant(db, s3, env.bucket) == 20


@pytest.mark.parametrize("flag", ["--dry-run", "--force", "--media-id=x"])
def test_watch_refuses_what_makes_no_sense_in_a_loop(env, flag) -> None:
    out = run_cli(env, "upload", "--watch", flag)
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        == f"archiver: error: --watch cannot be combined with {flag.split('=')[0]}"
    )


@pytest.mark.parametrize("s3_server", ["rgw"], indirect=True)
async def test_watch_ends_with_exit_2_when_it_is_no_longer_let_in(s3_server, env, db, s3) -> None:
    """Issue 30, item 11: a refused database role or password, or S3 keys the server no
    longer takes, end the watch with one line and exit 2 (a supervisor restarts it with the
    new .env); an outage would back off instead. On RGW, which checks signatures."""
    await backfill(env, db, ["w-a1"])
    parts = urlsplit(env.database_url)
    no_role = urlunsplit(
        (parts.scheme, f"no_such_role@{parts.hostname}:{parts.port}", parts.path, "", "")
    )
    for extra in (
        {"DATABASE_URL": no_role},
        {"AWS_SECRET_ACCESS_KEY": "not-the-secret"},
    ):
        started = time.monotonic()
        out = run_cli(env, "upload", "--watch", "--interval", "1", "--no-progress", **extra)
        assert out.returncode == 2, out.stderr
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert lines[0].startswith("archiver: watch: archiving new rows"), out.stderr
        assert len(lines) == 2 and lines[1].startswith("archiver: error: "), out.stderr
        assert "Traceback" not in out.stderr and "not-the-secret" not in out.stderr
        assert time.monotonic() - started < 30  # no backoff: it ended at once
    assert await archived(db, ["w-a1"]) == set()


def test_watch_stops_at_once_on_a_configuration_error(env) -> None:
    out = run_cli(
        env,
        "upload",
        "--watch",
        environ={k: v for k, v in env.environ().items() if k != "DATABASE_URL"},
    )
    assert out.returncode == 2
    assert "no database configured" in out.stderr


# -- the Python API -------------------------------------------------------------------------


async def test_archive_from_python_returns_the_clis_summary(env, db, s3) -> None:
    await backfill(env, db, ["api-1", "api-2", "api-3"])
    settings = archiver.Settings.from_env(env.environ(), region="us-east-1")
    assert (settings.bucket, settings.endpoint_url) == (env.bucket, env.endpoint)

    summary = await archiver.archive(settings, media_ids=["api-1", "api-2"], cwd=env.workdir)
    assert summary.exit_code == 0
    assert summary.counts[Outcome.UPLOADED] == 2 and summary.db_updated == 2
    assert await archived(db, ["api-1", "api-2", "api-3"]) == {"api-1", "api-2"}

    cli = run_cli(env, "upload", "--json")
    assert cli.returncode == 0, cli.stderr
    from_cli = json.loads(cli.stdout)
    assert from_cli["uploaded"] == 1
    assert set(summary.as_json()) == set(from_cli)  # the same summary, key for key
    await assert_archive_invariant(db, s3, env.bucket)

    again = await archiver.archive(settings, media_ids=["api-1", "nope"], cwd=env.workdir)
    assert again.exit_code == 1  # a media id that names no row
    assert [p.kind for p in again.not_selected] == ["already_archived", "no_such_row"]
