"""The data plane: single PUTs of small objects through obstore (the Rust `object_store`
crate's Python bindings), the rest of S3 through botocore.

A PUT through botocore spends most of its client CPU in per-request machinery (endpoint
rules, event hooks, signing in Python, aiohttp); obstore signs and sends in Rust, off the
event loop, for a fifth of that (benchmarks/README.md). What it carries is only what it
can carry exactly as botocore's path would:

- one PUT of a body in memory, with Content-Type, the storage class and, when asked,
  `If-None-Match: *` (`mode="create"`); S3's answer gives the ETag (compared with the MD5 by
  the uploader, as before) and the version id;
- credentials from the run's botocore session, so the whole chain the AWS CLI reads (env,
  profiles, SSO, `credential_process`, instance and container roles) applies, refreshed
  as it expires;
- the configured attempts (AWS_MAX_ATTEMPTS), timeouts, CA bundle (AWS_CA_BUNDLE or the
  profile's `ca_bundle`) and endpoint;
- an error answer becomes the botocore ClientError its status and code make, so that every
  refusal is classified by the same rules (`storage_answers`) and names its IAM action.

Not carried (botocore's path takes them): a PUT with a CRC32 (SSE-KMS buckets), a body
streamed from a file, AWS_REQUEST_CHECKSUM_CALCULATION=when_supported, a key obstore would
not take as it is, and every PUT after S3 redirected one to another region.

The body's SHA-256 is signed over plain http (the server checks it: an on-path writer
cannot change the bytes); over https it is not computed, as for botocore's PUTs with
Content-MD5: TLS protects the bytes in transit and the ETag proves what was stored.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import ClientError
from obstore import put_async
from obstore.store import S3Store

from archiver.errors import StorageError
from archiver.settings import ClientOptions

log = logging.getLogger(__name__)

# How long obstore may keep credentials it was given before asking again (a refreshable
# credential is refreshed by botocore's own rules when asked).
CREDENTIALS_REASKED_S = 60.0
FIRST_BACKOFF_S = 0.1  # botocore's standard mode: up to 1 s (jittered), capped at 20 s
MAX_BACKOFF_S = 20.0
RETRY_WINDOW_S = 180.0
WHOLE_REQUEST_S = 600.0  # obstore's limit on one request (its default, 30 s, is too short)

_STATUS_RE = re.compile(r"status code: (\d{3})")
_CODE_RE = re.compile(r"<Code>([^<]*)</Code>")
_MESSAGE_RE = re.compile(r"<Message>([^<]*)</Message>")
# obstore takes a key as a path: no empty, `.` or `..` segment, no leading or trailing /.
_AWKWARD_KEY_RE = re.compile(r"(^|/)\.{0,2}(/|$)")


class DataPlaneUnusable(Exception):
    """obstore got no answer before any of its PUTs succeeded (a certificate rustls refuses
    where OpenSSL does not, a proxy it does not use): botocore carries the PUTs instead."""


class BotocoreCredentials:
    """obstore's credential provider, fed from the run's botocore credentials: `refresh`
    (on the event loop, before each PUT) asks botocore for the current frozen credentials,
    which refreshes them when they near expiry; obstore's threads read the last ones."""

    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials
        self._current: dict[str, Any] | None = None
        self._refreshable = hasattr(credentials, "refresh_needed")

    async def refresh(self) -> None:
        frozen = await self._credentials.get_frozen_credentials()
        self._current = {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
        }

    def __call__(self) -> dict[str, Any]:
        if self._current is None:
            raise RuntimeError("credentials asked before they were read")
        expires = (
            datetime.now(UTC) + timedelta(seconds=CREDENTIALS_REASKED_S)
            if self._refreshable
            else None
        )
        return {**self._current, "expires_at": expires}


def retry_config(options: ClientOptions) -> dict[str, Any]:
    """obstore's retries for archiver's options: AWS_MAX_ATTEMPTS counts the first try,
    obstore counts retries; backoff as botocore's standard mode."""
    return {
        "max_retries": options.max_attempts - 1,
        "backoff": {
            "init_backoff": timedelta(seconds=FIRST_BACKOFF_S),
            "max_backoff": timedelta(seconds=MAX_BACKOFF_S),
            "base": 2,
        },
        "retry_timeout": timedelta(seconds=RETRY_WINDOW_S),
    }


def client_options(
    *, https: bool, max_connections: int, connect_timeout_s: float, read_timeout_s: float
) -> dict[str, Any]:
    """obstore's HTTP client options, as botocore's client is configured."""
    return {
        "allow_http": not https,
        "connect_timeout": timedelta(seconds=connect_timeout_s),
        # As botocore's read timeout: a stall between reads, not a whole PUT's length (the
        # uploader gives each upload its own deadline, after the file's size).
        "read_timeout": timedelta(seconds=read_timeout_s),
        "timeout": timedelta(seconds=WHOLE_REQUEST_S),
        "pool_max_idle_per_host": str(max_connections),
    }


