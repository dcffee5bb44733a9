"""A small fault-injecting HTTP proxy in front of the moto server (the tests' own, no mocks).

It runs its own event loop in a thread, handles one request per client connection (it
answers `Connection: close`, as moto does), records every request, and lets a test decide,
request by request, to forward it, answer with an S3 error, drop the connection in the
middle of the body, or corrupt the body in transit. `stop()`/`start()` take it off the
network and back on the same port.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body_length: int

    @property
    def key(self) -> str:
        """The object key of a path-style request (`/{bucket}/{key}`)."""
        return self.path.split("/", 2)[2]

    @property
    def is_object_put(self) -> bool:
        """A PutObject carrying object data (not a part, not a bucket setting)."""
        return self.method == "PUT" and not self.query and self.path.count("/") >= 2

    @property
    def is_part_put(self) -> bool:
        return self.method == "PUT" and "partNumber" in self.query


@dataclass(frozen=True)
class Respond:
    status: int
    code: str = "InternalError"
    message: str = "injected by the test proxy"
    extra_xml: str = ""  # more elements of <Error> (AWS's <Region>, ...)
    headers: tuple[tuple[str, str], ...] = ()


def signed_region(request: Request) -> str | None:
    """The region a SigV4 request was signed for (its credential scope)."""
    found = re.search(
        r"Credential=[^/]+/\d{8}/([^/]+)/s3/", request.headers.get("authorization", "")
    )
    return found.group(1) if found else None


def bucket_in_region(region: str) -> Callable[[Request], Respond | None]:
    """A rule answering as AWS does for a bucket in `region`: a request signed for another
    region gets 400 AuthorizationHeaderMalformed naming the bucket's region (in the body and
    in x-amz-bucket-region); requests signed for `region` are forwarded."""

    def rule(request: Request) -> Respond | None:
        signed = signed_region(request)
        if signed is None or signed == region:
            return None
        return Respond(
            400,
            "AuthorizationHeaderMalformed",
            f"the region '{signed}' is wrong; expecting '{region}'",
            extra_xml=f"<Region>{region}</Region>",
            headers=(("x-amz-bucket-region", region),),
        )

    return rule


@dataclass(frozen=True)
class Drop:
    """Close the connection after part of the body was read, without answering."""


@dataclass(frozen=True)
class Corrupt:
    """Flip one byte of the body and forward it."""


@dataclass(frozen=True)
class CorruptResponse:
    """Forward the request, then flip the last byte of the response (its body's end)."""


@dataclass(frozen=True)
class Reply:
    """An answer as the proxy sees it: status, headers (names lower-cased), body."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Rewrite:
    """Forward the request, then answer with what `change` makes of the server's answer:
    how AWS answers where the test server answers otherwise (SSE-KMS ETags, ...)."""

    change: Callable[[Reply], Reply]


def as_sse_kms(reply: Reply) -> Reply:
    """AWS's answer for an object stored with SSE-KMS: `x-amz-server-side-encryption:
    aws:kms`, and an ETag that is not the MD5 of its bytes (AWS's Object.ETag docs)."""
    headers = dict(reply.headers)
    etag = headers.get("etag", "").strip('"')
    if reply.status < 300 and etag:
        if "-" not in etag:
            headers["etag"] = '"' + hashlib.md5(b"kms:" + etag.encode()).hexdigest() + '"'
        headers["x-amz-server-side-encryption"] = "aws:kms"
    return Reply(reply.status, headers, reply.body)


Action = Respond | Drop | Corrupt | CorruptResponse | Rewrite | None
Rule = Callable[[Request], Action]

REASONS = {
    403: "Forbidden",
    412: "Precondition Failed",
    500: "Internal Server Error",
    503: "Slow Down",
}


@dataclass
class S3Proxy:
    upstream: str  # http://host:port
    rule: Rule = field(default=lambda request: None)
    requests: list[tuple[Request, str]] = field(default_factory=list)  # (request, what happened)
    port: int = 0
    delay_s: float = 0.0  # added before forwarding each request (slows a run down)
    delay_if: Callable[[Request], bool] = field(default=lambda request: True)  # which ones
    arrived: list[Request] = field(default_factory=list)  # read, answered or not yet
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> S3Proxy:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
            self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Refuse new connections (the port stays ours to start again)."""
        if self._loop is not None and self._server is not None:
            server = self._server

            async def close() -> None:
                server.close()
                await server.wait_closed()

            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._server = None

    def close(self) -> None:
        self.stop()
        if self._loop is not None:
            # Requests still held (by `delay_s`) end now, while their loop still runs.
            asyncio.run_coroutine_threadsafe(_cancel_others(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            assert self._thread is not None
            self._thread.join(10)
            self._loop = None

    # -- what happened ----------------------------------------------------------------------

    def count(self, predicate: Callable[[Request], bool], outcome: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r, what in self.requests
                if predicate(r) and (outcome is None or what == outcome)
            )

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.arrived.clear()

    # -- one request ------------------------------------------------------------------------

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, Request] | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        parts = urlsplit(target)
        length = int(headers.get("content-length", "0") or 0)
        query = parse_qs(parts.query, keep_blank_values=True)
        return head, Request(method, parts.path, query, headers, length)

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, action: Respond, *, head: bool) -> None:
        xml = (
            f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{action.code}</Code>"
            f"<Message>{action.message}</Message>{action.extra_xml}</Error>"
        ).encode()
        extra = "".join(f"{name}: {value}\r\n" for name, value in action.headers)
        writer.write(
            f"HTTP/1.1 {action.status} {REASONS.get(action.status, 'Error')}\r\n"
            f"Content-Type: application/xml\r\nContent-Length: {len(xml)}\r\n{extra}"
            "Connection: close\r\n\r\n".encode()
            + (b"" if head else xml)  # a response to HEAD has no body, as S3's have none
        )
        await writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parsed = await self._read_head(reader)
        if parsed is None:
            writer.close()
            return
        head, request = parsed
        with self._lock:
            self.arrived.append(request)
        length = request.body_length
        action = self.rule(request)
        what = "forwarded"
        expects_continue = request.headers.get("expect", "").lower() == "100-continue"
        try:
            if expects_continue and not isinstance(action, Respond):
                # As S3 does: errors are answered before the body, otherwise "go on".
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await writer.drain()
            if isinstance(action, Drop):
                what = "dropped"
                await reader.readexactly(max(0, length // 2))
                return
            skip_body = isinstance(action, Respond) and expects_continue
            body = await reader.readexactly(length) if length and not skip_body else b""
            if isinstance(action, Respond):
                what = f"answered {action.status}"
                await self._respond(writer, action, head=request.method == "HEAD")
                return
            if isinstance(action, Corrupt) and body:
                what = "corrupted"
                body = body[:-1] + bytes([body[-1] ^ 0xFF])
            if isinstance(action, CorruptResponse):
                what = "response corrupted"
            if self.delay_s and self.delay_if(request):
                await asyncio.sleep(self.delay_s)
            status = await self._forward(
                head,
                body,
                writer,
                corrupt=isinstance(action, CorruptResponse),
                change=action.change if isinstance(action, Rewrite) else None,
            )
            if what == "forwarded":
                what = f"forwarded {status}"
        except (ConnectionError, asyncio.IncompleteReadError):
            what = "client went away"
        finally:
            with self._lock:
                self.requests.append((request, what))
            writer.close()

    async def _forward(
        self,
        head: bytes,
        body: bytes,
        writer: asyncio.StreamWriter,
        *,
        corrupt: bool = False,
        change: Callable[[Reply], Reply] | None = None,
    ) -> int:
        host, port = urlsplit(self.upstream).hostname, urlsplit(self.upstream).port
        up_reader, up_writer = await asyncio.open_connection(host, port)
        try:
            lines = head.decode("latin-1").split("\r\n")
            kept = [
                line
                for line in lines[1:]
                if line and not line.lower().startswith(("connection:", "keep-alive:", "expect:"))
            ]
            request_head = "\r\n".join([lines[0], *kept, "Connection: close", "", ""])
            up_writer.write(request_head.encode("latin-1") + body)
            await up_writer.drain()
            response = await up_reader.read()  # the upstream closes after one response
            if corrupt and response:
                response = response[:-1] + bytes([response[-1] ^ 0xFF])
            if change is not None and response.startswith(b"HTTP/"):
                response = _rewritten(response, change)
            writer.write(response)
            await writer.drain()
            return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0
        finally:
            up_writer.close()


def _rewritten(response: bytes, change: Callable[[Reply], Reply]) -> bytes:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    reply = change(Reply(status, headers, body))
    if "content-length" in reply.headers and reply.body != body:
        reply.headers["content-length"] = str(len(reply.body))
    out = [f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'OK')}"]
    out += [f"{name}: {value}" for name, value in reply.headers.items()]
    return "\r\n".join([*out, "", ""]).encode("latin-1") + reply.body


async def _cancel_others() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
