"""A throwaway PostgreSQL cluster from the local server binaries (tests and `demo`).

initdb and pg_ctl refuse to run as root, so when we are root the cluster is made and run
as the `postgres` system user (or `nobody`), in a temporary directory that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from archiver.errors import ConfigError

START_TIMEOUT_S = 30


def find_bindir() -> Path | None:
    """The directory holding initdb/pg_ctl/postgres, or None."""
    candidates: list[str] = []
    if shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                ["pg_config", "--bindir"], capture_output=True, text=True, check=True
            )
            candidates.append(out.stdout.strip())
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
        reverse=True,
    )
    candidates += versions
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    candidates += bundled_bindirs()
    for directory in candidates:
        if (Path(directory) / "initdb").is_file() and (Path(directory) / "pg_ctl").is_file():
            return Path(directory)
    return None


def bundled_bindirs() -> list[str]:
    """The server binaries bundled by the `pgserver` wheel, when it is installed."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [str(Path(p) / "pginstall" / "bin") for p in spec.submodule_search_locations]


def _world_traversable(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


def usable_by(bindir: Path, user: pwd.struct_passwd | None, scratch: Path) -> Path:
    """`bindir`, or a copy of its installation under `scratch` when another user must run
    it and cannot reach it (a virtualenv under /root, say). The copy keeps the wheel's
    layout: its binaries find their libraries at `$ORIGIN/../../../pgserver.libs`."""
    if user is None or _world_traversable(bindir):
        return bindir
    install = bindir.parent  # .../site-packages/pgserver/pginstall
    site = install.parent.parent
    target = scratch / "pg"
    copies = [(install, target / install.relative_to(site))]
    libs = site / f"{install.parent.name}.libs"
    if libs.is_dir():
        copies.append((libs, target / libs.name))
    for source, dest in copies:
        shutil.copytree(source, dest, symlinks=True, ignore=shutil.ignore_patterns("include"))
    for path in [target, *target.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
    return target / install.relative_to(site) / bindir.name


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    """Return once something listens on 127.0.0.1:`port`; RuntimeError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _run_as() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ConfigError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL")


@dataclass
class LocalPostgres:
    """Start with `start()`, connect with `dsn`, end with `stop()` (removes everything)."""

    bindir: Path
    port: int = field(default_factory=free_port)
    base: Path | None = None
    _user: pwd.struct_passwd | None = None

    @classmethod
    def create(cls) -> LocalPostgres:
        bindir = find_bindir()
        if bindir is None:
            raise ConfigError(
                "no PostgreSQL server binaries found: install Debian's 'postgresql' package "
                "or the 'pgserver' Python package"
            )
        return cls(bindir=bindir)

    @property
    def datadir(self) -> Path:
        assert self.base is not None
        return self.base / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _cmd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        user = self._user
        return subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            check=check,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            cwd=self.base,
            timeout=START_TIMEOUT_S * 2,
        )

    def start(self) -> LocalPostgres:
        """initdb (once) and start the server on 127.0.0.1:`port`."""
        if self.base is None:
            self._user = _run_as()
            self.base = Path(tempfile.mkdtemp(prefix="archiver-pg-"))
            if self._user is not None:
                os.chown(self.base, self._user.pw_uid, self._user.pw_gid)
            self.base.chmod(0o700)
            self.bindir = usable_by(self.bindir, self._user, self.base)
            try:
                self._cmd(
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.datadir),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--no-sync",
                    "--no-instructions",
                )
            except subprocess.CalledProcessError as exc:
                raise ConfigError(f"initdb failed: {exc.stderr.strip()[-500:]}") from exc
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        try:
            self._cmd(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.base / "server.log"),
                "-o",
                options,
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "start",
            )
        except subprocess.CalledProcessError as exc:
            log = (self.base / "server.log").read_text(errors="replace")[-800:]
            raise ConfigError(f"PostgreSQL did not start: {exc.stderr.strip()} {log}") from exc
        return self

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the server but keep its data (see `start` to bring it back)."""
        if self.base is not None:
            self._cmd(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-m",
                mode,
                "-w",
                "stop",
                check=False,
            )

    def stop(self) -> None:
        """Stop the server and remove the cluster."""
        if self.base is None:
            return
        self.stop_server("immediate")
        shutil.rmtree(self.base, ignore_errors=True)
        self.base = None

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
