"""The uploader: what one row means, from its columns to a stored object proved intact.

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
import hashlib
import logging
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

from archiver.budget import BufferPool, ByteBudget, Throttle
from archiver.checksums import crc32_b64, crc32_b64_of, encrypted_without_checksums
from archiver.content_types import SNIFF_BYTES, choose_ext, content_type_for, needs_sniffing
from archiver.errors import (
    AccessDenied,
    ConditionalWritesUnsupported,
    NotARegularFile,
    StorageError,
    StorageUnavailable,
)
from archiver.integrity import object_intact
from archiver.keys import archive_url, as_utc, normalize_md5, object_key
from archiver.ledger import FileState, Ledger, note_for, set_aside
from archiver.localfs import CacheRoot, LocalFile, PutBody, body_size, why
from archiver.models import (
    DENIED,
    MediaRow,
    Outcome,
    Prepared,
    Put,
    RowResult,
    Sent,
)
from archiver.multipart import INTEGRITY_ATTEMPTS, MultipartUploads, ObjectStore
from archiver.policies import ExistencePolicy
from archiver.resolve import Found, NotFound, Resolution, resolver_for
from archiver.settings import MIB, Settings, UploadOptions

log = logging.getLogger(__name__)

INLINE_READ_MAX_BYTES = 1 * MIB  # read with the lookup, in the same thread hop
# Per-upload deadline: a base plus the time the file takes at a slow 256 KiB/s.
DEADLINE_BASE_S = 120.0
DEADLINE_SLOWEST_BYTES_PER_S = 256 * 1024
DONE_KEYS_REMEMBERED = 100_000  # keys stored this run, to skip later rows sharing them


async def crc32_of(body: PutBody) -> str:
    """The CRC32 (base64) S3 is sent with a PUT into an SSE-KMS bucket (a file is read
    again for it, in a worker thread: that is the rare case)."""
    if isinstance(body, LocalFile):
        _, crc = await asyncio.to_thread(body.digests, crc32=True)
        return crc32_b64_of(crc or 0)
    return crc32_b64(body)


def _state(found: Resolution) -> FileState:
    """What a problem record keeps of the file a row resolved to: size, mtime and ctime."""
    return (found.size, found.mtime, found.ctime) if isinstance(found, Found) else None


class Uploader(MultipartUploads):
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
        record_problems: bool = False,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.record_problems = record_problems  # archiver_problems is there to keep them
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
        # What `settle` found of the rows of the last two pages it saw, for `handle` (a row
        # is looked up again only if it changed since, or its page is older than that).
        self._found: dict[str, tuple[MediaRow, Found]] = {}
        self._found_before: dict[str, tuple[MediaRow, Found]] = {}

    # -- a page of rows, in one thread hop --------------------------------------------------

    async def settle(self, rows: list[MediaRow]) -> list[MediaRow | RowResult]:
        """Decide at once what a page of rows needs no work for (the pager's `settle`): a
        row whose file is missing, or a known problem set aside, becomes its RowResult;
        the files of the others are looked up, for `handle`. One thread hop per page."""
        if self.ledger is not None:
            await self.ledger.load(rows)
        return await asyncio.to_thread(self._settle, rows)

    def _settle(self, rows: list[MediaRow]) -> list[MediaRow | RowResult]:
        found_now: dict[str, tuple[MediaRow, Found]] = {}
        items: list[MediaRow | RowResult] = []
        for row in rows:
            md5 = normalize_md5(row.md5_sum)
            if md5 is None or row.created_at_bad is not None:
                items.append(row)  # invalid: `handle` says why (and may set it aside)
                continue
            found = self.resolver.resolve(row, md5)
            known = self.ledger.take(row.media_id) if self.ledger is not None else None
            if known is not None and set_aside(known, row, _state(found)):
                items.append(RowResult(row.media_id, Outcome.KNOWN_PROBLEM, reason=known.detail))
            elif isinstance(found, NotFound):
                items.append(RowResult(row.media_id, Outcome.MISSING_LOCAL, reason=found.reason))
            else:
                if isinstance(found, Found):
                    found_now[row.media_id] = (row, found)
                items.append(row)
        self._found_before, self._found = self._found, found_now
        return items

    def _looked_up(self, row: MediaRow, md5: str) -> Resolution:
        """The row's file: as `settle` found it, unless the row changed since."""
        for found in (self._found, self._found_before):
            seen = found.pop(row.media_id, None)
            if seen is not None and seen[0] == row:
                return seen[1]
        return self.resolver.resolve(row, md5)

    # -- the lookup, in a worker thread ------------------------------------------------

    def file_state(self, row: MediaRow) -> FileState:
        """(size, mtime, ctime) of the file the row resolves to, None when none (blocking)."""
        md5 = normalize_md5(row.md5_sum)
        return _state(self.resolver.resolve(row, md5)) if md5 is not None else None

    def prepare(self, row: MediaRow, md5: str) -> Prepared | RowResult:
        """Find, stat, maybe read the row's file and derive its key (blocking I/O)."""
        found = self._looked_up(row, md5)
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
        if self.record_problems and result.outcome.is_problem:
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
            if prep.size > self.options.part_size:
                return await self._store_streamed(prep, sent)
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

    async def _store_streamed(self, prep: Prepared, sent: Sent) -> RowResult:
        """A file too large for a buffer but under the multipart threshold: hashed once, a
        chunk at a time (MD5, and CRC32 where the bucket's encryption needs it), then sent
        as one PUT streamed from the file, with that MD5 as Content-MD5 (S3 refuses bytes
        that do not match it). It is never held whole in memory."""
        assert self.store is not None
        encrypted = self.store.encryption is not None
        f = await asyncio.to_thread(self.cache.open_file, prep.path)
        try:
            body_md5, crc = await asyncio.to_thread(f.digests, crc32=encrypted)
            if body_md5 != prep.md5:
                return self._corrupt(prep, body_md5)
            body_crc32 = crc32_b64_of(crc) if crc is not None else None
            return await self._store_single(prep, f, body_md5, sent, body_crc32=body_crc32)
        finally:
            f.close()

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
        body: PutBody,
        sent: Sent,
        *,
        if_absent: bool,
        crc32: str | None,
    ) -> Put | None:
        assert self.store is not None
        if self.throttle is not None:
            await self.throttle.take(body_size(body))
        put = await self.store.put_object(
            prep.key, body, prep.md5, prep.content_type, if_absent=if_absent, crc32=crc32
        )
        if put is not None:
            sent.bytes += body_size(body)
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
        self,
        prep: Prepared,
        body: PutBody,
        body_md5: str,
        sent: Sent,
        *,
        body_crc32: str | None = None,
    ) -> RowResult:
        assert self.store is not None
        conditional = await self._conditional(prep)
        if conditional is None:
            return self._result(prep, Outcome.SKIPPED_EXISTING)
        crc32 = (body_crc32 or await crc32_of(body)) if self.store.encryption else None
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
                crc32 = await crc32_of(body)
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
