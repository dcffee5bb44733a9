"""The bucket-level calls of the S3 adapter: bucket set-up (region, creation, settings),
credentials and the caller's identity, the write and permission probes, presigning. Only
setup-bucket, setup-cdn, check and url make them; `Storage` has them by inheritance."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import uuid
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from archiver.checksums import (
    checksummed,
    content_md5,
    crc32_b64,
    encrypted_without_checksums,
    etag_hiding_encryption,
)
from archiver.errors import StorageError, StorageUnavailable
from archiver.integrity import judge
from archiver.storage_answers import (
    action_refused,
    error_code,
    http_status,
    is_no_object,
    operation_name,
    setting_error,
    translate,
    unreachable,
)
from archiver.storage_base import ACCESS_PROBE_NAME, PREFLIGHT_TIMEOUT_S, StorageBase


class BucketCalls(StorageBase):
    """Calls on the bucket itself and on the credentials, beside the object calls."""

    # -- bucket set-up ----------------------------------------------------------------------

    async def bucket_region(self) -> str | None:
        """The bucket's region when it exists and is ours to use, None when it does not exist;
        StorageUnavailable when it exists but is not accessible (someone else's, or denied),
        or the endpoint does not answer in seconds. (Ceph RGW names its zonegroup, often
        "default".)"""
        async with self._quick() as client:
            if not await self._head_bucket(client, missing_ok=True):
                return None
        response = await self._call("reading the bucket location", "get_bucket_location")
        return str(response.get("LocationConstraint") or "us-east-1")

    async def create_bucket(self, region: str) -> bool:
        """Create the bucket in `region`; False when it already existed and is ours."""
        params: dict[str, Any] = {}
        if region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            await self._s3.create_bucket(Bucket=self.bucket, **params)
        except ClientError as exc:
            code = error_code(exc)
            if code == "BucketAlreadyOwnedByYou":
                return False
            raise translate(exc, self.bucket, "creating the bucket") from exc
        except BotoCoreError as exc:
            raise unreachable(exc, self.bucket) from exc
        return True

    async def get_setting(self, method: str, missing_codes: tuple[str, ...]) -> Any:
        """A bucket-level GET (e.g. `get_bucket_lifecycle_configuration`); None when the
        setting is absent (one of `missing_codes`). Raises `SettingUnsupported` when the server does
        not implement it and `SettingRefused` when it answers with another error."""
        try:
            return await getattr(self._s3, method)(Bucket=self.bucket)
        except ClientError as exc:
            if error_code(exc) in missing_codes:
                return None
            raise setting_error(exc, method) from exc
        except BotoCoreError as exc:
            raise translate(exc, self.bucket, method) from exc

    async def put_setting(self, method: str, **params: Any) -> None:
        """A bucket-level PUT (e.g. `put_bucket_versioning`); `SettingUnsupported` /
        `SettingRefused` as
        for `get_setting`."""
        try:
            await getattr(self._s3, method)(Bucket=self.bucket, **params)
        except ClientError as exc:
            raise setting_error(exc, method) from exc
        except BotoCoreError as exc:
            raise translate(exc, self.bucket, method) from exc

    async def credentials(self) -> tuple[str, str] | None:
        """(the access key id, where botocore found it: `env`, `shared-credentials-file`,
        `assume-role`, ...), or None when there are none. The secret is never read out."""
        if self._session is None:
            return None
        try:
            found = await self._session.get_credentials()
            if found is None:
                return None
            frozen = await found.get_frozen_credentials()
        except (BotoCoreError, ClientError) as exc:
            raise translate(exc, self.bucket, "reading the credentials") from exc
        return str(frozen.access_key), str(getattr(found, "method", "") or "explicit")

    async def caller_identity(self, endpoint_url: str | None) -> str:
        """The ARN STS names these credentials by (at `endpoint_url`, or AWS's)."""
        assert self._preflight is not None
        try:
            async with (
                asyncio.timeout(PREFLIGHT_TIMEOUT_S),
                self._preflight(endpoint_url, True, "sts") as sts,
            ):
                response = await sts.get_caller_identity()
        except TimeoutError as exc:
            raise StorageUnavailable(
                f"STS did not answer within {PREFLIGHT_TIMEOUT_S:.0f} s"
            ) from exc
        except (BotoCoreError, ClientError) as exc:
            raise translate(exc, self.bucket, "GetCallerIdentity") from exc
        return str(response.get("Arn", "?"))

    async def probe_write(self, key: str, body: bytes) -> None:
        """Do what an upload does to one small object, then remove it: PUT with Content-MD5
        (and a CRC32 checksum where the bucket's encryption makes ETags no MD5), HEAD it,
        delete it (its version too, on a versioned bucket). AccessDenied names the action
        refused; StorageError for anything else, naming the cause."""
        md5_hex = hashlib.md5(body).hexdigest()
        versions: list[str] = []

        async def put(crc32: str | None) -> dict[str, Any]:
            extra = checksummed(crc32, md5_hex) if crc32 is not None else {}
            response = await self._call(
                f"PUT {key}",
                "put_object",
                Key=key,
                Body=body,
                ContentMD5=content_md5(md5_hex),
                **extra,
            )
            versions.append(str(response.get("VersionId") or ""))
            return dict(response)

        try:
            crc32 = crc32_b64(body) if self.encryption else None
            answer = await put(crc32)
            hiding = etag_hiding_encryption(answer)
            if hiding and crc32 is None:
                self.encryption = hiding
                crc32 = crc32_b64(body)
                answer = await put(crc32)
            if crc32 is not None and answer.get("ChecksumCRC32") != crc32:
                raise StorageError(encrypted_without_checksums(self.bucket, self.encryption))
            info = await self.head_object(key)
            if info is None or not judge(info, md5_hex, len(body)).intact:
                raise StorageError(f"the probe object {key} did not read back as it was sent")
        finally:
            for version in versions:  # what was put, and nothing else
                extra = {"VersionId": version} if version and version != "null" else {}
                await self._call(f"DELETE {key}", "delete_object", Key=key, **extra)

    async def probe_permissions(self, prefix: str, known_key: str | None) -> dict[str, bool | None]:
        """Which of the actions archiver's commands use these credentials have on the
        bucket and `prefix`, by requests that change nothing: True granted, False denied,
        None when S3's answer cannot tell. A multipart upload is started and aborted at once
        (s3:PutObject, s3:AbortMultipartUpload; no object is made); a listing of one key
        (s3:ListBucket); a HEAD of `known_key` (an object a row says is archived) and a GET
        of a key that does not exist (s3:GetObject: a 403 for a key that may not exist
        proves nothing without s3:ListBucket)."""
        found: dict[str, bool | None] = {}

        async def allowed(method: str, **params: Any) -> Any:
            try:
                return await getattr(self._s3, method)(Bucket=self.bucket, **params)
            except ClientError as exc:
                if action_refused(exc):
                    return False
                if is_no_object(exc) or error_code(exc) == "InvalidRange":
                    return None
                raise self._refusal(exc, method, params.get("Key"), operation_name(method)) from exc
            except BotoCoreError as exc:
                raise translate(exc, self.bucket, operation_name(method)) from exc

        listed = await allowed("list_objects_v2", Prefix=f"{prefix}/", MaxKeys=1)
        found["s3:ListBucket"] = listed is not False
        probe = f"{prefix}/.archiver-check-{uuid.uuid4().hex[:12]}"
        started = await allowed("create_multipart_upload", Key=probe)
        found["s3:PutObject"] = started is not False
        found["s3:AbortMultipartUpload"] = None
        if started:
            aborted = await allowed(
                "abort_multipart_upload", Key=probe, UploadId=started["UploadId"]
            )
            found["s3:AbortMultipartUpload"] = aborted is not False
        read: bool | None = None
        for key in filter(None, (known_key, f"{prefix}/{ACCESS_PROBE_NAME}")):
            got = await allowed("head_object", Key=key)
            if got is not False:  # an object, or "no such object": reading is allowed
                read = True
                break
            read = False if found["s3:ListBucket"] else None
        found["s3:GetObject"] = read
        return found

    async def credential_lifetime(self) -> tuple[bool, datetime.datetime | None]:
        """Whether the client's credentials are temporary (they carry a session token), and
        when they expire, where botocore knows it (refreshable ones: roles, SSO)."""
        credentials = getattr(self._s3._request_signer, "_credentials", None)
        if credentials is None:
            return False, None
        try:
            frozen = await credentials.get_frozen_credentials()
        except (BotoCoreError, RuntimeError) as exc:
            raise translate(exc, self.bucket, "reading the credentials") from exc
        expiry = getattr(credentials, "_expiry_time", None)
        return bool(frozen.token), expiry if isinstance(expiry, datetime.datetime) else None

    async def presigned_get(self, key: str, expires_s: int) -> str:
        """A URL that GETs `key` without credentials for `expires_s` seconds (signed here,
        no request sent)."""
        try:
            url = await self._s3.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
            )
        except (BotoCoreError, ClientError) as exc:
            raise translate(exc, self.bucket, f"signing a GET of {key}") from exc
        return str(url)

    async def plain_http_status(self, endpoint_url: str | None, key: str) -> int | None:
        """The HTTP status of a signed HEAD of `key` sent without TLS (to `endpoint_url`, or
        AWS's own endpoint over http), or None when nothing answered there."""
        try:
            async with self._quick(plain_http=True, endpoint_url=endpoint_url) as client:
                await client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            return http_status(exc) or None
        except (BotoCoreError, StorageUnavailable):
            return None
        return 200
