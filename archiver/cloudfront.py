"""CloudFront adapter: the distribution, origin access control, public key and key group that
`setup-cdn` manages, and CloudFront signed URLs.

CloudFront is its own AWS service, so it has its own module: botocore's errors are translated
here, as `storage.py` does for S3. A refused call becomes `SettingRefused` naming the `cloudfront:`
action the credentials lack (so one setting is reported and the others still run); missing
credentials or an endpoint that does not answer stop the command (`StorageUnavailable`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError
from botocore.signers import CloudFrontSigner
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from archiver.errors import ConfigError, StorageUnavailable
from archiver.localfs import why
from archiver.settings import Settings
from archiver.storage import aws_session
from archiver.storage_answers import error_code, setting_refusal, unreachable
from archiver.storage_base import CONNECT_TIMEOUT_S, READ_TIMEOUT_S

CLOUDFRONT_REGION = "us-east-1"  # CloudFront is global; its API lives in us-east-1
RSA_KEY_BITS = 2048  # what CloudFront takes for RSA public keys
# Refusals of the credentials themselves by the CloudFront API.
_CREDENTIAL_CODES = frozenset(
    {"InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken", "UnrecognizedClientException"}
)


class CloudFront:
    """The CloudFront API calls setup-cdn makes, on one client."""

    def __init__(self, client: Any) -> None:
        self._cf = client

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings, endpoint_url: str | None) -> AsyncIterator[CloudFront]:
        """A client on CloudFront's API (at `endpoint_url`, or AWS's), closed on exit."""
        config = AioConfig(
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            retries={
                "mode": settings.client.retry_mode,
                "total_max_attempts": settings.client.max_attempts,
            },
        )
        async with aws_session(settings).client(
            "cloudfront", endpoint_url=endpoint_url, region_name=CLOUDFRONT_REGION, config=config
        ) as client:
            yield cls(client)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One API call (e.g. `create_key_group`); its response.
        `SettingRefused` / `SettingUnsupported`
        when the server refuses it, StorageUnavailable when it cannot be used at all."""
        try:
            response: dict[str, Any] = await getattr(self._cf, method)(**params)
        except ClientError as exc:
            raise _error(exc) from exc
        except BotoCoreError as exc:
            raise unreachable(exc, "", "CloudFront") from exc
        return response

    async def list_all(self, method: str, list_key: str) -> list[dict[str, Any]]:
        """Every item of a paged list call (`list_key` e.g. `DistributionList`)."""
        items: list[dict[str, Any]] = []
        marker: str | None = None
        while True:
            response = await self.call(method, **({"Marker": marker} if marker else {}))
            page = response.get(list_key) or {}
            items += page.get("Items") or []
            marker = page.get("NextMarker")
            if not (page.get("IsTruncated") and marker):
                return items


def _error(exc: ClientError) -> Exception:
    action = f"cloudfront:{exc.operation_name}"
    code = error_code(exc)
    if code in _CREDENTIAL_CODES:
        return StorageUnavailable(f"CloudFront refused {action}: {code} (check the credentials)")
    return setting_refusal(exc, action, action, name_action=True)


# -- keys and signed URLs -------------------------------------------------------------------


def _read_private(path: Path) -> bytes:
    """The bytes of a private key file that only the running user can have written or read,
    as ssh demands of its keys: owned by this user, no permission for group or others
    (checked on the open file, so it cannot be swapped between the check and the read).
    Anyone else who could write it could plant a key archiver would register and sign with;
    anyone who could read it could sign URLs."""
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise ConfigError(
                f"CloudFront private key {path} is owned by uid {st.st_uid}, not by the user "
                f"archiver runs as (uid {os.geteuid()}): it could have been put there by "
                "someone else"
            )
        if st.st_mode & 0o077:
            raise ConfigError(
                f"CloudFront private key {path} is open to others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}): `chmod 600 {path}` (only its owner may "
                "read or write it)"
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def _load_private_key(path: Path) -> rsa.RSAPrivateKey:
    """The RSA private key in PEM file `path`; ConfigError (naming the path, never the
    content) when it cannot be read as one."""
    try:
        key = serialization.load_pem_private_key(_read_private(path), password=None)
    except FileNotFoundError as exc:
        raise ConfigError(f"CloudFront private key {path} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"CloudFront private key {path} cannot be read: {exc.strerror}") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            f"CloudFront private key {path} is not an unencrypted PEM private key"
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"CloudFront private key {path} is not an RSA key")
    return key


def ensure_private_key(path: Path, *, create: bool) -> tuple[rsa.RSAPrivateKey, bool]:
    """The RSA key at `path`, made there (mode 0600, never over an existing file) when it does
    not exist and `create`; and whether it was made."""
    if create and not path.exists():
        if not path.parent.is_dir():
            raise ConfigError(
                f"cannot create the CloudFront private key {path}: its directory "
                f"{path.parent} does not exist (create it, e.g. `mkdir -p {path.parent}`, or "
                "choose another path)"
            )
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot create CloudFront private key {path}: {why(exc)}") from exc
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        return key, True
    return _load_private_key(path), False


def public_key_pem(key: rsa.RSAPrivateKey) -> str:
    """The PEM (SubjectPublicKeyInfo) of `key`'s public half, as CloudFront takes it."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def key_fingerprint(pem: str) -> str:
    """A short stable name for a public key: the SHA-256 of its PEM lines, in hex."""
    return hashlib.sha256("".join(pem.split()).encode("ascii")).hexdigest()[:32]


class UrlSigner:
    """CloudFront signed URLs (canned policy) for one key pair: the public key's ID in
    CloudFront and the private key file."""

    def __init__(self, key_id: str, private_key_path: Path) -> None:
        self._key = _load_private_key(private_key_path)
        self._signer = CloudFrontSigner(key_id, self._rsa_sign)

    def _rsa_sign(self, message: bytes) -> bytes:
        # CloudFront verifies SHA-1 RSA signatures (PKCS#1 v1.5) for RSA key pairs.
        return self._key.sign(message, padding.PKCS1v15(), hashes.SHA1())

    def sign(self, url: str, expires_at: dt.datetime) -> str:
        """`url` with Expires, Signature and Key-Pair-Id: valid until `expires_at`."""
        return str(self._signer.generate_presigned_url(url, date_less_than=expires_at))
