"""The test rig: a real PostgreSQL and a real HTTP S3 server (moto in server mode).

- PostgreSQL: `ARCHIVER_TEST_DATABASE_URL` when set (its role needs CREATEDB), else a
  throwaway cluster started from the local binaries (as the `postgres` user when root).
  Each test gets a fresh database, cloned from a template holding `post_media`.
- S3: one moto server on a free loopback port for the session; tests marked `both_servers`
  also run against Ceph RGW (tests/rgw.py). Each test gets a fresh bucket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import boto3
import pytest

from archiver.demo.localpg import LocalPostgres
from archiver.demo.sample import POST_MEDIA_DDL
from archiver.demo.tour import s3_server as moto_s3_server
from archiver.settings import Settings
from tests.helpers import moto_over_tls

# Never let the suite reach a real AWS account.
for _var in (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "DATABASE_URL",
    "ARCHIVER_BUCKET",
    "ARCHIVER_KEY_PREFIX",
    "ARCHIVER_CACHE_ROOT",
):
    os.environ.pop(_var, None)
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ["AWS_CONFIG_FILE"] = os.devnull
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull

TEMPLATE_DB = "archiver_template"
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto: no line per request


def _with_db(dsn: str, dbname: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{dbname}", parts.query, ""))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[LocalPostgres | None]:
    """The throwaway cluster, or None when ARCHIVER_TEST_DATABASE_URL is used."""
    if os.environ.get("ARCHIVER_TEST_DATABASE_URL"):
        yield None
        return
    server = LocalPostgres.create().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_admin_dsn(pg_server: LocalPostgres | None) -> Iterator[str]:
    """A DSN of a role that may create databases; the template database is made here."""
    dsn = os.environ.get("ARCHIVER_TEST_DATABASE_URL") or (pg_server.dsn if pg_server else "")

    async def make_template() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
            await conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
        finally:
            await conn.close()
        conn = await asyncpg.connect(_with_db(dsn, TEMPLATE_DB))
        try:
            await conn.execute(POST_MEDIA_DDL)
        finally:
            await conn.close()

    asyncio.run(make_template())
    yield dsn


@pytest.fixture
def database_url(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh database with an empty post_media table."""
    name = f"t_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}"))
    try:
        yield _with_db(pg_admin_dsn, name)
    finally:
        asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test's database, for arranging and checking rows."""
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


@dataclass(frozen=True)
class S3Server:
    """A real S3 server of the rig: its name, plain-HTTP URL and (RGW) HTTPS URL and CA."""

    name: str  # "moto" or "rgw"
    url: str
    tls_url: str | None = None
    ca_file: str | None = None
    rgw: Any = None  # tests.rgw.LocalRGW: its users and their keys (radosgw-admin)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    """moto in server mode on a free loopback port (the demo's own)."""
    with moto_s3_server() as url:
        yield S3Server("moto", url)


