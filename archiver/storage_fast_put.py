"""The PutObject fast path: one signed request built from a template per PUT, on
botocore's own session, signer and connection pool, without its per-request event
machinery (where most of a small PUT's client CPU went). It leans on private botocore
attributes; where they are not as expected, `PutTemplate.build` returns None and every PUT
takes botocore's ordinary path.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload
from botocore.httpchecksum import resolve_checksum_context
from botocore.utils import determine_content_length, percent_encode

from archiver.checksums import content_md5
from archiver.integrity import METADATA_MD5
from archiver.localfs import LocalFile, PutBody, body_size

EXPECT_CONTINUE_MIN_BYTES = 1024 * 1024


def no_continue_if_small(request: Any, **_: Any) -> None:
    """botocore asks S3 before every PUT body (`Expect: 100-continue`), which costs a round
    trip before the first byte is sent; for a body under 1 MiB that round trip costs more
    than sending the body to a server that might refuse it. (A before-sign handler: the
    header is added by a before-call handler that runs after any of ours.)"""
    length = determine_content_length(request.body)
    if length is not None and length < EXPECT_CONTINUE_MIN_BYTES and "Expect" in request.headers:
        del request.headers["Expect"]


BODY_CHUNK_BYTES = 1024 * 1024  # a large body goes to the socket a slice at a time


class _Rewindable(Payload):
    """An aiohttp payload that botocore also takes for a file: a length, `read`, and a
    position it rewinds (`seek(0)`) before a retry; each write starts at the beginning."""

    def __init__(self, value: object, length: int) -> None:
        super().__init__(value)
        self._size = self._length = length
        self._position = 0  # of read()

    def __len__(self) -> int:
        return self._length

    def read(self, amt: int | None = None) -> bytes:
        """What makes botocore take it for a file-like object."""
        end = self._length if amt is None or amt < 0 else min(self._length, self._position + amt)
        data = self._read(self._position, end)
        self._position += len(data)
        return data

    def _read(self, start: int, end: int) -> bytes:
        raise NotImplementedError

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._position, 2: self._length}[whence]
        self._position = min(max(base + offset, 0), self._length)
        return self._position

    def tell(self) -> int:
        return self._position

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)


class Body(_Rewindable):
    """A request body sent from the bytes it was read into, without copies.

    Given bytes, botocore wraps them in a BytesIO that aiohttp copies whole (getbuffer) and
    then sends 64 KiB at a time with a pass of the event loop after each: about 8 ms of
    client CPU per 8 MiB part. This is an aiohttp payload that writes slices of the same
    bytes. It is only used where no SHA-256 of the body is computed for the signature (a
    part or PUT carrying a checksum header: see `_unsigned_payload_when_checksummed`)."""

    def __init__(self, data: bytes | memoryview) -> None:
        super().__init__(data, len(data))

    def _read(self, start: int, end: int) -> bytes:
        return bytes(memoryview(self._value)[start:end])

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes(self._value).decode(encoding, errors)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        view = memoryview(self._value)
        if content_length is not None:
            view = view[:content_length]
        for start in range(0, len(view), BODY_CHUNK_BYTES):
            await writer.write(view[start : start + BODY_CHUNK_BYTES])


class FileBody(_Rewindable):
    """A request body streamed from an open file, `size` bytes from its start, a chunk at a
    time (each read in a worker thread): a single PUT of a file of tens of megabytes never
    holds more than a chunk of it. It is hashed before (Content-MD5 goes with it, and S3
    refuses a body that does not match it), not while it is sent. On botocore's ordinary
    path (no template) botocore may `read` it, in chunks."""

    def __init__(self, f: LocalFile, size: int) -> None:
        super().__init__(f, size)
        self._file = f

    def _read(self, start: int, end: int) -> bytes:
        return self._file.pread(start, end - start)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a file body is not decoded")

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        end = self._length if content_length is None else min(content_length, self._length)
        offset = 0
        while offset < end:
            chunk = await asyncio.to_thread(
                self._file.pread, offset, min(BODY_CHUNK_BYTES, end - offset)
            )
            if not chunk:
                raise OSError(f"the file shrank while it was sent (at byte {offset})")
            await writer.write(chunk)
            offset += len(chunk)


def request_body(body: PutBody) -> Any:
    """What a PUT hands to the HTTP client: bytes, a payload of a buffer's bytes (1 MiB or
    more), or a payload streamed from a file."""
    if isinstance(body, LocalFile):
        return FileBody(body, body.size)
    return Body(body) if len(body) >= EXPECT_CONTINUE_MIN_BYTES else body


def botocore_body(body: PutBody) -> Any:
    """A PUT's body for botocore's ordinary path: bytes (botocore does not take a view of a
    reused buffer), or a file it reads a chunk at a time."""
    return FileBody(body, body.size) if isinstance(body, LocalFile) else bytes(body)


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
        self.url_prefix = url_prefix  # where keys go: `{endpoint}/{bucket}/` or virtual hosted
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

    @property
    def signing_region(self) -> str:
        """The region the template's request was signed for (the endpoint rules' answer)."""
        signing = self._context.get("signing") or {}
        return str(signing.get("region") or self._client.meta.region_name)

    async def put(
        self,
        key: str,
        body: PutBody,
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
        if body_size(body) >= EXPECT_CONTINUE_MIN_BYTES:
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
            "body": request_body(body),
            "url": self.url_prefix + percent_encode(key, safe="/~"),
            "context": context,
        }
        http, parsed = await self._client._make_request(self._operation, request, context)
        if context.get("s3_redirect", {}).get("redirected"):
            self.stale = True
        if http.status_code >= 300:
            code = context.get("error_code_override") or parsed.get("Error", {}).get("Code")
            raise self._client.exceptions.from_code(code)(parsed, "PutObject")
        return dict(parsed)
