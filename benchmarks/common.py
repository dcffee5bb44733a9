"""Shared pieces of the benchmark scripts: servers, datasets, measured runs, tables.

The S3 server (moto) runs in its own process, so neither its CPU nor its memory is
counted as archiver's; PostgreSQL is a throwaway cluster (archiver.demo.localpg).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import boto3

from archiver.demo.localpg import LocalPostgres, free_port, wait_port
from archiver.demo.sample import POST_MEDIA_DDL, SampleRow, insert_rows

OUT = Path(__file__).resolve().parent / "out"
REPO = Path(__file__).resolve().parent.parent
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def compile_bytecode() -> None:
    """Compile the bytecode of archiver and of everything installed beside it, as any first
    run writes it. Where PYTHONDONTWRITEBYTECODE is set (as on these machines) it is never
    written, and every measured command would compile botocore, aiohttp and the rest
    again: about 0.6 s of CPU per command, which no installed program pays."""
    import compileall
    import sysconfig

    for path in (sysconfig.get_paths()["purelib"], str(REPO / "archiver")):
        compileall.compile_dir(path, quiet=1, workers=0)


@contextmanager
def moto_process(tls: tuple[Path, Path] | None = None) -> Iterator[str]:
    """moto's S3 server in a process of its own; its URL. With `tls` (certificate and key
    files) it serves https only."""
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    if tls is not None:
        argv += ["-c", str(tls[0]), "-k", str(tls[1])]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **AWS_ENV},
    )
    try:
        wait_port(port)
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def postgres() -> Iterator[LocalPostgres]:
    pg = LocalPostgres.create().start()
    try:
        yield pg
    finally:
        pg.stop()


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )


def new_bucket(endpoint: str) -> str:
    name = f"bench-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


def count_objects(endpoint: str, bucket: str) -> int:
    total = 0
    for page in s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket):
        total += page.get("KeyCount", 0)
    return total


def empty_bucket(endpoint: str, bucket: str) -> None:
    """Delete every object of `bucket` (and the bucket)."""
    client = s3_client(endpoint)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    client.delete_bucket(Bucket=bucket)


async def _new_database(admin_dsn: str, rows: list[SampleRow]) -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(POST_MEDIA_DDL)
        await insert_rows(conn, rows)
        # Statistics, as a table in use has them (autovacuum keeps them): without, the
        # planner guesses a handful of rows and sorts every unarchived row for each page.
        await conn.execute("ANALYZE post_media")
    finally:
        await conn.close()
    return dsn


def new_database(admin_dsn: str, rows: list[SampleRow]) -> str:
    """A database holding post_media with `rows`; its DSN."""
    return asyncio.run(_new_database(admin_dsn, rows))


def query_value(dsn: str, sql: str, *args: Any) -> Any:
    """One value from PostgreSQL, on a connection of its own."""

    async def fetch() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(fetch())


def archived_rows(dsn: str) -> int:
    return int(query_value(dsn, "SELECT count(archive_url) FROM post_media"))


@dataclass
class Measured:
    """One command's run: wall time, CPU of the process and its children, peak RSS."""

    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        return json.loads(self.stdout)


def _vm_hwm_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def measure(cmd: list[str], *, env: dict[str, str], cwd: Path | None = None) -> Measured:
    """Run `cmd`, measuring that process alone.

    Peak RSS is the process's own VmHWM, polled every 20 ms (it only grows, and exec resets
    it): wait4's ru_maxrss would also count the memory of this benchmark process, which the
    kernel carries across the fork/exec that started the command."""
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out_chunks: list[str] = []
    err_chunks: list[str] = []
    peak_kib = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak_kib
        while not done.is_set():
            peak_kib = max(peak_kib, _vm_hwm_kib(proc.pid) or 0)
            done.wait(0.02)

    threads = [
        threading.Thread(target=lambda s=s, c=c: c.append(s.read()))
        for s, c in ((proc.stdout, out_chunks), (proc.stderr, err_chunks))
    ]
    threads.append(threading.Thread(target=poll))
    for t in threads:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    for t in threads:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(
        returncode=proc.returncode,
        wall_s=time.monotonic() - started,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=peak_kib / 1024,
        stdout="".join(out_chunks),
        stderr="".join(err_chunks),
    )


def archiver_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "archiver", *args]


def archiver_env(
    dsn: str, endpoint: str, bucket: str, cache_root: Path, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ARCHIVER_"))}
    env.update(
        AWS_ENV,
        DATABASE_URL=dsn,
        AWS_ENDPOINT_URL_S3=endpoint,
        ARCHIVER_BUCKET=bucket,
        ARCHIVER_CACHE_ROOT=str(cache_root),
        **extra,
    )
    return env


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def machine() -> str:
    """One line about the machine the figures come from."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}"
    )


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(name: str, data: Any) -> Path:
    OUT.mkdir(exist_ok=True)
    path = OUT / name
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def self_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