@pytest.fixture(scope="session")
def rgw_server() -> Iterator[S3Server]:
    """Ceph's RADOS Gateway on a throwaway one-node cluster (tests/rgw.py). CI installs its
    packages and must run it: there, a missing package or a failed start fails every RGW
    test; elsewhere a machine without the packages skips them, visibly."""
    from tests.rgw import LocalRGW, missing_binaries

    missing = missing_binaries()
    if missing:
        message = (
            f"Ceph RGW cannot be started: {', '.join(missing)} missing "
            "(apt-get install --no-install-recommends radosgw ceph-mon ceph-osd)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        rgw = LocalRGW.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"Ceph RGW did not start: {exc}")
    try:
        yield S3Server("rgw", rgw.http_url, rgw.https_url, str(rgw.ca_file), rgw)
    finally:
        rgw.stop()


@pytest.fixture(scope="session")
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    """The S3 server a test runs against: moto, unless the test is parametrised with
    `both_servers` (tests/helpers.py), which runs it on moto and on RGW."""
    name = getattr(request, "param", "moto")
    server: S3Server = request.getfixturevalue(f"{name}_server")
    return server


@pytest.fixture(scope="session")
def s3_endpoint(s3_server: S3Server) -> str:
    """The plain-HTTP URL of the test's S3 server."""
    return s3_server.url


@pytest.fixture
def s3(s3_endpoint: str) -> boto3.client:
    """A plain boto3 client on the moto server, for arranging and checking objects."""
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3: boto3.client) -> str:
    """A fresh, empty bucket."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name)
    return name


@dataclass
class Env:
    """Everything a test needs to run archiver against the rig."""

    database_url: str
    endpoint: str
    bucket: str
    workdir: Path
    cache_root: Path

    def settings(self, **overrides: object) -> Settings:
        values: dict[str, object] = dict(
            database_url=self.database_url,
            bucket=self.bucket,
            cache_root=self.cache_root,
            endpoint_url=self.endpoint,
            region="us-east-1",
        )
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    def environ(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.database_url,
            ARCHIVER_BUCKET=self.bucket,
            ARCHIVER_CACHE_ROOT=str(self.cache_root),
            AWS_ENDPOINT_URL_S3=self.endpoint,
        )
        env.update(extra)
        return env


@pytest.fixture
def env(database_url: str, s3_endpoint: str, bucket: str, tmp_path: Path) -> Env:
    """A database, a bucket and an empty media cache under the test's working directory."""
    cache_root = tmp_path / "cache" / "media"
    for sub in ("images", "videos", "documents"):
        (cache_root / sub).mkdir(parents=True)
    return Env(database_url, s3_endpoint, bucket, tmp_path, cache_root)


@pytest.fixture
def offline_env(s3_endpoint: str, tmp_path: Path) -> Env:
    """An empty media cache, a database nothing listens on and a bucket that does not exist
    (on the session's S3 server, which answers at once): for the command line's refusals,
    which need no database and no bucket of their own."""
    cache_root = tmp_path / "cache" / "media"
    cache_root.mkdir(parents=True)
    database = "postgresql://u:pw@127.0.0.1:1/db"
    return Env(database, s3_endpoint, "no-such-bucket-offline", tmp_path, cache_root)


@pytest.fixture(scope="session")
def s3_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A second moto server, over HTTPS with a certificate of a throwaway CA: (URL, CA
    file). Needed where plain HTTP would change behaviour (the TLS-only bucket policy)."""
    with moto_over_tls(tmp_path_factory.mktemp("tls")) as where:
        yield where


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[object]:
    """A fault-injecting proxy in front of the moto server (see tests/proxy.py)."""
    from tests.proxy import S3Proxy

    p = S3Proxy(upstream=s3_endpoint).start()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def penv(env: Env, proxy: object) -> Env:
    """`env`, with archiver talking to S3 through `proxy`."""
    return Env(env.database_url, proxy.url, env.bucket, env.workdir, env.cache_root)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def pgbouncer(pg_server: LocalPostgres | None) -> Iterator[int]:
    """Debian's pgbouncer in pool_mode = transaction in front of the test cluster; its port.
    Installed by .ci/run; outside CI a machine without it skips these tests, visibly."""
    import shutil
    import subprocess
    import tempfile

    from archiver.demo.localpg import _run_as, free_port

    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if pg_server is None:
        pytest.skip("pgbouncer tests need the suite's own PostgreSQL cluster")
    if not os.path.exists(binary):
        if os.environ.get("CI"):
            pytest.fail("pgbouncer is not installed (.ci/run installs Debian's pgbouncer)")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    user = _run_as()
    folder = Path(tempfile.mkdtemp(prefix="archiver-pgbouncer-"))
    port = free_port()
    (folder / "users.txt").write_text('"postgres" ""\n')
    (folder / "pgbouncer.ini").write_text(f"""
[databases]
* = host=127.0.0.1 port={pg_server.port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/users.txt
pool_mode = transaction
max_client_conn = 500
default_pool_size = 10
logfile = {folder}/pgbouncer.log
pidfile = {folder}/pgbouncer.pid
""")
    if user is not None:
        for path in [folder, *folder.iterdir()]:
            os.chown(path, user.pw_uid, user.pw_gid)
    proc = subprocess.Popen(
        [binary, str(folder / "pgbouncer.ini")],
        user=user.pw_uid if user else None,
        group=user.pw_gid if user else None,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        import socket
        import time

        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "pgbouncer did not start"
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def hung_endpoint() -> Iterator[str]:
    """A server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()
