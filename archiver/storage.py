"""S3 adapter: the object calls every job makes (PUT, HEAD, multipart, GET).

The S3 adapter is this module and its `storage_*` siblings: `storage_base` (the client, the
request wrapper, the HEAD), `storage_bucket` (bucket set-up, credentials, probes,
presigning), `storage_fast_put` (the PutObject fast path), `storage_data_plane` (single
PUTs through obstore) and `storage_answers` (what S3 answered, classified once). They are
the only modules that import aiobotocore, botocore or obstore, besides `cloudfront.py` for
CloudFront's API.

One client per run, its connection pool sized from the concurrency. botocore errors are
translated here: per-object failures become `StorageError` (the row fails, the run goes
on); failures that doom every request (no bucket, no credentials, access denied) become
`ConfigError` subclasses that stop the run.
"""

from __future__ import annotations

import base64
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ProfileNotFound,
)

from archiver.checksums import (
    checksummed,
    content_md5,
    etag_hiding_encryption,
    kms_default,
)
from archiver.errors import ConditionalWritesUnsupported, StorageError, StorageUnavailable
from archiver.localfs import LocalFile, PutBody
from archiver.models import Completed, Put, StoredPart
from archiver.settings import ClientOptions, Settings
from archiver.storage_answers import (
    CHECKSUM_MISMATCH_CODES,
    action_refused,
    denied,
    error_code,
    http_status,
    is_no_object,
    is_not_implemented,
    is_precondition_failed,
    is_redirect,
    translate,
)
from archiver.storage_base import (
    CONNECT_TIMEOUT_S,
    DOWNLOAD_CHUNK_BYTES,
    EXTRA_CONNECTIONS,
    PREFLIGHT_ATTEMPTS,
    PREFLIGHT_CALL_TIMEOUT_S,
    READ_TIMEOUT_S,
)
from archiver.storage_bucket import BucketCalls
from archiver.storage_data_plane import DataPlane, DataPlaneUnusable, usable_key
from archiver.storage_fast_put import Body, PutTemplate, botocore_body, no_continue_if_small

log = logging.getLogger(__name__)


def _unsigned_payload_when_checksummed(config: Any) -> Callable[..., None]:
    """A before-sign handler: a body sent with a checksum header (Content-MD5 or
    x-amz-checksum-*, both signed) is not hashed again with SHA-256 for the signature, over
    http either (botocore does so itself only for Content-MD5 over https). S3 checks the
    body against the signed checksum and refuses any other."""

    def handler(request: Any, **_: Any) -> None:
        headers = request.headers
        if "Content-MD5" in headers or any(
            k.lower().startswith("x-amz-checksum-") for k in headers
        ):
            request.context["client_config"] = config

    return handler


def client_config(options: ClientOptions, *, max_connections: int) -> AioConfig:
    """botocore's client configuration for archiver's options. Retries are given as
    `total_max_attempts` (the first try included, as AWS_MAX_ATTEMPTS counts them):
    botocore reads a `max_attempts` key in this dict as retries *after* the first try."""
    return AioConfig(
        max_pool_connections=max_connections + EXTRA_CONNECTIONS,
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"mode": options.retry_mode, "total_max_attempts": options.max_attempts},
        request_checksum_calculation=options.checksum_calculation,
        # What botocore signs requests with anyway; said here so that presigned URLs use
        # SigV4 too (botocore would presign with SigV2 in us-east-1, which AWS retired).
        signature_version="s3v4",
    )


class AwsSession:
    """One botocore session (aiobotocore's) for the configured profile and region: every AWS
    client of a run comes from one, and so does the credential chain the AWS CLI reads.
    (aioboto3's Session adds boto3's resource layer, which archiver does not use.)"""

    def __init__(self, profile: str | None, region: str | None) -> None:
        self._session = AioSession(profile=profile)
        if region:
            self._session.set_config_variable("region", region)
        # Reading the profile's settings now raises ProfileNotFound for a profile that is
        # not in the config files (as boto3's Session does when it is made).
        self._session.get_scoped_config()

    def client(self, service: str, **kwargs: Any) -> Any:
        """An async context manager giving the client (`session.client` in aioboto3)."""
        create: Any = self._session.create_client  # (typed per service by the stubs)
        return create(service, **kwargs)

    async def get_credentials(self) -> Any:
        return await self._session.get_credentials()