def endpoint_for(url_prefix: str, bucket: str) -> tuple[str, bool] | None:
    """(endpoint, virtual hosted) for obstore from the URL botocore puts keys under, or
    None for a shape obstore does not build (an endpoint with a path of its own)."""
    split = urlsplit(url_prefix)
    base = f"{split.scheme}://{split.netloc}"
    if split.path == f"/{bucket}/":
        return base, False
    if split.path == "/" and split.netloc.startswith(f"{bucket}."):
        return base, True
    return None


def usable_key(key: str) -> bool:
    """Whether obstore sends `key` exactly as it is (it normalises paths)."""
    return bool(key) and _AWKWARD_KEY_RE.search(key) is None and "\\" not in key


def client_error(exc: BaseException, operation: str) -> ClientError | None:
    """The botocore ClientError an obstore error's HTTP answer makes (status, and the code
    and message of S3's XML error), or None when there was no answer (a connection that
    failed, a timeout)."""
    text = str(exc)
    status = _STATUS_RE.search(text)
    if status is None:
        return None
    code = _CODE_RE.search(text)
    message = _MESSAGE_RE.search(text)
    response: dict[str, Any] = {
        "Error": {
            "Code": code.group(1) if code else status.group(1),
            "Message": message.group(1) if message else "",
        },
        "ResponseMetadata": {"HTTPStatusCode": int(status.group(1))},
    }
    return ClientError(response, operation)  # type: ignore[arg-type]


class DataPlane:
    """Single PUTs into one bucket through one obstore S3Store."""

    def __init__(self, store: Any, credentials: BotocoreCredentials) -> None:
        self._store = store
        self._credentials = credentials
        self.puts = 0  # PUTs this client sent (for the tests and the benchmarks)
        self.answered = False  # S3 has answered one of its PUTs

    @classmethod
    async def open(
        cls,
        *,
        url_prefix: str,
        bucket: str,
        region: str,
        credentials: Any,
        options: ClientOptions,
        ca_bundle: str | None,
        max_connections: int,
        connect_timeout_s: float,
        read_timeout_s: float,
    ) -> DataPlane | None:
        """The data plane for `bucket`, sending to where botocore's endpoint rules sent its
        template PUT (`url_prefix`: path style, `{endpoint}/{bucket}/`, or virtual hosted,
        `{scheme}://{bucket}.{host}/`; so FIPS, dual-stack and custom endpoints are kept),
        signed for `region`. None when obstore cannot carry this run's PUTs exactly (no
        credentials, a checksum asked of every PUT, a URL of another shape, a CA bundle that
        cannot be read): then botocore carries them all."""
        if credentials is None or options.checksum_calculation != "when_required":
            return None
        where = endpoint_for(url_prefix, bucket)
        if where is None:
            log.info("botocore carries every PUT: the endpoint %s has a path", url_prefix)
            return None
        endpoint, virtual_hosted = where
        https = urlsplit(endpoint).scheme == "https"
        config: dict[str, Any] = {
            "region": region,
            "endpoint": endpoint,
            "virtual_hosted_style_request": virtual_hosted,
            "unsigned_payload": https,
        }
        client = client_options(
            https=https,
            max_connections=max_connections,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
        )
        if ca_bundle:
            try:
                client["root_certificate"] = await asyncio.to_thread(Path(ca_bundle).read_bytes)
            except OSError as exc:
                log.info("botocore carries every PUT: cannot read %s: %s", ca_bundle, exc)
                return None
        provider = BotocoreCredentials(credentials)
        await provider.refresh()
        try:
            store = S3Store(
                bucket,
                config=config,  # type: ignore[arg-type]
                client_options=client,  # type: ignore[arg-type]
                retry_config=retry_config(options),  # type: ignore[arg-type]
                credential_provider=provider,  # type: ignore[arg-type]
            )
        except Exception as exc:  # a configuration obstore does not take
            log.info("botocore carries every PUT: obstore refused the configuration: %s", exc)
            return None
        return cls(store, provider)

    async def put(
        self,
        key: str,
        body: bytes | memoryview,
        content_type: str,
        *,
        if_none_match: bool,
        storage_class: str | None,
    ) -> dict[str, Any]:
        """One PUT; S3's answer as botocore's `put_object` gives it (ETag, VersionId), or
        the ClientError botocore would raise for the same answer. StorageError when no
        answer came (connection, timeout), after obstore's retries; DataPlaneUnusable when
        none has ever come."""
        await self._credentials.refresh()
        attributes: dict[str, str] = {"Content-Type": content_type}
        if storage_class:
            attributes["Storage-Class"] = storage_class
        self.puts += 1
        try:
            result = await put_async(
                self._store,
                key,
                # A view of a reused buffer is copied: a PUT abandoned (its deadline, a
                # second Ctrl-C) may still be read by obstore's threads after the buffer
                # went back to the pool.
                bytes(body) if isinstance(body, memoryview) else body,
                attributes=attributes,
                mode="create" if if_none_match else "overwrite",
                use_multipart=False,
            )
        except Exception as exc:
            error = client_error(exc, "PutObject")
            if error is not None:
                self.answered = True
                raise error from exc
            if not self.answered:
                raise DataPlaneUnusable(_first_line(exc)) from exc
            raise StorageError(f"PUT {key} failed: {_first_line(exc)}") from exc
        self.answered = True
        return {"ETag": result.get("e_tag") or "", "VersionId": result.get("version")}


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
