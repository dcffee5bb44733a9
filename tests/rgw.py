"""A throwaway Ceph RADOS Gateway: a second real S3 server for the tests and benchmarks.

A one-node cluster on loopback, from Debian's packages (`radosgw`, `ceph-mon`, `ceph-osd`;
.ci/run installs them): one monitor, one OSD on memstore (nothing on disk but its small
state directories), pool size 1, `auth none`, and radosgw's beast frontend on http and
https (a self-signed certificate). Ceph's own vstart.sh is the model; the settings
below say what matters and why.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from archiver.demo.localpg import free_port, wait_port

ACCESS_KEY = "testing"  # the suite's AWS_ACCESS_KEY_ID, as on moto
SECRET_KEY = "testing"
START_TIMEOUT_S = 90
BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")
MEMSTORE_BYTES = 4 << 30  # a cap, not an allocation: memstore holds what is stored


def missing_binaries() -> list[str]:
    """The Ceph programs this machine lacks (empty when RGW can be started)."""
    return [name for name in BINARIES if shutil.which(name) is None]


def self_signed_certificate(folder: Path, *, own_ca: bool = False) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost signed by a throwaway CA: (cert file, key
    file). The cert file holds the server's certificate then the CA's (the chain a server
    serves), and doubles as the CA bundle clients trust. With `own_ca`, one certificate that
    is its own CA instead, as many self-hosted gateways have: rustls (obstore's TLS) refuses
    that, where OpenSSL and Go accept it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def builder(
        subject: x509.Name, issuer: x509.Name, public_key: object
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=2))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "archiver test CA")])
    ca = (
        builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ca_key if own_ca else ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    cert = (
        builder(name, name if own_ca else ca_name, key.public_key())
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=own_ca, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    chain = [cert] if own_ca else [cert, ca]
    cert_file.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@dataclass
class LocalRGW:
    """A running one-node Ceph cluster with a gateway; `stop()` kills it and its files."""

    folder: Path
    http_port: int
    https_port: int
    ca_file: Path
    _pid_files: list[Path] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def conf(self) -> Path:
        return self.folder / "ceph.conf"

    @classmethod
    def start(cls, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> LocalRGW:
        """Make and start the cluster, with one user of these keys; raises RuntimeError
        with the failing program's error output."""
        folder = Path(tempfile.mkdtemp(prefix="archiver-rgw-"))
        cert_file, key_file = self_signed_certificate(folder)
        rgw = cls(folder, free_port(), free_port(), cert_file)
        try:
            rgw._start(key_file, access_key, secret_key)
        except BaseException:
            rgw.stop()
            raise
        return rgw

    def _start(self, key_file: Path, access_key: str, secret_key: str) -> None:
        d = self.folder
        for sub in ("run", "log", "mon.a", "osd.0", "rgw"):
            (d / sub).mkdir()
        mon_port = free_port()
        frontends = (
            f"beast endpoint=127.0.0.1:{self.http_port} "
            f"ssl_endpoint=127.0.0.1:{self.https_port} "
            f"ssl_certificate={self.ca_file} ssl_private_key={key_file}"
        )
        fsid = str(uuid.uuid4())
        self.conf.write_text(f"""
[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{mon_port}]
public network = 127.0.0.1/32
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
run dir = {d}/run
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
log file = {d}/log/$name.log
keyring = {d}/keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
[mon.a]
mon data = {d}/mon.a
[osd.0]
osd data = {d}/osd.0
osd objectstore = memstore
memstore device bytes = {MEMSTORE_BYTES}
[client.rgw]
ms mon client mode = crc
rgw data = {d}/rgw
rgw frontends = {frontends}
rgw dns name = localhost
""")
        (d / "keyring").write_text("")
        c = ["-c", str(self.conf)]
        self._run(["monmaptool", "--create", "--fsid", fsid, "--addv", "a",
                   f"[v2:127.0.0.1:{mon_port}]", str(d / "monmap")])  # fmt: skip
        self._run(["ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", str(d / "monmap")])
        self._daemon(["ceph-mon", *c, "-i", "a"], "mon.a")
        osd_uuid = str(uuid.uuid4())
        self._run(["ceph", *c, "osd", "new", osd_uuid, "0"])
        self._run(["ceph-osd", *c, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid])
        self._daemon(["ceph-osd", *c, "-i", "0"], "osd.0")
        self._daemon(["radosgw", *c, "-n", "client.rgw"], "client.rgw")
        self._wait_for_port(self.http_port, "client.rgw")
        self._run(["radosgw-admin", *c, "user", "create", "--uid", "archiver",
                   "--display-name", "archiver tests", "--access-key", access_key,
                   "--secret", secret_key])  # fmt: skip

    def admin(self, *args: str) -> str:
        """Run `radosgw-admin` on this cluster; its output."""
        return self._run(["radosgw-admin", "-c", str(self.conf), *args])

    def add_user(self, uid: str) -> tuple[str, str]:
        """A new user of the gateway, owning nothing and granted nothing: (key id, secret)."""
        access, secret = f"{uid}-key", f"{uid}-secret"
        self.admin("user", "create", "--uid", uid, "--display-name", uid,
                   "--access-key", access, "--secret", secret)  # fmt: skip
        return access, secret

    def _run(self, argv: list[str]) -> str:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT_S)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:1])} failed: {out.stderr[-2000:]}")
        return out.stdout

    def _daemon(self, argv: list[str], name: str) -> None:
        """Start a daemon (it forks itself away) and remember its pid file."""
        self._pid_files.append(self.folder / "run" / f"{name}.pid")
        self._run(argv)

    def _wait_for_port(self, port: int, name: str) -> None:
        try:
            wait_port(port, START_TIMEOUT_S)
        except RuntimeError as exc:
            raise RuntimeError(f"{name}: {exc}: {self.log_tail(name)}") from exc

    def log_tail(self, name: str, chars: int = 2000) -> str:
        path = self.folder / "log" / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    def stop(self) -> None:
        """Kill every daemon at once (the cluster is throwaway) and remove its files."""
        pids = []
        for pid_file in self._pid_files:
            try:
                pids.append(int(pid_file.read_text().strip()))
            except (OSError, ValueError):
                continue
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _alive(pid)]
            time.sleep(0.05)
        shutil.rmtree(self.folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