def aws_session(settings: Settings) -> AwsSession:
    """The session for the configured profile and region (every AWS client of a run comes
    from one)."""
    try:
        return AwsSession(settings.profile, settings.region)
    except ProfileNotFound as exc:
        raise StorageUnavailable(
            profile_not_found(settings.profile, settings.profile_from)
        ) from exc


def profile_not_found(profile: str | None, source: str | None) -> str:
    """Which profile is missing, where its name came from, where botocore looked, and the
    ways out."""
    named = f" (named by {source})" if source else ""
    return (
        f"AWS profile {profile!r}{named} is in neither ~/.aws/config nor ~/.aws/credentials "
        "(or the files AWS_CONFIG_FILE and AWS_SHARED_CREDENTIALS_FILE name): create it with "
        f"`aws configure --profile {profile}`, or name a profile that is there"
    )


class Storage(BucketCalls):
    """The S3 operations archiver uses, on one client."""

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings, *, max_connections: int) -> AsyncIterator[Storage]:
        """A Storage whose client pools `max_connections` connections (plus a few for
        HEADs and multipart control calls), closed on exit. Every command opens its client
        here, so every command gets the same retries, checksums and timeouts
        (`settings.client`)."""
        session = aws_session(settings)
        config = client_config(settings.client, max_connections=max_connections)
        quick = config.merge(
            AioConfig(
                retries={"mode": "standard", "total_max_attempts": PREFLIGHT_ATTEMPTS},
                connect_timeout=PREFLIGHT_CALL_TIMEOUT_S,
                read_timeout=PREFLIGHT_CALL_TIMEOUT_S,
            )
        )

        def preflight(endpoint_url: str | None, use_ssl: bool, service: str = "s3") -> Any:
            return session.client(service, endpoint_url=endpoint_url, config=quick, use_ssl=use_ssl)

        async with session.client(
            "s3", endpoint_url=settings.endpoint_url, config=config
        ) as client:
            unsigned = _unsigned_payload_when_checksummed(
                client.meta.config.merge(AioConfig(s3={"payload_signing_enabled": False}))
            )
            for operation in ("PutObject", "UploadPart"):
                client.meta.events.register(f"before-sign.s3.{operation}", unsigned)
            # botocore rebuilds the user agent for every request, to add the features a call
            # used; the one built with the request is kept (a fifth of a PUT's hook time).
            client.meta.events.unregister(
                "request-created.s3",
                client._user_agent_creator.rebuild_and_replace_user_agent_handler,
            )
            store = cls(client, settings.bucket, preflight, settings.endpoint_url)
            store._session = session
            store.client_options = settings.client
            store.max_connections = max_connections
            yield store

    async def _put_template(self) -> PutTemplate | None:
        """The run's PutObject template, built by the first PUT (None: botocore's own path),
        and built again once a PUT learned that the bucket is in another region."""
        template = self._template
        if self._template_tried and (template is None or not template.stale):
            return template
        async with self._template_lock:
            if not self._template_tried or (self._template and self._template.stale):
                self._template = await PutTemplate.build(self._s3, self.bucket)
                if self._template is None and not self._template_tried:
                    # The template decides it for its own PUTs.
                    self._s3.meta.events.register("before-sign.s3.PutObject", no_continue_if_small)
                self._template_tried = True
        return self._template

    async def put_object(
        self,
        key: str,
        body: PutBody,
        md5_hex: str,
        content_type: str,
        *,
        if_absent: bool,
        crc32: str | None = None,
    ) -> Put | None:
        """PUT one object with Content-MD5 (and, given `crc32`, base64: S3's CRC32 checksum
        and the MD5 in its metadata); what S3 answered, or None when `if_absent` and it
        exists."""
        params: dict[str, Any] = {
            "Key": key,
            "Body": body,
            "ContentMD5": content_md5(md5_hex),
            "ContentType": content_type,
        }
        if if_absent:
            params["IfNoneMatch"] = "*"
        if self.storage_class:
            params["StorageClass"] = self.storage_class
        if crc32 is not None:
            params.update(checksummed(crc32, md5_hex))
        try:
            response = await self._send_put(
                key, body, md5_hex, params, if_absent=if_absent, crc32=crc32
            )
        except ClientError as exc:
            if if_absent and is_precondition_failed(exc):
                return None
            if if_absent and is_not_implemented(exc):
                raise ConditionalWritesUnsupported(key) from exc
            self._refused_storage_class(exc)
            raise self._refusal(exc, "put_object", key, f"PUT {key}") from exc
        except BotoCoreError as exc:
            raise translate(exc, self.bucket, f"PUT {key}") from exc
        if response.get("VersionId") not in (None, "", "null"):
            self.versioned = True
        return Put(
            etag=str(response.get("ETag", "")).strip('"'),
            crc32=response.get("ChecksumCRC32"),
            encryption=etag_hiding_encryption(response),
        )

    async def _send_put(
        self,
        key: str,
        body: PutBody,
        md5_hex: str,
        params: dict[str, Any],
        *,
        if_absent: bool,
        crc32: str | None,
    ) -> dict[str, Any]:
        """One PUT by the cheapest path that carries it exactly: obstore for a body in
        memory without a CRC32, else the template, else botocore's own `put_object`."""
        template = await self._put_template()
        plane = await self._data_plane(template)
        if (
            plane is not None
            and crc32 is None
            and not isinstance(body, LocalFile)
            and usable_key(key)
        ):
            response, stored = await self._plane_put(plane, key, body, md5_hex, params, if_absent)
            if response is not None:
                return response
            if_absent = if_absent and not stored
        if template is not None:
            return await template.put(
                key,
                body,
                params["ContentMD5"],
                params["ContentType"],
                if_none_match=if_absent,
                storage_class=self.storage_class,
                checksum=(crc32, md5_hex) if crc32 is not None else None,
            )
        params = {**params, "Body": botocore_body(body)}
        if not if_absent:
            params.pop("IfNoneMatch", None)
        return dict(await self._s3.put_object(Bucket=self.bucket, **params))

    async def _plane_put(
        self,
        plane: DataPlane,
        key: str,
        body: bytes | memoryview,
        md5_hex: str,
        params: dict[str, Any],
        if_absent: bool,
    ) -> tuple[dict[str, Any] | None, bool]:
        """The PUT through obstore: (S3's answer, True), or (None, whether the object was
        stored) when botocore is to send it (the data plane is then off for the run; where
        the object was stored, botocore's PUT is unconditional)."""
        try:
            response = await plane.put(
                key,
                body,
                params["ContentType"],
                if_none_match=if_absent,
                storage_class=self.storage_class,
            )
        except ClientError as exc:
            if not is_redirect(exc):
                raise
            self._plane_off(f"S3 sent a PUT elsewhere ({error_code(exc)})")
            return None, False
        except DataPlaneUnusable as exc:
            log.info("obstore cannot reach S3 (%s): botocore sends the PUTs", exc)
            self._plane_off(str(exc))
            return None, False
        if str(response["ETag"]).strip('"') == md5_hex:
            return response, True
        # An ETag that is no MD5: the bucket may encrypt with SSE-KMS or SSE-C by default,
        # which only the answer's headers name, and obstore's answer has none. A HEAD's
        # answer has them; where HEADs are refused, botocore sends the body again and its
        # answer tells.
        revealed = await self._encryption_headers(key)
        if revealed is not None:
            return {**response, **revealed}, True
        self._plane_off("a PUT's ETag was not the MD5 of its bytes")
        return None, True

    async def _encryption_headers(self, key: str) -> dict[str, Any] | None:
        """The encryption a HEAD of `key` names (botocore's answer fields), or None when the
        HEAD is refused or fails."""
        try:
            head = await self._s3.head_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError):
            return None
        names = ("ServerSideEncryption", "SSECustomerAlgorithm", "SSEKMSKeyId")
        return {name: head[name] for name in names if head.get(name)}

    async def _data_plane(self, template: PutTemplate | None) -> DataPlane | None:
        """The run's obstore client, made once from the template (None: botocore carries
        every PUT)."""
        if self._plane_tried or template is None:
            return self._plane
        async with self._template_lock:
            if not self._plane_tried and self.client_options.put_client == "obstore":
                self._plane = await DataPlane.open(
                    url_prefix=template.url_prefix,
                    bucket=self.bucket,
                    region=template.signing_region,
                    credentials=self._s3._get_credentials(),
                    options=self.client_options,
                    ca_bundle=self._ca_bundle(),
                    max_connections=self.max_connections,
                    connect_timeout_s=CONNECT_TIMEOUT_S,
                    read_timeout_s=READ_TIMEOUT_S,
                )
            self._plane_tried = True
        return self._plane

    def _plane_off(self, why: str) -> None:
        if self._plane is not None:
            log.info("botocore carries the PUTs from now on: %s", why)
        self._plane = None

    def _ca_bundle(self) -> str | None:
        """The CA bundle botocore verifies TLS with (AWS_CA_BUNDLE, the profile's
        `ca_bundle`), None for the system's."""
        verify = getattr(self._s3._endpoint.http_session, "_verify", True)
        return verify if isinstance(verify, str) else None

    async def learn_encryption(self) -> None:
        """Set `encryption` when the bucket's default encryption makes ETags no MD5
        (SSE-KMS). Best effort: credentials without s3:GetEncryptionConfiguration leave it
        to the first PUT's answer."""
        try:
            async with self._quick() as client:
                response = await client.get_bucket_encryption(Bucket=self.bucket)
        except (ClientError, BotoCoreError, StorageUnavailable):
            return
        self.learn_default_encryption(response)

    def learn_default_encryption(self, response: Mapping[str, Any]) -> None:
        """Take an SSE-KMS default (a GetBucketEncryption answer) as the bucket's
        `encryption`, and its key as `kms_key`."""
        found = kms_default(response)
        if found is not None:
            self.encryption = self.encryption or found[0]
            self.kms_key = self.kms_key or found[1]

    async def learn_versioning(self) -> None:
        """Set `versioned` when the bucket has (or had) versioning on. Best effort: a
        credential without s3:GetBucketVersioning leaves it to the PUT responses."""
        try:
            async with self._quick() as client:
                response = await client.get_bucket_versioning(Bucket=self.bucket)
        except (ClientError, BotoCoreError, StorageUnavailable):
            return
        if response.get("Status") in ("Enabled", "Suspended"):
            self.versioned = True

    async def create_multipart(
        self, key: str, content_type: str, metadata: Mapping[str, str], *, crc32: bool = False
    ) -> str:
        """Start a multipart upload (with CRC32 part checksums when `crc32`); its UploadId."""
        extra = {"ChecksumAlgorithm": "CRC32"} if crc32 else {}
        if self.storage_class:
            extra["StorageClass"] = self.storage_class
        try:
            response = await self._s3.create_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                ContentType=content_type,
                Metadata=dict(metadata),
                **extra,
            )
        except ClientError as exc:
            self._refused_storage_class(exc)
            doing = f"starting multipart upload of {key}"
            raise self._refusal(exc, "create_multipart_upload", key, doing) from exc
        except BotoCoreError as exc:
            raise translate(exc, self.bucket, f"starting multipart upload of {key}") from exc
        return str(response["UploadId"])

    def _refused_storage_class(self, exc: ClientError) -> None:
        """A storage class the server does not offer dooms every upload: StorageUnavailable
        (AWS answers InvalidStorageClass; Ceph RGW, without the class in its placement,
        InvalidArgument)."""
        if self.storage_class and error_code(exc) in ("InvalidStorageClass", "InvalidArgument"):
            raise StorageUnavailable(
                f"S3 refused storage class {self.storage_class} ({error_code(exc)}): this server "
                "does not offer it; choose another --storage-class or leave it unset"
            ) from exc

    async def upload_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        body: bytes | memoryview,
        *,
        md5_hex: str | None = None,
        crc32: str | None = None,
    ) -> StoredPart:
        """Upload one part with Content-MD5 (`md5_hex`) or a CRC32 checksum (`crc32`,
        base64); its ETag, and the CRC32 S3 answered with."""
        extra: dict[str, Any] = {}
        if md5_hex is not None:
            extra["ContentMD5"] = content_md5(md5_hex)
        if crc32 is not None:
            extra.update(ChecksumAlgorithm="CRC32", ChecksumCRC32=crc32)
        response = await self._call(
            f"uploading part {number} of {key}",
            "upload_part",
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=Body(body),
            **extra,
        )
        etag = str(response.get("ETag", "")).strip('"')
        return StoredPart(number, etag, response.get("ChecksumCRC32"))

    async def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[StoredPart], *, if_absent: bool
    ) -> Completed | None:
        """Complete a multipart upload; what S3 answered, or None when `if_absent` and the
        key exists."""
        listed: list[dict[str, Any]] = []
        for p in parts:
            part: dict[str, Any] = {"PartNumber": p.number, "ETag": f'"{p.etag}"'}
            if p.crc32 is not None:
                part["ChecksumCRC32"] = p.crc32
            listed.append(part)
        params: dict[str, Any] = {
            "Key": key,
            "UploadId": upload_id,
            "MultipartUpload": {"Parts": listed},
        }
        if if_absent:
            params["IfNoneMatch"] = "*"
        try:
            response = await self._s3.complete_multipart_upload(Bucket=self.bucket, **params)
        except ClientError as exc:
            if if_absent and is_precondition_failed(exc):
                return None
            raise self._refusal(exc, "complete_multipart_upload", key, f"completing {key}") from exc
        except BotoCoreError as exc:
            raise translate(exc, self.bucket, f"completing {key}") from exc
        return Completed(str(response.get("ETag", "")).strip('"'), response.get("ChecksumCRC32"))

    async def checks_part_checksums(self, probe_key: str) -> bool:
        """Whether this server checks the CRC32 checksum of each part (AWS S3 does; moto
        and Ceph RGW 16 do not). Asked once per run, by sending one part of 8 bytes with a
        wrong checksum to a multipart upload at `probe_key` that is then aborted: a server
        that checks refuses it. Where it does, a part needs no MD5 of its own (the whole
        file's MD5 is all the hashing a byte costs); where it does not, or the probe cannot
        tell, parts carry Content-MD5 and their ETags are compared."""
        async with self._probe_lock:
            if self._part_checksums is None:
                self._part_checksums = await self._probe_part_checksums(probe_key)
        return self._part_checksums

    async def _probe_part_checksums(self, key: str) -> bool:
        try:
            response = await self._s3.create_multipart_upload(
                Bucket=self.bucket, Key=key, ChecksumAlgorithm="CRC32"
            )
        except (ClientError, BotoCoreError):
            return False  # the uploads themselves will say what is wrong
        upload_id = str(response["UploadId"])
        probe = b"archiver"
        wrong = base64.b64encode((zlib.crc32(probe) ^ 1).to_bytes(4, "big")).decode("ascii")
        try:
            await self._s3.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=1,
                Body=probe,
                ChecksumAlgorithm="CRC32",
                ChecksumCRC32=wrong,
            )
        except ClientError as exc:
            return http_status(exc) == 400 and error_code(exc) in CHECKSUM_MISMATCH_CODES
        except BotoCoreError:
            return False
        finally:
            await self.abort_multipart(key, upload_id)
        return False  # took a part whose checksum does not match: it does not check them

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload so that no parts are left behind (best effort). A
        refusal is remembered in `refused` (once, with a warning): the bucket's
        AbortIncompleteMultipartUpload lifecycle rule is then what removes the parts."""
        try:
            await self._s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if action_refused(exc) and "s3:AbortMultipartUpload" not in self.refused:
                self.refused.add("s3:AbortMultipartUpload")
                log.warning("%s", denied(self.bucket, "abort_multipart_upload", key))
        except BotoCoreError:
            pass

    async def download(
        self,
        key: str,
        sink: Callable[[bytes], Awaitable[None]],
        *,
        chunk_bytes: int = DOWNLOAD_CHUNK_BYTES,
    ) -> int:
        """Stream an object of the configured bucket into `sink`, a chunk at a time (memory
        stays bounded); the number of bytes. StorageError when it is missing or the transfer
        fails, AccessDenied when GetObject is refused."""
        try:
            response = await self._s3.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"]  # aiobotocore StreamingBody: read(amt) checks the length
            total = 0
            try:
                while chunk := await body.read(chunk_bytes):
                    total += len(chunk)
                    await sink(chunk)
            finally:
                body.close()
            return total
        except ClientError as exc:
            if is_no_object(exc):
                raise StorageError(f"no object at {key}") from exc
            raise self._refusal(exc, "get_object", key, f"GET {key}") from exc
        except (BotoCoreError, OSError, aiohttp.ClientError) as exc:  # cut off mid-body
            raise translate(exc, self.bucket, f"GET {key}") from exc
