"""S3 adapter: the only module that imports aioboto3 / aiobotocore / botocore.

One client per run, its connection pool sized from the concurrency. botocore errors are
translated here: per-object failures become `StorageError` (the row fails, the run goes
on); failures that doom every request (no bucket, no credentials, access denied) become
`ConfigError` subclasses that stop the run.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import logging
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.httpchecksum import resolve_checksum_context
from botocore.utils import determine_content_length, percent_encode

from archiver.errors import (
    AccessDenied,
    BucketMissing,
    CredentialsRefused,
    StorageError,
    StorageUnavailable,
)
from archiver.iam import MAYBE_MISSING, OBJECT_ACTIONS, POLICY_HINT, SETTING_ACTIONS
from archiver.integrity import METADATA_MD5, judge
from archiver.settings import ClientOptions, Settings

log = logging.getLogger(__name__)

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

# Refusals of the credentials themselves (not of one action): every request would fail.
_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AccountProblem",
        "AllAccessDisabled",
    }
)
_FATAL_CODES = _CREDENTIAL_CODES | {"AccessDenied"}
ACCESS_PROBE_NAME = "archiver-access-check"  # the key a run's start-up GET asks for


EXPECT_CONTINUE_MIN_BYTES = 1024 * 1024


def _no_continue_if_small(request: Any, **_: Any) -> None:
    """botocore asks S3 before every PUT body (`Expect: 100-continue`), which costs a round
    trip before the first byte is sent; for a body under 1 MiB that round trip costs more
    than sending the body to a server that might refuse it. (A before-sign handler: the
    header is added by a before-call handler that runs after any of ours.)"""
    length = determine_content_length(request.body)
    if length is not None and length < EXPECT_CONTINUE_MIN_BYTES and "Expect" in request.headers:
        del request.headers["Expect"]


BODY_CHUNK_BYTES = 1024 * 1024  # a large body goes to the socket a slice at a time


class Body(Payload):
    """A request body sent from the bytes it was read into, without copies.

    Given bytes, botocore wraps them in a BytesIO that aiohttp copies whole (getbuffer) and
    then sends 64 KiB at a time with a pass of the event loop after each: about 8 ms of
    client CPU per 8 MiB part. This is an aiohttp payload that writes slices of the same
    bytes. It is only used where no SHA-256 of the body is computed for the signature (a
    part or PUT carrying a checksum header: see `_unsigned_payload_when_checksummed`):
    botocore takes its length, and rewinds it before a retry (each write starts at the
    beginning anyway)."""

    def __init__(self, data: bytes | memoryview) -> None:
        super().__init__(data)
        self._size = self._length = len(data)
        self._position = 0  # of read(), which archiver's requests never need

    def __len__(self) -> int:
        return self._length

    def read(self, amt: int | None = None) -> bytes:
        """What makes botocore take it for a file-like object."""
        end = self._length if amt is None or amt < 0 else self._position + amt
        data = bytes(memoryview(self._value)[self._position : end])
        self._position += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._position, 2: self._length}[whence]
        self._position = min(max(base + offset, 0), self._length)
        return self._position

    def tell(self) -> int:
        return self._position

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes(self._value).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        view = memoryview(self._value)
        if content_length is not None:
            view = view[:content_length]
        for start in range(0, len(view), BODY_CHUNK_BYTES):
            await writer.write(view[start : start + BODY_CHUNK_BYTES])


class PutTemplate:
    """PutObject into one bucket with the per-run work done once per run.

    botocore's `put_object` does for every call what is the same for every call of a run:
    it emits the parameter hooks, evaluates the S3 endpoint ruleset (the key is one of its
    parameters, so its cache never hits), serialises the parameters, rebuilds the user
    agent and runs the before-call hooks; that is half of a small PUT's client CPU. Here
    botocore does all of that once, for a probe key, and each PUT is that request with its
    own key, headers and body, handed to the client's own `_make_request`: botocore still
    signs it (credentials resolved and refreshed as usual), sends it on the pooled
    connections, retries it by the configured mode and parses the reply; a reply of 300 or
    more raises the same ClientError subclass as `put_object` would.

    Only the template's headers that do not depend on the body are kept. The template is
    not used (`build` returns None) when its request does not have the expected shape: a
    request checksum computed over the body (AWS_REQUEST_CHECKSUM_CALCULATION=
    when_supported), or a URL that does not end with the encoded key.

    A PUT made here carries Content-MD5, a signed header, so its body is not hashed again
    with SHA-256 for the signature, over plain http either: the client's before-sign
    handler for every checksummed PUT and part (`_unsigned_payload_when_checksummed`).
    """

    PROBE_KEY = "archiver-template/probe key~"  # a space and a tilde: the encoding is checked
    _PER_REQUEST = ("Content-MD5", "Content-Type", "Content-Length", "Expect", "If-None-Match")

    def __init__(
        self,
        client: Any,
        operation: Any,
        url_prefix: str,
        headers: dict[str, str],
        context: dict[str, Any],
    ) -> None:
        self._client = client
        self._operation = operation
        self._url_prefix = url_prefix
        self._headers = headers
        self._context = context
        # A PUT was redirected to the bucket's region (AWS's AuthorizationHeaderMalformed):
        # botocore's redirector now knows the region, and the template is rebuilt with it.
        self.stale = False

    @classmethod
    async def build(cls, client: Any, bucket: str) -> PutTemplate | None:
        """The template for PUTs into `bucket`, or None when this client's requests do not
        fit one (see the class docstring)."""
        operation = client.meta.service_model.operation_model("PutObject")
        # What botocore's _make_api_call does before it sends, for one probe request.
        context: dict[str, Any] = {
            "client_region": client.meta.region_name,
            "client_config": client.meta.config,
            "has_streaming_input": operation.has_streaming_input,
            "auth_type": operation.resolved_auth_type,
            "unsigned_payload": operation.unsigned_payload,
            "auth_options": client.meta.service_model.metadata.get("auth"),
        }
        params: dict[str, Any] = {
            "Bucket": bucket,
            "Key": cls.PROBE_KEY,
            "Body": b"",
            "ContentMD5": content_md5(hashlib.md5(b"").hexdigest()),
            "ContentType": "application/octet-stream",
        }
        params = await client._emit_api_params(
            api_params=params, operation_model=operation, context=context
        )
        endpoint_url, extra_headers, properties = await client._resolve_endpoint_ruleset(
            operation, params, context
        )
        if properties:
            context["endpoint_properties"] = properties
        request = await client._convert_to_request_dict(
            api_params=params,
            operation_model=operation,
            endpoint_url=endpoint_url,
            context=context,
            headers=extra_headers,
        )
        resolve_checksum_context(request, operation, params)
        service_id = client.meta.service_model.service_id.hyphenize()
        await client.meta.events.emit_until_response(
            f"before-call.{service_id}.PutObject",
            model=operation,
            params=request,
            request_signer=client._request_signer,
            context=context,
        )
        if (context.get("checksum") or {}).get("request_algorithm"):
            return None  # a checksum of each body: botocore's own path computes it
        encoded_key = percent_encode(cls.PROBE_KEY, safe="/~")
        url = str(request["url"])
        if (
            request["method"] != "PUT"
            or request["query_string"]
            or not url.endswith("/" + encoded_key)
        ):
            return None
        headers = {k: v for k, v in request["headers"].items() if k not in cls._PER_REQUEST}
        if any(k.lower().startswith(("x-amz-checksum-", "x-amz-meta-")) for k in headers):
            return None
        return cls(client, operation, url[: -len(encoded_key)], headers, context)

    async def put(
        self,
        key: str,
        body: bytes | memoryview,
        content_md5_b64: str,
        content_type: str,
        *,
        if_none_match: bool,
        storage_class: str | None = None,
        checksum: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        """One PUT of `body` at `key`; botocore's parsed reply (ClientError at 300+). With
        `checksum` (the CRC32, base64, and the MD5, hex): S3's x-amz-checksum-crc32 and the
        MD5 in the object's metadata."""
        headers = dict(self._headers)
        headers["Content-MD5"] = content_md5_b64
        headers["Content-Type"] = content_type
        if storage_class:
            headers["x-amz-storage-class"] = storage_class
        if checksum is not None:
            headers["x-amz-sdk-checksum-algorithm"] = "CRC32"
            headers["x-amz-checksum-crc32"] = checksum[0]
            headers[f"x-amz-meta-{METADATA_MD5}"] = checksum[1]
        if if_none_match:
            headers["If-None-Match"] = "*"
        if len(body) >= EXPECT_CONTINUE_MIN_BYTES:
            headers["Expect"] = "100-continue"
        context = dict(self._context)
        if "signing" in context:
            context["signing"] = dict(context["signing"])
        if "s3_redirect" in context:
            # botocore's redirector keeps its per-request state here ("redirected": each
            # request is redirected once): each PUT gets its own, as botocore's calls do.
            context["s3_redirect"] = {**context["s3_redirect"], "redirected": False}
        request = {
            "url_path": "",
            "query_string": {},
            "method": "PUT",
            "headers": headers,
            "body": Body(body) if len(body) >= EXPECT_CONTINUE_MIN_BYTES else body,
            "url": self._url_prefix + percent_encode(key, safe="/~"),
            "context": context,
        }
        http, parsed = await self._client._make_request(self._operation, request, context)
        if context.get("s3_redirect", {}).get("redirected"):
            self.stale = True
        if http.status_code >= 300:
            code = context.get("error_code_override") or parsed.get("Error", {}).get("Code")
            raise self._client.exceptions.from_code(code)(parsed, "PutObject")
        return dict(parsed)


