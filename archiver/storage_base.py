"""The S3 adapter's foundation: one client, the request wrapper that names the IAM action a
403 refused, the quick client for start-up checks, and the HEAD every command uses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from archiver.checksums import etag_hiding_encryption
from archiver.errors import CredentialsRefused, StorageUnavailable
from archiver.models import ObjectInfo
from archiver.settings import ClientOptions
from archiver.storage_answers import (
    CREDENTIAL_CODES,
    FATAL_CODES,
    action_refused,
    bucket_denied,
    denied,
    error_code,
    http_status,
    is_denied,
    is_missing_bucket,
    is_no_object,
    missing_bucket,
    translate,
    unreachable,
)
from archiver.storage_data_plane import DataPlane
from archiver.storage_fast_put import PutTemplate

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
DOWNLOAD_CHUNK_BYTES = 1024 * 1024
# Start-up checks (is the bucket there, do the credentials work) answer within
# PREFLIGHT_TIMEOUT_S in all, whatever the endpoint does: a hung server is reported in
# seconds, not after every retry of a 60 s read timeout. The uploads keep the long ones.
PREFLIGHT_ATTEMPTS = 2
PREFLIGHT_CALL_TIMEOUT_S = 4.0
PREFLIGHT_TIMEOUT_S = 8.0
EXTRA_CONNECTIONS = 8  # HEADs and multipart control calls beside the uploads

ACCESS_PROBE_NAME = "archiver-access-check"  # the key a run's start-up GET asks for


class StorageBase:
    """One S3 client on one bucket, and how its answers become archiver's errors."""

    def __init__(
        self, client: Any, bucket: str, preflight: Any = None, endpoint_url: str | None = None
    ) -> None:
        self._s3 = client
        self.bucket = bucket
        # Makes a client for start-up checks: fails in seconds, not after every retry.
        self._preflight = preflight
        self.endpoint_url = endpoint_url
        # The bucket keeps versions (GetBucketVersioning said so, or a PUT returned a
        # version): If-None-Match cannot be trusted there (Ceph RGW 16 ignores it).
        self.versioned = False
        self.storage_class: str | None = None  # of new objects (None: the bucket's default)
        self._template: PutTemplate | None = None
        self._template_tried = False
        self._template_lock = asyncio.Lock()
        # Single PUTs of bodies in memory go through obstore (`storage_data_plane`), built
        # from the template once; None when it cannot carry them, or after S3 redirected one.
        self._plane: DataPlane | None = None
        self._plane_tried = False
        self.client_options = ClientOptions()
        self.max_connections = 1
        self._session: Any = None  # the session (`storage.AwsSession`) the client came from
        self._part_checksums: bool | None = None  # the server checks CRC32 part checksums
        self._probe_lock = asyncio.Lock()
        # IAM actions S3 refused where a run goes on without them (s3:AbortMultipartUpload)
        self.refused: set[str] = set()
        # The bucket's encryption makes ETags no MD5 (SSE-KMS): learned from its default
        # encryption, where the credentials may read it, or from a PUT's answer. Every PUT
        # then carries a CRC32 that S3 checks and echoes, and the MD5 in its metadata.
        self.encryption: str | None = None
        self.kms_key: str | None = None  # the default encryption's KMS key, when read

    @property
    def plain_http(self) -> bool:
        """Whether requests go over plain http (a test server, a gateway on the LAN)."""
        return (self.endpoint_url or "").lower().startswith("http://")

    async def _call(self, doing: str, method: str, **params: Any) -> Any:
        """One request: on a 403 an error naming the IAM action (AccessDenied for an
        object, StorageUnavailable for the bucket), translated errors otherwise."""
        try:
            return await getattr(self._s3, method)(Bucket=self.bucket, **params)
        except ClientError as exc:
            raise self._refusal(exc, method, params.get("Key"), doing) from exc
        except BotoCoreError as exc:
            raise translate(exc, self.bucket, doing) from exc

    def _refusal(self, exc: ClientError, method: str, key: str | None, doing: str) -> Exception:
        """`exc` as archiver's error; a 403 names the operation and the action it needs."""
        if action_refused(exc):
            if key is not None:
                return denied(self.bucket, method, key)
            return bucket_denied(self.bucket, method)
        return translate(exc, self.bucket, doing)

    @asynccontextmanager
    async def _quick(
        self, *, plain_http: bool = False, endpoint_url: str | None = None
    ) -> AsyncIterator[Any]:
        """A client for start-up checks (short timeouts, two attempts), and a deadline on
        the whole check: StorageUnavailable when the endpoint does not answer in time. With
        `plain_http`, the client talks to `endpoint_url` (or AWS's endpoint) without TLS."""
        if self._preflight is None:
            yield self._s3
            return
        if plain_http:
            client = self._preflight(endpoint_url, False)
        else:
            client = self._preflight(self.endpoint_url, True)
        try:
            async with asyncio.timeout(PREFLIGHT_TIMEOUT_S), client as quick:
                yield quick
        except TimeoutError as exc:
            raise StorageUnavailable(
                f"S3 did not answer within {PREFLIGHT_TIMEOUT_S:.0f} s "
                "(check AWS_ENDPOINT_URL_S3 / --endpoint-url and the network)"
            ) from exc

    async def check_access(self, prefix: str) -> None:
        """Prove endpoint, credentials and bucket before a run, quickly, with a request on
        the objects the run works on, not on the bucket (which would need bucket-level
        permissions the run does not): a one-byte GET of a key under `prefix` that is not
        expected to exist. An object, NoSuchKey, and AccessDenied (no s3:GetObject, or no
        s3:ListBucket to tell a missing key) all prove that the bucket answers to these
        credentials; NoSuchBucket proves it missing (BucketMissing); a refusal of the
        credentials themselves (InvalidAccessKeyId, SignatureDoesNotMatch, ExpiredToken,
        ...) or no answer is StorageUnavailable."""
        key = f"{prefix}/{ACCESS_PROBE_NAME}"
        async with self._quick() as client:
            try:
                response = await client.get_object(Bucket=self.bucket, Key=key, Range="bytes=0-0")
                await response["Body"].read()
                response["Body"].close()
            except ClientError as exc:
                code, status = error_code(exc), http_status(exc)
                if is_missing_bucket(exc):
                    raise missing_bucket(self.bucket) from exc
                if is_no_object(exc) or code == "InvalidRange" or status == 416:
                    return
                if code in CREDENTIAL_CODES:
                    raise CredentialsRefused(
                        f"S3 refused these credentials ({code}) at bucket {self.bucket!r}: check "
                        "AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                    ) from exc
                if is_denied(exc):
                    return
                message = str(exc.response.get("Error", {}).get("Message") or "").strip()
                raise StorageUnavailable(
                    f"bucket {self.bucket!r} is not usable: {code or status} {message}".rstrip()
                ) from exc
            except BotoCoreError as exc:
                raise unreachable(exc, self.bucket) from exc

    async def _head_bucket(self, client: Any, *, missing_ok: bool) -> bool:
        """Whether the bucket exists (False only with `missing_ok`); StorageUnavailable or
        BucketMissing otherwise."""
        try:
            await client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if is_missing_bucket(exc):
                if missing_ok:
                    return False
                raise missing_bucket(self.bucket) from exc
            if http_status(exc) == 403 or error_code(exc) in ("403", *FATAL_CODES):
                raise bucket_denied(self.bucket, "head_bucket") from exc
            raise StorageUnavailable(f"bucket {self.bucket!r} is not usable: {exc}") from exc
        except BotoCoreError as exc:
            raise unreachable(exc, self.bucket) from exc
        return True

    async def head_object(self, key: str) -> ObjectInfo | None:
        """The object's size, ETag and metadata, or None when it does not exist. Only keys of
        the configured bucket are ever asked for."""
        try:
            response = await self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if is_no_object(exc):
                return None
            raise self._refusal(exc, "head_object", key, f"HEAD {key}") from exc
        except BotoCoreError as exc:
            raise translate(exc, self.bucket, f"HEAD {key}") from exc
        return ObjectInfo(
            size=int(response.get("ContentLength", 0)),
            etag=str(response.get("ETag", "")).strip('"'),
            metadata=dict(response.get("Metadata") or {}),
            encryption=etag_hiding_encryption(response),
        )
