"""`archiver upload`: what one row means, and the run that wires database, S3 and pipeline.

Per row: validate `md5_sum` and `created_at`, find the file (confined to the cache root),
derive the key, and store the file only when its bytes hash to `md5_sum`: no byte is sent
before the file is proved (a small file, or a large one that fits the byte budget, is read
once, into memory; a larger one is hashed first, then read again a part at a time). A row
is recorded only when S3 confirms the content: the ETag of a single PUT equals the MD5; a
multipart upload's parts were each checked (by a CRC32 the server checks, or by their
ETags, the MD5 of each part) and the completed object answers with the checksum (or ETag)
of exactly those parts; an existing object is accepted when the integrity rule
(`integrity.py`) says it holds the file.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from archiver.budget import BufferPool, ByteBudget, Throttle
from archiver.checksums import composite_crc32, crc32_b64, encrypted_without_checksums
from archiver.claims import Claims
from archiver.content_types import SNIFF_BYTES, choose_ext, content_type_for, needs_sniffing
from archiver.db import Database, RowFilter
from archiver.errors import (
    AccessDenied,
    ArchiverError,
    ConditionalWritesUnsupported,
    NotARegularFile,
    StorageError,
    StorageUnavailable,
)
from archiver.integrity import METADATA_MD5, mismatch, object_intact
from archiver.keys import archive_url, as_utc, normalize_md5, object_key
from archiver.ledger import FileState, Ledger, note_for, set_aside
from archiver.localfs import READ_CHUNK_BYTES, CacheRoot, LocalFile, why
from archiver.models import (
    Completed,
    MediaRow,
    ObjectInfo,
    Outcome,
    Problem,
    Put,
    RowResult,
    StoredPart,
    Summary,
)
from archiver.pipeline import Interrupt, Pipeline
from archiver.policies import BatchPolicy, ExistencePolicy, RetryPolicy
from archiver.resolve import Found, NotFound, Resolution, open_cache_root, resolver_for
from archiver.services import connected
from archiver.settings import MAX_PARTS, MIB, Settings, UploadOptions
from archiver.storage import Storage

log = logging.getLogger(__name__)

INLINE_READ_MAX_BYTES = 1 * MIB  # read with the lookup, in the same thread hop
INTEGRITY_ATTEMPTS = 3  # sends of one body whose stored ETag came back wrong
# Per-upload deadline: a base plus the time the file takes at a slow 256 KiB/s.
DEADLINE_BASE_S = 120.0
DEADLINE_SLOWEST_BYTES_PER_S = 256 * 1024
DONE_KEYS_REMEMBERED = 100_000  # keys stored this run, to skip later rows sharing them
PAGE_ROWS = 1000  # rows read per statement
CLAIM_ROWS_MIN = 100  # rows claimed per statement, at least


class ObjectStore(Protocol):
    """The part of `storage.Storage` the uploader uses."""

    versioned: bool  # If-None-Match is not to be trusted on this bucket
    refused: set[str]  # IAM actions S3 refused where the run goes on without them
    encryption: str | None  # the bucket's encryption makes ETags no MD5 (SSE-KMS)
    bucket: str

    @property
    def plain_http(self) -> bool: ...

    async def put_object(
        self,
        key: str,
        body: bytes | memoryview,
        md5_hex: str,
        content_type: str,
        *,
        if_absent: bool,
        crc32: str | None = None,
    ) -> Put | None: ...

    async def head_object(self, key: str) -> ObjectInfo | None: ...

    async def create_multipart(
        self, key: str, content_type: str, metadata: dict[str, str], *, crc32: bool = False
    ) -> str: ...

    async def upload_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        body: bytes | memoryview,
        *,
        md5_hex: str | None = None,
        crc32: str | None = None,
    ) -> StoredPart: ...

    async def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[StoredPart], *, if_absent: bool
    ) -> Completed | None: ...

    async def checks_part_checksums(self, probe_key: str) -> bool: ...

    async def abort_multipart(self, key: str, upload_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Prepared:
    """A row whose file was found: where it is, where it goes, and maybe its bytes."""

    row: MediaRow
    md5: str
    path: Path
    size: int
    key: str
    url: str
    content_type: str
    file_state: FileState  # (size, mtime, ctime) when it was found, before any read
    body: bytes | None = None  # read with the lookup when small
    body_md5: str | None = None


class Denied(enum.Enum):
    """S3 refused to say whether an object exists (a 403 on HEAD)."""

    DENIED = "denied"


DENIED = Denied.DENIED


def _state(found: Resolution) -> FileState:
    """What a problem record keeps of the file a row resolved to: size, mtime and ctime."""
    return (found.size, found.mtime, found.ctime) if isinstance(found, Found) else None


def multipart_etag(part_digests: Sequence[bytes]) -> str:
    """The ETag S3 gives a multipart object: MD5 of the parts' MD5s, dash, part count."""
    return f"{hashlib.md5(b''.join(part_digests)).hexdigest()}-{len(part_digests)}"