def content_md5(md5_hex: str) -> str:
    """The base64 Content-MD5 header value for a hex digest."""
    return base64.b64encode(bytes.fromhex(md5_hex)).decode("ascii")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _denied(exc: ClientError) -> bool:
    return _status(exc) == 403 or _code(exc) in ("AccessDenied", "403", "Forbidden")


def _action_refused(exc: ClientError) -> bool:
    """A 403 for want of a permission, not for the credentials themselves."""
    return _denied(exc) and _code(exc) not in _CREDENTIAL_CODES


def _operation(method: str) -> str:
    """botocore's method name as the S3 operation: `head_object` -> `HeadObject`."""
    return "".join(part.capitalize() for part in method.split("_"))


def denied(bucket: str, method: str, key: str) -> AccessDenied:
    """The error for a 403 on one object: the operation, the object and the IAM action
    these credentials lack on it."""
    action = OBJECT_ACTIONS.get(method, method)
    maybe = MAYBE_MISSING if method in ("head_object", "get_object") else ""
    return AccessDenied(
        f"S3 denied {_operation(method)} of s3://{bucket}/{key}: the credentials need "
        f"{action} on it{maybe}; {POLICY_HINT}"
    )


def bucket_denied(bucket: str, method: str) -> StorageUnavailable:
    """The error for a 403 on a bucket-level call, naming the IAM action."""
    action = SETTING_ACTIONS.get(method, method)
    return StorageUnavailable(
        f"S3 denied {_operation(method)} on bucket {bucket!r}: the credentials need {action} "
        f"on arn:aws:s3:::{bucket}; {POLICY_HINT}"
    )


NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_PROFILE (or --profile), or AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY, or run `aws configure`"
)


def translate(exc: Exception, bucket: str, doing: str) -> Exception:
    """A botocore exception as an archiver error (see the module docstring)."""
    if isinstance(exc, NoCredentialsError):
        return StorageUnavailable(NO_CREDENTIALS)
    if isinstance(exc, PartialCredentialsError | ProfileNotFound):
        return StorageUnavailable(f"no usable AWS credentials: {exc}")
    if isinstance(exc, ClientError):
        code = _code(exc)
        if code == "NoSuchBucket":
            return BucketMissing(
                f"bucket {bucket!r} does not exist (create it with: archiver setup-bucket)"
            )
        if code == "BucketAlreadyExists":
            return StorageUnavailable(
                f"bucket name {bucket!r} belongs to another account: choose another"
            )
        if code in _CREDENTIAL_CODES:
            return CredentialsRefused(f"S3 refused {doing} in bucket {bucket!r}: {code}")
        if code in _FATAL_CODES:
            return StorageUnavailable(f"S3 refused {doing} in bucket {bucket!r}: {code}")
        if code == "MissingContentLength" or _status(exc) == 411:
            # Every PUT would fail so: botocore's streamed (aws-chunked) checksum bodies.
            return StorageUnavailable(
                f"S3 refused {doing}: {code or 411} (this server does not take streamed "
                "checksum bodies: leave AWS_REQUEST_CHECKSUM_CALCULATION at when_required)"
            )
        return StorageError(f"{doing} failed: {code or _status(exc)} {exc}")
    return StorageError(f"{doing} failed: {exc.__class__.__name__}: {exc}")


