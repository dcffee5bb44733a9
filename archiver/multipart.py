"""Multipart uploads: a large file sent in parts, each part proved, the completed object
proved to be exactly those parts (by the checksum of their CRC32s, or by the ETag, the MD5
of their MD5s); aborted on any failure, so no parts are left behind.

A file that fits the byte budget is read once, into reused buffers, and sent from them; a
larger one is read twice: hashed a chunk at a time (no byte is sent before the file is
proved), then sent a part at a time, each part's CRC32 compared with the first read's and
the second read's MD5 with md5_sum before the upload is completed. Both go through one
part-sending path (`_send_parts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
import zlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from archiver.budget import BufferPool, ByteBudget, Throttle
from archiver.checksums import composite_crc32, crc32_b64, encrypted_without_checksums
from archiver.errors import (
    AccessDenied,
    ArchiverError,
    StorageError,
    StorageUnavailable,
)
from archiver.integrity import METADATA_MD5, mismatch, object_intact
from archiver.localfs import READ_CHUNK_BYTES, CacheRoot, LocalFile, PutBody
from archiver.models import (
    DENIED,
    Completed,
    Denied,
    ObjectInfo,
    Outcome,
    Prepared,
    Put,
    RowResult,
    Sent,
    StoredPart,
)
from archiver.policies import ExistencePolicy
from archiver.settings import MAX_PARTS, MIB, Settings, UploadOptions

log = logging.getLogger(__name__)

INTEGRITY_ATTEMPTS = 3  # sends of one body whose stored ETag (or checksum) came back wrong


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
        body: PutBody,
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


def multipart_etag(part_digests: Sequence[bytes]) -> str:
    """The ETag S3 gives a multipart object: MD5 of the parts' MD5s, dash, part count."""
    return f"{hashlib.md5(b''.join(part_digests)).hexdigest()}-{len(part_digests)}"


def part_size_for(size: int, preferred: int) -> int:
    """`preferred`, grown in whole MiB when the file would need more than 10,000 parts."""
    if size <= preferred * MAX_PARTS:
        return preferred
    needed = -(-size // MAX_PARTS)
    return -(-needed // MIB) * MIB


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


@dataclass(frozen=True, slots=True)
class Part:
    """One part ready to go: its bytes, its check, and what to give back once it is sent."""

    number: int
    data: memoryview
    check: PartCheck
    release: Callable[[], Awaitable[None]]


async def _kept() -> None:
    """A held part's buffer is given back with the others, after the upload."""


class MultipartUploads:
    """The multipart path of the uploader, and what both paths share: the HEAD of an
    existing object, and the row's result. `Uploader` sets these attributes."""

    settings: Settings
    options: UploadOptions
    store: ObjectStore | None
    cache: CacheRoot
    budget: ByteBudget
    buffers: BufferPool
    throttle: Throttle | None
    existence: ExistencePolicy
    heads_denied: int

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

            async def parts(_errors: list[Exception]) -> AsyncGenerator[Part, None]:
                for number, (view, check) in enumerate(zip(views, checks, strict=True), 1):
                    yield Part(number, view, check, _kept)

            async def send(upload_id: str) -> list[StoredPart]:
                return await self._send_parts(prep, upload_id, sent, parts)

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

        second_read = hashlib.md5()

        async def parts(errors: list[Exception]) -> AsyncGenerator[Part, None]:
            for number, offset in enumerate(range(0, f.size, part_size), start=1):
                length = min(part_size, f.size - offset)
                taken = await self.budget.acquire(length)
                if errors:
                    await self.budget.release(taken)
                    return
                view = self.buffers.take(length)
                try:
                    check = await asyncio.to_thread(
                        reread_part, f, view, offset, crcs[number - 1], mode, second_read
                    )
                except (ArchiverError, OSError) as exc:
                    self.buffers.give(view)
                    await self.budget.release(taken)
                    errors.append(exc)
                    return
                yield Part(number, view, check, self._giving_back(view, taken))
                del view

        async def send(upload_id: str) -> list[StoredPart]:
            stored = await self._send_parts(prep, upload_id, sent, parts)
            if second_read.hexdigest() != prep.md5:  # the upload is aborted, not completed
                raise StorageError(
                    f"the file changed between its two reads: the bytes sent hash to "
                    f"{second_read.hexdigest()}, not md5_sum {prep.md5}"
                )
            return stored

        return await self._multipart(prep, f.size, sent, send, force=force, mode=mode)

    def _giving_back(self, view: memoryview, taken: int) -> Callable[[], Awaitable[None]]:
        """What a part read for sending gives back once sent: its buffer and its bytes of
        the budget."""

        async def release() -> None:
            self.buffers.give(view)
            await self.budget.release(taken)

        return release

    async def _send_parts(
        self,
        prep: Prepared,
        upload_id: str,
        sent: Sent,
        parts: Callable[[list[Exception]], AsyncGenerator[Part, None]],
    ) -> list[StoredPart]:
        """Send the parts `parts` yields, at once as they come; the first failure stops the
        reading of further parts and is raised once those in flight are done."""
        errors: list[Exception] = []
        stored: dict[int, StoredPart] = {}

        async def one(part: Part) -> None:
            try:
                await self._send_part(
                    prep, upload_id, part.number, part.data, part.check, sent, stored, errors
                )
            finally:
                await part.release()

        async with asyncio.TaskGroup() as tg, contextlib.aclosing(parts(errors)) as stream:
            async for part in stream:
                tg.create_task(one(part), name=f"part-{part.number}")
                if errors:
                    break
        if errors:
            raise errors[0]
        return [stored[n] for n in sorted(stored)]

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
