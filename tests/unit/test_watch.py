"""Following the backfill: `upload --watch` through the real command (rows inserted while it
runs, a row whose file arrives after it, SIGTERM between passes and in the middle of one, an
S3 outage, the transaction-mode pooler) and the Python API `archiver.archive`; the watch's
pure rules (backoff, which passes get a line, which failures are retried) without a server."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from archiver.commands.watch import BACKOFF_MAX_S, backoff_s, did_work, retryable
from archiver.demo.localpg import free_port
from archiver.demo.sample import SampleRow, file_bytes, insert_rows
from archiver.errors import (
    BucketMissing,
    ConfigError,
    CredentialsRefused,
    DatabaseAuthFailed,
    DatabaseError,
    DatabaseUnavailable,
    StorageUnavailable,
)
from archiver.models import Outcome, Summary
from tests.helpers import (
    md5,
    media_file,
)

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
INTERVAL_S = 2.0


# -- pure -----------------------------------------------------------------------------------


def test_backoff_doubles_from_five_seconds_up_to_a_cap() -> None:
    assert backoff_s(60, 0) == 60
    assert [backoff_s(60, n) for n in (1, 2, 3, 4, 5)] == [5, 10, 20, 40, 80]
    assert backoff_s(60, 20) == BACKOFF_MAX_S
    assert backoff_s(900, 20) == 900  # never more often than the interval


def summary_of(**counts: int) -> Summary:
    s = Summary()
    for name, n in counts.items():
        s.counts[Outcome(name)] = n
    return s


def test_a_pass_gets_a_line_when_it_did_something() -> None:
    assert not did_work(summary_of(), 0)
    assert not did_work(summary_of(known_problem=3), 0)  # set aside untried
    assert did_work(summary_of(uploaded=1), 0)
    assert did_work(summary_of(failed=1), 0)
    assert did_work(summary_of(missing_local=2), 0)  # files the backfill has not written yet
    assert not did_work(summary_of(missing_local=2), 2)  # ... said once, not every pass
    assert did_work(summary_of(missing_local=1), 2)
    recorded = summary_of()
    recorded.db_updated = 4  # uploads an earlier pass could not record
    assert did_work(recorded, 0)


def test_outages_are_retried_configuration_errors_are_not() -> None:
    assert retryable(DatabaseUnavailable("connection refused"))
    assert retryable(StorageUnavailable("S3 is not reachable"))
    assert retryable(DatabaseError("connection lost"))
    assert not retryable(ConfigError("no database configured"))
    assert not retryable(BucketMissing("bucket 'x' does not exist"))
    # A changed password or revoked keys: the supervisor restarts with the new ones.
    assert not retryable(DatabaseAuthFailed("password authentication failed"))
    assert not retryable(CredentialsRefused("S3 refused these credentials"))


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


# -- the Python API -------------------------------------------------------------------------