def unreachable(exc: BotoCoreError, bucket: str, service: str = "S3") -> Exception:
    """A client-side failure before any answer: credentials missing, or no connection."""
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | ProfileNotFound):
        return translate(exc, bucket, "")
    return StorageUnavailable(f"{service} is not reachable: {exc}")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a HEAD tells about an object."""

    size: int
    etag: str  # without quotes
    metadata: Mapping[str, str]
    # The server-side encryption whose ETags are not an MD5 of the content (`aws:kms`,
    # `aws:kms:dsse`, `SSE-C`), or None (none, or SSE-S3, whose ETags are MD5s).
    encryption: str | None = None

    @property
    def is_multipart(self) -> bool:
        return "-" in self.etag

    @property
    def encrypted(self) -> bool:
        """Whether the ETag is not an MD5 because of the object's encryption."""
        return self.encryption is not None


def encrypted_without_checksums(bucket: str, encryption: str | None) -> str:
    """Why archiver cannot prove an upload into this bucket (see `Storage.encryption`)."""
    return (
        f"bucket {bucket!r} encrypts objects with {encryption or 'SSE-KMS'}, whose ETags are "
        "not MD5s, and this server does not answer with S3's additional checksums "
        "(x-amz-checksum-crc32) to prove an upload by: archiver cannot prove what it would "
        "store there (make the bucket's default encryption SSE-S3, or use a server that "
        "supports checksums)"
    )


def checksummed(crc32: str, md5_hex: str) -> dict[str, Any]:
    """PutObject's parameters for a body proved by S3's CRC32 checksum, with the file's MD5
    in the object's metadata (what an SSE-KMS object is judged by later)."""
    return {
        "ChecksumAlgorithm": "CRC32",
        "ChecksumCRC32": crc32,
        "Metadata": {METADATA_MD5: md5_hex},
    }