def part_size_for(size: int, preferred: int) -> int:
    """`preferred`, grown in whole MiB when the file would need more than 10,000 parts."""
    if size <= preferred * MAX_PARTS:
        return preferred
    needed = -(-size // MAX_PARTS)
    return -(-needed // MIB) * MIB


@dataclass
class Sent:
    """Bytes of file data S3 accepted for one row (each accepted PUT or part counts)."""

    bytes: int = 0


def read_held(f: LocalFile, views: Sequence[memoryview]) -> str:
    """Fill `views` with the file, part after part; the whole file's MD5 (blocking)."""
    whole = hashlib.md5()
    offset = 0
    for view in views:
        if f.pread_into(view, offset) != len(view):
            raise StorageError(f"the file shrank while it was read (at byte {offset})")
        whole.update(view)
        offset += len(view)
    return whole.hexdigest()


@dataclass(frozen=True, slots=True)
class PartMode:
    """What each part of a run's multipart uploads carries: a CRC32 (where the server
    checks it), Content-MD5, or both (a CRC32 over plain http, where an on-path writer
    could swap a part for one with the same CRC32: the signed Content-MD5 stops that)."""

    crc32: bool
    md5: bool


@dataclass(frozen=True, slots=True)
class PartCheck:
    crc32: str | None  # base64
    md5: str | None  # hex

    def answered(self, part: StoredPart) -> str:
        """What S3 answered that proves the part: the CRC32 it checked, or the ETag."""
        return (part.crc32 if self.crc32 is not None else part.etag) or ""

    @property
    def expected(self) -> str:
        return self.crc32 if self.crc32 is not None else self.md5 or ""


def part_check(data: memoryview, mode: PartMode) -> PartCheck:
    """What a part is sent with (blocking: it hashes the part)."""
    return PartCheck(
        crc32_b64(data) if mode.crc32 else None,
        hashlib.md5(data).hexdigest() if mode.md5 else None,
    )


def hash_streamed(f: LocalFile, part_size: int) -> tuple[str, list[int]]:
    """The whole file's MD5 and each part's CRC32, in one read a chunk at a time (memory
    stays bounded): the file is proved before a byte is sent (blocking)."""
    whole = hashlib.md5()
    crcs = []
    chunk = memoryview(bytearray(min(READ_CHUNK_BYTES, part_size)))
    for offset in range(0, f.size, part_size):
        end = min(offset + part_size, f.size)
        crc = 0
        pos = offset
        while pos < end:
            got = f.pread_into(chunk[: min(len(chunk), end - pos)], pos)
            if not got:
                raise StorageError(f"the file shrank while it was read (at byte {pos})")
            whole.update(chunk[:got])
            crc = zlib.crc32(chunk[:got], crc)
            pos += got
        crcs.append(crc)
    return whole.hexdigest(), crcs


def reread_part(
    f: LocalFile, view: memoryview, offset: int, crc: int, mode: PartMode, whole: Any
) -> PartCheck:
    """A part read again to be sent (a file larger than the byte budget): its bytes must be
    those proved by `hash_streamed` (the same CRC32), and go into `whole`, the MD5 of the
    second read, which must be `md5_sum` before the upload is completed (a change that
    keeps each part's CRC32 is then caught too); its check (blocking)."""
    if f.pread_into(view, offset) != len(view) or zlib.crc32(view) != crc:
        raise StorageError(f"the file changed while it was sent (the part at byte {offset})")
    whole.update(view)
    return part_check(view, mode)


class Uploader:
    """Handles one row at a time (called by many workers at once)."""

    def __init__(
        self,
        settings: Settings,
        options: UploadOptions,
        store: ObjectStore | None,
        *,
        cache: CacheRoot,
        cwd: Path,
        ledger: Ledger | None = None,
        notes: bool = False,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.notes = notes  # archiver_problems is there to keep problem notes
        self.options = options
        self.store = store
        self.cache = cache
        self.resolver = resolver_for(settings, cache.path, cwd)
        self.budget = ByteBudget(options.byte_budget)
        self.buffers = BufferPool(
            options.part_size, keep=max(1, options.byte_budget // options.part_size)
        )
        self.existence = ExistencePolicy(misses_to_switch=2 * options.concurrency)
        self.throttle = Throttle(options.max_bandwidth) if options.max_bandwidth else None
        self.inline_max = min(INLINE_READ_MAX_BYTES, options.byte_budget // options.concurrency)
        self._inflight: dict[str, asyncio.Future[RowResult]] = {}
        self._done: OrderedDict[str, None] = OrderedDict()
        self.heads_denied = 0  # HEADs S3 refused (403)

    # -- the lookup, in a worker thread ------------------------------------------------

    def file_state(self, row: MediaRow) -> FileState:
        """(size, mtime, ctime) of the file the row resolves to, None when none (blocking)."""
        md5 = normalize_md5(row.md5_sum)
        return _state(self.resolver.resolve(row, md5)) if md5 is not None else None

    def prepare(self, row: MediaRow, md5: str) -> Prepared | RowResult:
        """Find, stat, maybe read the row's file and derive its key (blocking I/O)."""
        found = self.resolver.resolve(row, md5)
        state = _state(found)
        if row.created_at_bad is not None:
            return RowResult(
                row.media_id,
                Outcome.INVALID,
                reason=f"created_at {row.created_at_bad!r} is outside the years 1-9999",
                file_state=state,
            )
        if isinstance(found, NotFound):
            return RowResult(row.media_id, Outcome.MISSING_LOCAL, reason=found.reason)
        if not isinstance(found, Found):
            return RowResult(row.media_id, Outcome.INVALID, reason=found.reason)
        path = found.path
        body: bytes | None = None
        body_md5: str | None = None
        head = b""
        read_body = not self.options.dry_run and found.size <= self.inline_max
        try:
            if read_body:
                body, body_md5 = self._read(path)
                head = body[:SNIFF_BYTES]
            elif needs_sniffing(path.suffix, row.mime_type):
                with self.cache.open_file(path) as f:
                    head = f.pread(0, SNIFF_BYTES)
        except NotARegularFile as exc:
            return RowResult(row.media_id, Outcome.INVALID, reason=str(exc), file_state=state)
        except OSError as exc:
            reason = f"cannot read {path}: {why(exc)}"
            return RowResult(row.media_id, Outcome.FAILED, reason=reason, file_state=state)
        ext = choose_ext(path.suffix, row.mime_type, head)
        key = object_key(self.settings.key_prefix, as_utc(row.created_at, found.mtime), md5, ext)
        return Prepared(
            row=row,
            md5=md5,
            path=path,
            size=len(body) if body is not None else found.size,
            key=key,
            url=archive_url(self.settings.bucket, key),
            content_type=content_type_for(row.mime_type, ext),
            file_state=(found.size, found.mtime, found.ctime),
            body=body,
            body_md5=body_md5,
        )

    # -- one row ------------------------------------------------------------------------

    async def handle(self, row: MediaRow) -> RowResult:
        """The outcome of archiving one row (never raises for a per-row problem); a
        problem outcome carries the note `archiver_problems` keeps of it."""
        known = self.ledger.take(row.media_id) if self.ledger is not None else None
        if known is not None:
            # Set aside when neither the row nor its file changed: only a lookup, no read.
            state = await asyncio.to_thread(self.file_state, row)
            if set_aside(known, row, state):
                return RowResult(row.media_id, Outcome.KNOWN_PROBLEM, reason=known.detail)
        result = await self._handle(row)
        if self.notes and result.outcome.is_problem:
            result = replace(result, note=note_for(row, result))
        return result

    async def _handle(self, row: MediaRow) -> RowResult:
        md5 = normalize_md5(row.md5_sum)
        if md5 is None:
            return RowResult(
                row.media_id,
                Outcome.INVALID,
                reason=f"md5_sum {row.md5_sum!r} is not 32 hex digits",
            )
        prepared = await asyncio.to_thread(self.prepare, row, md5)
        if isinstance(prepared, RowResult):
            return prepared
        if prepared.body_md5 is not None and prepared.body_md5 != md5:
            return self._corrupt(prepared, prepared.body_md5)
        if self.options.dry_run or self.store is None:
            return self._result(prepared, Outcome.WOULD_UPLOAD)
        return await self._store_once(prepared)

    async def _store_once(self, prep: Prepared) -> RowResult:
        # Rows sharing a key in one run cause one upload: later ones wait for the first,
        # and try themselves only if it did not store the object.
        while True:
            if prep.key in self._done:
                return self._result(prep, Outcome.SKIPPED_EXISTING)
            leader = self._inflight.get(prep.key)
            if leader is None:
                break
            first = await asyncio.shield(leader)
            if first.outcome.recordable:
                return self._result(prep, Outcome.SKIPPED_EXISTING)
        future: asyncio.Future[RowResult] = asyncio.get_running_loop().create_future()
        self._inflight[prep.key] = future
        result = RowResult(prep.row.media_id, Outcome.FAILED, key=prep.key, reason="abandoned")
        try:
            result = await self._store(prep)
        finally:
            del self._inflight[prep.key]
            future.set_result(result)
        if result.outcome.recordable:
            self._done[prep.key] = None
            if len(self._done) > DONE_KEYS_REMEMBERED:
                self._done.popitem(last=False)
        return result

    async def _store(self, prep: Prepared) -> RowResult:
        deadline_s = DEADLINE_BASE_S + prep.size / DEADLINE_SLOWEST_BYTES_PER_S
        sent = Sent()
        try:
            async with asyncio.timeout(deadline_s):
                return await self._store_in_time(prep, sent)
        except TimeoutError:
            return self._result(
                prep, Outcome.FAILED, reason=f"not stored within {deadline_s:.0f} s", sent=sent
            )

    def _read_into(self, path: Path, view: memoryview) -> str:
        """Fill `view` from the file (its first bytes, if it grew since it was found); the
        MD5 of what was read."""
        with self.cache.open_file(path) as f:
            got = f.pread_into(view, 0)
        return hashlib.md5(view[:got]).hexdigest()

    def _read(self, path: Path) -> tuple[bytes, str]:
        with self.cache.open_file(path) as f:
            body = f.read_all()
        return body, hashlib.md5(body).hexdigest()

    async def _store_in_time(self, prep: Prepared, sent: Sent) -> RowResult:
        try:
            if prep.size > self.options.multipart_threshold:
                return await self._store_multipart(prep, sent)
            if prep.body is not None:
                return await self._store_single(prep, prep.body, prep.body_md5 or "", sent)
            async with self.budget.hold(prep.size):
                view = self.buffers.take(prep.size)
                try:
                    body_md5 = await asyncio.to_thread(self._read_into, prep.path, view)
                    if body_md5 != prep.md5:
                        return self._corrupt(prep, body_md5)
                    return await self._store_single(prep, view, body_md5, sent)
                finally:
                    self.buffers.give(view)
        except AccessDenied as exc:
            # Every key is under the same prefix and policy: one denial dooms every row.
            raise StorageUnavailable(str(exc)) from exc
        except StorageError as exc:
            return self._result(prep, Outcome.FAILED, reason=str(exc), sent=sent)
        except NotARegularFile as exc:
            return self._result(prep, Outcome.INVALID, reason=str(exc), sent=sent)
        except OSError as exc:
            reason = f"cannot read {prep.path}: {why(exc)}"
            return self._result(prep, Outcome.FAILED, reason=reason, sent=sent)

    async def _head(self, key: str) -> ObjectInfo | Denied | None:
        """The object at `key` (None: no object), or DENIED when S3 refused the HEAD: a
        missing key without s3:ListBucket, or any key without s3:GetObject. Not sent once
        S3 was seen refusing to read an object that exists."""
        assert self.store is not None
        if not self.existence.readable:
            return DENIED
        try:
            return await self.store.head_object(key)
        except AccessDenied:
            self.heads_denied += 1
            return DENIED

    async def _existing_intact(self, prep: Prepared) -> bool | None:
        """HEAD the key: True when the object is there and intact, False when something
        else is there, None when nothing is, or S3 would not say (the PUT decides)."""
        existing = await self._head(prep.key)
        if existing is None or existing is DENIED:
            self.existence.absent()
            return None
        self.existence.present()
        return object_intact(existing, prep.md5, prep.size)

    def access_notes(self) -> list[str]:
        """What the run did differently because the credentials did not allow something."""
        notes: list[str] = []
        if self.store is None:
            return notes
        if not self.existence.readable:
            notes.append(
                "S3 refused to read back objects that exist (HeadObject needs s3:GetObject): "
                "an object already stored was sent again, without If-None-Match, and its row "
                "recorded only on the ETag S3 returned for the bytes sent"
            )
        elif self.heads_denied and self.store.versioned:
            notes.append(
                f"the bucket keeps versions, where a server may ignore If-None-Match (Ceph "
                f"RGW does), so each key is HEADed before its PUT; S3 refused "
                f"{self.heads_denied:,} of those HEADs (they need s3:GetObject on the prefix, "
                "and s3:ListBucket to tell a missing key): those files were sent without "
                "knowing whether they were stored (a new version where one was)"
            )
        if "s3:AbortMultipartUpload" in self.store.refused:
            notes.append(
                "S3 refused AbortMultipartUpload (s3:AbortMultipartUpload): the parts of an "
                "unfinished multipart upload are left to the bucket's lifecycle rule "
                "(setup-bucket's AbortIncompleteMultipartUpload) to remove"
            )
        return notes

    async def _put(
        self,
        prep: Prepared,
        body: bytes | memoryview,
        sent: Sent,
        *,
        if_absent: bool,
        crc32: str | None,
    ) -> Put | None:
        assert self.store is not None
        if self.throttle is not None:
            await self.throttle.take(len(body))
        put = await self.store.put_object(
            prep.key, body, prep.md5, prep.content_type, if_absent=if_absent, crc32=crc32
        )
        if put is not None:
            sent.bytes += len(body)
        return put

    def _unproved(self, put: Put, body_md5: str, crc32: str | None) -> str | None:
        """Why S3's answer does not prove it stored the bytes sent, or None when it does:
        the CRC32 sent echoed (S3 checks it against the bytes), else the ETag being their
        MD5. StorageUnavailable when the bucket's encryption hides the MD5 and the server
        echoes no checksum: no upload into it can be proved, so none is tried again."""
        assert self.store is not None
        if crc32 is not None:
            if put.crc32 is None:
                raise StorageUnavailable(
                    encrypted_without_checksums(self.store.bucket, self.store.encryption)
                )
            return (
                None
                if put.crc32 == crc32
                else f"S3 returned checksum {put.crc32!r}, expected {crc32}"
            )
        return (
            None if put.etag == body_md5 else f"S3 returned ETag {put.etag!r}, expected {body_md5}"
        )

    async def _conditional(self, prep: Prepared) -> bool | None:
        """Whether the PUT is conditional (If-None-Match), or None when a HEAD found the
        object intact already."""
        assert self.store is not None
        if self.store.versioned and self.existence.conditional_writes:
            # A versioned bucket may take a conditional PUT of a stored key as a new version
            # (Ceph RGW 16 does): only a HEAD tells there.
            log.info("the bucket keeps versions: a HEAD before every PUT, no If-None-Match")
            self.existence.no_conditional_writes()
        conditional = not self.options.force
        if conditional and self.existence.head_first:
            intact = await self._existing_intact(prep)
            if intact:
                return None
            conditional = intact is None  # a damaged object is replaced
        return conditional and self.existence.conditional_writes

    async def _store_single(
        self, prep: Prepared, body: bytes | memoryview, body_md5: str, sent: Sent
    ) -> RowResult:
        assert self.store is not None
        conditional = await self._conditional(prep)
        if conditional is None:
            return self._result(prep, Outcome.SKIPPED_EXISTING)
        crc32 = crc32_b64(body) if self.store.encryption else None
        try:
            put = await self._put(prep, body, sent, if_absent=conditional, crc32=crc32)
        except ConditionalWritesUnsupported:
            self.existence.no_conditional_writes()
            put = await self._put(prep, body, sent, if_absent=False, crc32=crc32)
        resent = False
        if put is None:  # 412: the key exists (stored meanwhile, or a HEAD could not tell)
            self.existence.present()
            existing = await self._head(prep.key)
            if existing is DENIED:
                # It cannot be read back (no s3:GetObject): sent again, unconditionally,
                # and only what S3 answers for those bytes can prove it.
                self.existence.unreadable()
                resent = True
            elif object_intact(existing, prep.md5, prep.size):
                return self._result(prep, Outcome.SKIPPED_EXISTING)
            # (a different object under an MD5-named key is damaged: it is replaced below)
        for _ in range(INTEGRITY_ATTEMPTS):
            if put is not None and put.encryption and crc32 is None:
                # The bucket encrypts with SSE-KMS (its default could not be read): the ETag
                # is no MD5, so this PUT and every later one carry a checksum instead.
                log.info("the bucket encrypts with %s: PUTs carry CRC32s", put.encryption)
                self.store.encryption = put.encryption
                crc32 = crc32_b64(body)
            elif put is not None:
                problem = self._unproved(put, body_md5, crc32)
                if problem is None:
                    return self._result(prep, Outcome.UPLOADED, sent=sent, resent=resent)
                # Stored, but not what was sent (damaged in transit): send it again.
                log.warning("%s: %s", prep.key, problem)
            put = await self._put(prep, body, sent, if_absent=False, crc32=crc32)
        assert put is not None
        problem = self._unproved(put, body_md5, crc32)
        if problem is None:
            return self._result(prep, Outcome.UPLOADED, sent=sent, resent=resent)
        return self._result(prep, Outcome.FAILED, reason=problem, sent=sent)

    async def _store_multipart(self, prep: Prepared, sent: Sent) -> RowResult:
        """No byte is sent before the file is proved to hash to md5_sum. A file that fits
        the byte budget (64 MiB at the defaults) is read once, into reused buffers, and
        sent from them; a larger one is read twice (hashed a chunk at a time, then sent a
        part at a time, each part's CRC32 compared with the first read's). Each part
        carries its own check: a CRC32 where the server checks it (a byte is then hashed
        with MD5 once), else Content-MD5, its ETag compared."""
        assert self.store is not None
        force = self.options.force
        if not force:
            # Always one HEAD before reading and sending hundreds of megabytes again.
            intact = await self._existing_intact(prep)
            if intact:
                return self._result(prep, Outcome.SKIPPED_EXISTING)
            force = intact is False or not self.existence.conditional_writes
        f = await asyncio.to_thread(self.cache.open_file, prep.path)
        try:
            part_size = part_size_for(f.size, self.options.part_size)
            if f.size <= self.budget.capacity:
                return await self._multipart_held(prep, f, part_size, sent, force=force)
            return await self._multipart_streamed(prep, f, part_size, sent, force=force)
        finally:
            f.close()

    async def _part_mode(self) -> PartMode:
        """What parts carry: CRC32s where the server checks them (asked once per run), with
        Content-MD5 too over plain http; Content-MD5 alone elsewhere. StorageUnavailable
        where the bucket's encryption makes part ETags no MD5 and the server checks no
        CRC32: no part could be proved."""
        assert self.store is not None
        probe_key = f"{self.settings.key_prefix}/archiver-probe-{uuid.uuid4().hex}"
        crc32 = await self.store.checks_part_checksums(probe_key)
        if self.store.encryption and not crc32:
            raise StorageUnavailable(
                encrypted_without_checksums(self.store.bucket, self.store.encryption)
            )
        return PartMode(crc32=crc32, md5=not crc32 or self.store.plain_http)

    async def _multipart_held(
        self, prep: Prepared, f: LocalFile, part_size: int, sent: Sent, *, force: bool
    ) -> RowResult:
        taken = await self.budget.acquire(f.size)
        views: list[memoryview] = []
        try:
            views += (
                self.buffers.take(min(part_size, f.size - o)) for o in range(0, f.size, part_size)
            )
            digest = await asyncio.to_thread(read_held, f, views)
            if digest != prep.md5:
                return self._corrupt(prep, digest)
            mode = await self._part_mode()
            checks = await asyncio.to_thread(lambda: [part_check(v, mode) for v in views])

            async def send(upload_id: str) -> list[StoredPart]:
                errors: list[Exception] = []
                stored: dict[int, StoredPart] = {}
                async with asyncio.TaskGroup() as tg:
                    for number, (view, check) in enumerate(zip(views, checks, strict=True), 1):
                        tg.create_task(
                            self._send_part(
                                prep, upload_id, number, view, check, sent, stored, errors
                            )
                        )
                if errors:
                    raise errors[0]
                return [stored[n] for n in sorted(stored)]

            return await self._multipart(prep, f.size, sent, send, force=force, mode=mode)
        finally:
            for view in views:
                self.buffers.give(view)
            await self.budget.release(taken)

    async def _multipart_streamed(
        self, prep: Prepared, f: LocalFile, part_size: int, sent: Sent, *, force: bool
    ) -> RowResult:
        digest, crcs = await asyncio.to_thread(hash_streamed, f, part_size)
        if digest != prep.md5:
            return self._corrupt(prep, digest)
        mode = await self._part_mode()

        async def send(upload_id: str) -> list[StoredPart]:
            errors: list[Exception] = []
            stored: dict[int, StoredPart] = {}
            second_read = hashlib.md5()

            async def one(number: int, view: memoryview, check: PartCheck, taken: int) -> None:
                try:
                    await self._send_part(
                        prep, upload_id, number, view, check, sent, stored, errors
                    )
                finally:
                    self.buffers.give(view)
                    await self.budget.release(taken)

            async with asyncio.TaskGroup() as tg:
                for number, offset in enumerate(range(0, f.size, part_size), start=1):
                    length = min(part_size, f.size - offset)
                    taken = await self.budget.acquire(length)
                    if errors:
                        await self.budget.release(taken)
                        break
                    view = self.buffers.take(length)
                    try:
                        check = await asyncio.to_thread(
                            reread_part, f, view, offset, crcs[number - 1], mode, second_read
                        )
                    except (ArchiverError, OSError) as exc:
                        self.buffers.give(view)
                        await self.budget.release(taken)
                        errors.append(exc)
                        break
                    tg.create_task(one(number, view, check, taken), name=f"part-{number}")
                    del view
            if errors:
                raise errors[0]
            if second_read.hexdigest() != prep.md5:  # the upload is aborted, not completed
                raise StorageError(
                    f"the file changed between its two reads: the bytes sent hash to "
                    f"{second_read.hexdigest()}, not md5_sum {prep.md5}"
                )
            return [stored[n] for n in sorted(stored)]

        return await self._multipart(prep, f.size, sent, send, force=force, mode=mode)

    async def _send_part(
        self,
        prep: Prepared,
        upload_id: str,
        number: int,
        data: memoryview,
        check: PartCheck,
        sent: Sent,
        stored: dict[int, StoredPart],
        errors: list[Exception],
    ) -> None:
        """Upload one part until S3 answers with its check (the CRC32 it checked, or the
        part's MD5 as ETag); a failure goes to `errors`, which stops the sending."""
        assert self.store is not None
        try:
            for _ in range(INTEGRITY_ATTEMPTS):
                if self.throttle is not None:
                    await self.throttle.take(len(data))
                part = await self.store.upload_part(
                    prep.key, upload_id, number, data, md5_hex=check.md5, crc32=check.crc32
                )
                sent.bytes += len(data)
                if check.answered(part) == check.expected:
                    break
            if check.answered(part) != check.expected:
                what = "checksum" if check.crc32 is not None else "ETag"
                raise StorageError(
                    f"part {number}: S3 returned {what} {check.answered(part)!r}, "
                    f"expected {check.expected}"
                )
            # The mode decides which check the completed object answers with.
            stored[number] = StoredPart(number, part.etag, check.crc32)
        except (ArchiverError, OSError) as exc:
            errors.append(exc)

    async def _multipart(
        self,
        prep: Prepared,
        size: int,
        sent: Sent,
        send: Callable[[str], Awaitable[list[StoredPart]]],
        *,
        force: bool,
        mode: PartMode,
    ) -> RowResult:
        """Start a multipart upload, `send` its parts, complete it and check the result;
        aborted on any failure, so no parts are left behind."""
        assert self.store is not None
        upload_id = await self.store.create_multipart(
            prep.key, prep.content_type, {METADATA_MD5: prep.md5}, crc32=mode.crc32
        )
        resent = False
        existing: ObjectInfo | Denied | None = None  # what a HEAD found after a 412
        try:
            parts = await send(upload_id)
            completed = await self.store.complete_multipart(
                prep.key, upload_id, parts, if_absent=not force
            )
            if completed is None:  # the key exists: completed meanwhile, or not readable
                existing = await self._head(prep.key)
                if existing is DENIED:
                    # It cannot be read back (no s3:GetObject): the same parts, completed
                    # unconditionally, and proved by what S3 answers.
                    self.existence.unreadable()
                    resent = True
                    completed = await self.store.complete_multipart(
                        prep.key, upload_id, parts, if_absent=False
                    )
        except BaseException:
            await asyncio.shield(self.store.abort_multipart(prep.key, upload_id))
            raise
        if completed is None:  # another process completed the same key meanwhile
            await self.store.abort_multipart(prep.key, upload_id)
            if isinstance(existing, ObjectInfo) and object_intact(existing, prep.md5, size):
                return self._result(prep, Outcome.SKIPPED_EXISTING, sent=sent)
            return self._result(
                prep, Outcome.FAILED, reason="a different object appeared", sent=sent
            )
        problem = await self._completed_problem(prep, size, parts, completed)
        if problem is not None:
            return self._result(prep, Outcome.FAILED, reason=problem, sent=sent)
        return self._result(prep, Outcome.UPLOADED, sent=sent, resent=resent)

    async def _completed_problem(
        self, prep: Prepared, size: int, parts: Sequence[StoredPart], completed: Completed
    ) -> str | None:
        """Why the completed object is not shown to be the parts sent, or None when it is:
        by the checksum of the parts' CRC32s, or by the ETag (the MD5 of their MD5s)."""
        assert self.store is not None
        expected_etag: str | None = None
        if parts and parts[0].crc32 is not None:
            expected = composite_crc32([p.crc32 or "" for p in parts])
            if completed.crc32 and completed.crc32.split("-")[0] == expected.split("-")[0]:
                return None  # (some servers leave the part count off)
            if completed.crc32:
                return f"S3 returned checksum {completed.crc32!r}, expected {expected}"
        else:
            expected_etag = multipart_etag([bytes.fromhex(p.etag) for p in parts])
            if completed.etag:
                if completed.etag == expected_etag:
                    return None
                return f"S3 returned ETag {completed.etag!r}, expected {expected_etag}"
        # Some servers (Ceph RGW 16) complete the upload but return no ETag (or checksum):
        # the stored object decides, by the integrity rule (and its ETag, when known).
        existing = await self._head(prep.key)
        if existing is DENIED:
            return (
                "S3 completed the upload without an ETag, and the object cannot be read back "
                "to prove it: HeadObject needs s3:GetObject"
            )
        problem = mismatch(existing, prep.md5, size)
        if existing is not None and expected_etag and existing.etag != expected_etag:
            problem = f"ETag {existing.etag} differs from {expected_etag}"
        if problem is None:
            return None
        return f"S3 completed the upload without an ETag, and the stored object: {problem}"

    # -- results ------------------------------------------------------------------------

    def _result(
        self,
        prep: Prepared,
        outcome: Outcome,
        *,
        reason: str = "",
        sent: Sent | None = None,
        resent: bool = False,
    ) -> RowResult:
        return RowResult(
            prep.row.media_id,
            outcome,
            key=prep.key,
            url=prep.url if outcome.recordable or outcome is Outcome.WOULD_UPLOAD else None,
            reason=reason,
            bytes_sent=sent.bytes if sent is not None else 0,
            size=prep.size,
            path=str(prep.path),
            file_state=prep.file_state,
            resent=resent,
        )

    def _corrupt(self, prep: Prepared, actual: str) -> RowResult:
        return self._result(
            prep, Outcome.CORRUPT, reason=f"content MD5 {actual} differs from md5_sum {prep.md5}"
        )


class Reporter(Protocol):
    """Where progress goes (see progress.py)."""

    @property
    def wants_total(self) -> bool: ...

    def start(self, total: int) -> None: ...

    def result(self, result: RowResult) -> None: ...

    def close(self, *, completed: bool = True) -> None: ...


async def run_upload(
    settings: Settings,
    options: UploadOptions,
    reporter: Reporter,
    *,
    interrupt: Interrupt | None = None,
    cwd: Path | None = None,
    db_retry: RetryPolicy | None = None,
    on_result: Callable[[RowResult], None] | None = None,
) -> Summary:
    """Archive the selected rows; the summary of what happened."""
    started = time.monotonic()
    interrupt = interrupt or Interrupt()
    summary = Summary(dry_run=options.dry_run)
    async with AsyncExitStack() as stack:
        cache = stack.enter_context(open_cache_root(settings))
        db, store = await stack.enter_async_context(
            connected(settings, concurrency=options.concurrency, storage=not options.dry_run)
        )
        if store is not None:
            await _prepare_store(store, options)
        row_filter = RowFilter(
            archived=None if options.force else False,
            media_types=options.media_types,
            media_ids=options.media_ids,
            created_since=options.created_since,
            created_before=options.created_until,
        )
        total = await _total(db, row_filter, reporter, options.limit)
        retry = db_retry or RetryPolicy()
        # Claims and problem notes need their tables; a dry run writes nothing.
        tables = not options.dry_run and await db.ensure_tables()
        ledger: Ledger | None = None
        if not (options.retry_problems or options.media_ids):  # named rows are always tried
            ledger = await Ledger.open(db, retry)
        uploader = Uploader(
            settings,
            options,
            store,
            cache=cache,
            cwd=cwd or Path.cwd(),
            ledger=ledger,
            notes=tables,
        )
        rows, claims = _row_source(db, options, row_filter, ledger, retry, claimed=tables)
        owner = claims.owner if claims else None
        handled: set[str] = set()

        def collect(result: RowResult) -> None:
            summary.add(result)
            reporter.result(result)
            if claims is not None:
                claims.finished(result.media_id)
            if options.media_ids:
                handled.add(result.media_id)
            if on_result is not None:
                on_result(result)

        async def record(results: Sequence[RowResult]) -> int:
            pairs = [(r.media_id, r.url) for r in results if r.outcome.recordable and r.url]
            notes = [r.note for r in results if r.note is not None]
            return await db.record(pairs, force=options.force, owner=owner, problems=notes)

        pipeline = Pipeline(
            handle=uploader.handle,
            record=record,
            concurrency=options.concurrency,
            batch=BatchPolicy(options.batch_size, options.flush_interval_s),
            on_result=collect,
            stop=interrupt.stop,
            background=[claims.keep] if claims else [],
            db_retry=retry,
        )
        interrupt.on_abandon(pipeline.abandon)
        reporter.start(total)
        completed = False
        try:
            await pipeline.run(rows)
            completed = True
        except ArchiverError as exc:
            # Stopped early (the database gone for good, the bucket gone): what was done is
            # still reported, with the confirmed uploads the database never took.
            summary.error = str(exc)
            summary.error_exit_code = exc.exit_code
        finally:
            interrupt.forget(pipeline.abandon)
            reporter.close(completed=completed)
            if claims is not None:
                await asyncio.shield(claims.release())
            summary.db_updated = pipeline.stats.db_updated
            summary.db_writes = pipeline.stats.statements
            summary.unrecorded = pipeline.stats.unrecorded
            summary.interrupted = interrupt.triggered
            summary.elapsed_s = time.monotonic() - started
            summary.notes = uploader.access_notes()
        if claims is not None and not summary.error:
            summary.holders = await claims.elsewhere()
        unhandled = sorted(set(options.media_ids) - handled)
        if unhandled and not (summary.error or interrupt.triggered):
            summary.not_selected = await _not_selected(db, unhandled, owner)
    return summary


async def _prepare_store(store: Storage, options: UploadOptions) -> None:
    """What the run's PUTs need to know of the bucket and the options."""
    store.storage_class = options.storage_class
    await store.learn_encryption()
    if not options.force:
        await store.learn_versioning()


async def _total(db: Database, row_filter: RowFilter, reporter: Reporter, limit: int | None) -> int:
    """The rows a progress display counts towards; no display, no count(*) round trip."""
    return await db.count_rows(row_filter, limit=limit) if reporter.wants_total else 0


def _row_source(
    db: Database,
    options: UploadOptions,
    row_filter: RowFilter,
    ledger: Ledger | None,
    retry: RetryPolicy,
    *,
    claimed: bool,
) -> tuple[AsyncIterator[MediaRow], Claims | None]:
    """The rows to handle: claimed a page at a time when the tables are there, else paged
    unclaimed (a dry run, or no right to create them)."""
    on_page = ledger.load if ledger is not None else None
    if claimed:
        claims = Claims(db, row_filter, lease_s=options.lease_s, retry=retry)
        # Claims run only a little ahead of the work, so that processes share the backlog.
        page_rows = min(PAGE_ROWS, max(CLAIM_ROWS_MIN, 4 * options.concurrency))
        return claims.rows(limit=options.limit, page_rows=page_rows, on_page=on_page), claims
    rows = db.rows(row_filter, limit=options.limit, page_rows=PAGE_ROWS, on_page=on_page)
    return rows, None


async def _not_selected(db: Database, media_ids: Sequence[str], owner: str | None) -> list[Problem]:
    """Why each of the rows named by --media-id was not handled."""
    states = await db.row_states(media_ids, owner)
    problems = []
    for media_id in media_ids:
        state = states.get(media_id)
        if state is None:
            problems.append(Problem(media_id, "no_such_row", "no such row"))
        elif state.archived:
            why = "already archived (--force uploads it again)"
            problems.append(Problem(media_id, "already_archived", why))
        elif state.held:
            problems.append(Problem(media_id, "claimed_elsewhere", "held by another process"))
        else:
            why = "not selected (--media-type or --limit)"
            problems.append(Problem(media_id, "not_selected", why))
    return problems