def kms_default(response: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """The SSE-KMS algorithm and key (None when unnamed) of a GetBucketEncryption answer,
    or None (no default encryption, or SSE-S3, whose ETags are MD5s)."""
    config = response.get("ServerSideEncryptionConfiguration") or {}
    for rule in config.get("Rules") or []:
        default = rule.get("ApplyServerSideEncryptionByDefault") or {}
        algorithm = str(default.get("SSEAlgorithm"))
        if algorithm.startswith("aws:kms"):
            return algorithm, default.get("KMSMasterKeyID")
    return None


def etag_hiding_encryption(response: Mapping[str, Any]) -> str | None:
    """The encryption of an object (from a PUT's or a HEAD's response) whose ETag is then not
    an MD5 of its content: SSE-KMS (`aws:kms`, `aws:kms:dsse`) or SSE-C; None otherwise."""
    if response.get("SSECustomerAlgorithm"):
        return "SSE-C"
    sse = str(response.get("ServerSideEncryption") or "")
    return sse if sse.startswith("aws:kms") else None


@dataclass(frozen=True, slots=True)
class Put:
    """What S3 answered to a PUT: the ETag, the CRC32 it echoed (when one was sent and the
    server supports S3's additional checksums), and the encryption that makes the ETag no
    MD5 (see `etag_hiding_encryption`)."""

    etag: str
    crc32: str | None = None
    encryption: str | None = None


@dataclass(frozen=True, slots=True)
class StoredPart:
    number: int
    etag: str
    crc32: str | None = None  # base64 CRC32 S3 checked, on uploads with part checksums


@dataclass(frozen=True, slots=True)
class Completed:
    """What CompleteMultipartUpload answered: the ETag (empty from some servers) and, on an
    upload with part checksums, the checksum of the parts' checksums (`...-N`)."""

    etag: str
    crc32: str | None = None


def crc32_b64(data: bytes | memoryview) -> str:
    """The base64 x-amz-checksum-crc32 value of `data`."""
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode("ascii")


def composite_crc32(part_checksums: Sequence[str]) -> str:
    """The checksum S3 gives a multipart object made of parts with these CRC32 checksums:
    the CRC32 of their concatenated values, dash, part count."""
    joined = b"".join(base64.b64decode(c) for c in part_checksums)
    return f"{crc32_b64(joined)}-{len(part_checksums)}"


# Error codes of a part refused for a checksum that does not match its bytes.
_CHECKSUM_MISMATCH_CODES = frozenset(
    {"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch", "InvalidRequest"}
)


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


def aws_session(settings: Settings) -> Any:
    """The aioboto3 session for the configured profile and region (every AWS client of a run
    comes from one)."""
    try:
        return aioboto3.Session(profile_name=settings.profile, region_name=settings.region)
    except ProfileNotFound as exc:
        raise StorageUnavailable(f"AWS profile {settings.profile!r} not found") from exc


class Storage:
    """The S3 operations archiver uses, on one client."""

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
        self._session: Any = None  # the aioboto3 session the client came from
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
            yield store

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
        if _action_refused(exc):
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
                code, status = _code(exc), _status(exc)
                if code == "NoSuchBucket":
                    raise BucketMissing(
                        f"bucket {self.bucket!r} does not exist (create it with: archiver "
                        "setup-bucket)"
                    ) from exc
                if code in ("NoSuchKey", "InvalidRange") or status in (404, 416):
                    return
                if code in _CREDENTIAL_CODES:
                    raise CredentialsRefused(
                        f"S3 refused these credentials ({code}) at bucket {self.bucket!r}: check "
                        "AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                    ) from exc
                if _denied(exc):
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
            if _status(exc) == 404 or _code(exc) in ("404", "NoSuchBucket", "NotFound"):
                if missing_ok:
                    return False
                raise BucketMissing(
                    f"bucket {self.bucket!r} does not exist (create it with: archiver setup-bucket)"
                ) from exc
            if _status(exc) == 403 or _code(exc) in ("403", *_FATAL_CODES):
                raise bucket_denied(self.bucket, "head_bucket") from exc
            raise StorageUnavailable(f"bucket {self.bucket!r} is not usable: {exc}") from exc
        except BotoCoreError as exc:
            raise unreachable(exc, self.bucket) from exc
        return True

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
                    self._s3.meta.events.register("before-sign.s3.PutObject", _no_continue_if_small)
                self._template_tried = True
        return self._template

    async def put_object(
        self,
        key: str,
        body: bytes | memoryview,
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
            template = await self._put_template()
            if template is not None:
                response = await template.put(
                    key,
                    body,
                    params["ContentMD5"],
                    content_type,
                    if_none_match=if_absent,
                    storage_class=self.storage_class,
                    checksum=(crc32, md5_hex) if crc32 is not None else None,
                )
            else:  # botocore takes bytes, not a view of a reused buffer
                params["Body"] = bytes(body)
                response = await self._s3.put_object(Bucket=self.bucket, **params)
        except ClientError as exc:
            if if_absent and (_status(exc) == 412 or _code(exc) == "PreconditionFailed"):
                return None
            if if_absent and (_status(exc) == 501 or _code(exc) == "NotImplemented"):
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

    async def head_object(self, key: str) -> ObjectInfo | None:
        """The object's size, ETag and metadata, or None when it does not exist. Only keys of
        the configured bucket are ever asked for."""
        try:
            response = await self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _status(exc) == 404 or _code(exc) in ("404", "NoSuchKey", "NotFound"):
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
        if self.storage_class and _code(exc) in ("InvalidStorageClass", "InvalidArgument"):
            raise StorageUnavailable(
                f"S3 refused storage class {self.storage_class} ({_code(exc)}): this server "
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
            if if_absent and (_status(exc) == 412 or _code(exc) == "PreconditionFailed"):
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
            return _status(exc) == 400 and _code(exc) in _CHECKSUM_MISMATCH_CODES
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
            if _action_refused(exc) and "s3:AbortMultipartUpload" not in self.refused:
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
            if _code(exc) in ("NoSuchKey", "404") or _status(exc) == 404:
                raise StorageError(f"no object at {key}") from exc
            raise self._refusal(exc, "get_object", key, f"GET {key}") from exc
        except (BotoCoreError, OSError, aiohttp.ClientError) as exc:  # cut off mid-body
            raise translate(exc, self.bucket, f"GET {key}") from exc

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
            code = _code(exc)
            if code == "BucketAlreadyOwnedByYou":
                return False
            raise translate(exc, self.bucket, "creating the bucket") from exc
        except BotoCoreError as exc:
            raise unreachable(exc, self.bucket) from exc
        return True

    async def get_setting(self, method: str, missing_codes: tuple[str, ...]) -> Any:
        """A bucket-level GET (e.g. `get_bucket_lifecycle_configuration`); None when the
        setting is absent (one of `missing_codes`). Raises `Unsupported` when the server does
        not implement it and `Refused` when it answers with another error."""
        try:
            return await getattr(self._s3, method)(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) in missing_codes:
                return None
            raise _setting_error(exc, method) from exc
        except BotoCoreError as exc:
            raise translate(exc, self.bucket, method) from exc

    async def put_setting(self, method: str, **params: Any) -> None:
        """A bucket-level PUT (e.g. `put_bucket_versioning`); `Unsupported` / `Refused` as
        for `get_setting`."""
        try:
            await getattr(self._s3, method)(Bucket=self.bucket, **params)
        except ClientError as exc:
            raise _setting_error(exc, method) from exc
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
                if _action_refused(exc):
                    return False
                if _code(exc) in ("NoSuchKey", "404", "NotFound", "InvalidRange"):
                    return None
                raise self._refusal(exc, method, params.get("Key"), _operation(method)) from exc
            except BotoCoreError as exc:
                raise translate(exc, self.bucket, _operation(method)) from exc

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
            return _status(exc) or None
        except (BotoCoreError, StorageUnavailable):
            return None
        return 200


def _setting_error(exc: ClientError, method: str) -> Exception:
    """A server's refusal of one bucket setting: Unsupported (not implemented) or Refused."""
    code, status = _code(exc), _status(exc)
    if code in ("NotImplemented", "XNotImplemented") or status == 501:
        return Unsupported(method)
    if _denied(exc):
        action = SETTING_ACTIONS.get(method, method)
        return Refused(f"AccessDenied: these credentials need {action}")
    message = str(exc.response.get("Error", {}).get("Message") or "").strip()
    detail = f": {message}" if message and message != "None" else ""
    return Refused(f"{code or 'error'} (HTTP {status}){detail}")


class ConditionalWritesUnsupported(Exception):
    """The server refused `If-None-Match: *` on PUT as not implemented."""


class Unsupported(Exception):
    """The S3-compatible server does not implement a bucket setting."""


class Refused(Exception):
    """The server refused a bucket setting; the message says why (code, or the IAM action
    the credentials lack)."""
