"""`Uploader`'s decisions, fast, against a fake object store that follows the `ObjectStore`
protocol (the end-to-end tests run the same code against moto through the fault proxy).

Each test reads the requests the uploader made: HEAD first or a conditional PUT, skip an
intact object, replace a damaged one, send again what was damaged in transit, abort a
multipart upload that failed.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from archiver import multipart as upload_module
from archiver.checksums import composite_crc32, crc32_b64
from archiver.errors import (
    AccessDenied,
    ConditionalWritesUnsupported,
    StorageError,
    StorageUnavailable,
)
from archiver.integrity import METADATA_MD5
from archiver.localfs import CacheRoot, LocalFile, PutBody
from archiver.models import Completed, MediaRow, ObjectInfo, Outcome, Put, StoredPart
from archiver.multipart import ObjectStore, multipart_etag
from archiver.resolve import open_cache_root
from archiver.settings import MIB, Settings, UploadOptions
from archiver.uploader import Uploader


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@dataclass
class Stored:
    body: bytes
    etag: str
    metadata: dict[str, str] = field(default_factory=dict)
    encryption: str | None = None


@dataclass
class FakeStore:
    """An in-memory S3 with the behaviours the uploader must cope with, switched on per test."""

    conditional_writes: bool = True  # False: If-None-Match on PUT is "not implemented"
    versioned: bool = False  # the bucket keeps versions (learned at start, or from a PUT)
    ignores_conditions: bool = False  # takes If-None-Match PUTs of stored keys as new versions
    complete_without_etag: bool = False  # CompleteMultipartUpload answers <ETag></ETag>
    complete_other_bytes: bool = False  # ... and stores something else (a broken server)
    damage_next_puts: int = 0  # store the next N single PUT bodies with one byte flipped
    fail_part: int | None = None  # this part number fails
    checks_crc32: bool = False  # refuses a part whose CRC32 does not match (as AWS S3 does)
    crc_mismatch_part: int | None = None  # answers this part with another CRC32
    deny_puts: bool = False
    # Least privilege: without s3:GetObject a HEAD of any key is refused (403); without
    # s3:ListBucket a HEAD of a missing key is (S3 will not say it is missing).
    readable: bool = True
    listable: bool = True
    deny_aborts: bool = False
    refused: set[str] = field(default_factory=set)
    # SSE-KMS as AWS answers it: ETags that are no MD5, the encryption named in every PUT's
    # answer; `echoes_checksums` False: a server without S3's additional checksums.
    kms: bool = False
    echoes_checksums: bool = True
    encryption: str | None = None  # what the uploader learned (or the bucket's default)
    plain_http: bool = False
    bucket: str = "bucket"
    checksums_sent: list[str | None] = field(default_factory=list)  # x-amz-checksum-crc32
    part_headers: list[tuple[str, ...]] = field(default_factory=list)  # each part's checks
    objects: dict[str, Stored] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)  # "HEAD", "PUT", "PUT-if-absent", ...
    streamed: list[str] = field(default_factory=list)  # keys whose PUT body was a file
    uploads: dict[str, dict[int, bytes]] = field(default_factory=dict)
    upload_metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    aborted: list[str] = field(default_factory=list)

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
        self.calls.append("PUT-if-absent" if if_absent else "PUT")
        self.checksums_sent.append(crc32)
        if isinstance(body, LocalFile):  # streamed from the file
            self.streamed.append(key)
            body = body.pread(0, body.size)
        body = bytes(body)  # the uploader reuses its buffers
        if self.deny_puts:
            raise AccessDenied(f"S3 denied s3:PutObject on {key}")
        if if_absent and not self.conditional_writes:
            raise ConditionalWritesUnsupported(key)
        if if_absent and key in self.objects and not self.ignores_conditions:
            return None  # 412
        if self.ignores_conditions:
            self.versioned = True  # the response carried a VersionId
        assert md5(body) == md5_hex  # Content-MD5 matches what is sent
        if self.damage_next_puts:
            self.damage_next_puts -= 1
            body = body[:-1] + bytes([body[-1] ^ 1])
        if crc32 is not None:
            assert crc32_b64(body) == crc32  # else S3 answers BadDigest
        etag = md5(b"kms" + body) if self.kms else md5(body)
        metadata = {METADATA_MD5: md5_hex} if crc32 is not None else {}
        self.objects[key] = Stored(body, etag, metadata, "aws:kms" if self.kms else None)
        echoed = crc32_b64(body) if crc32 is not None and self.echoes_checksums else None
        return Put(etag, echoed, "aws:kms" if self.kms else None)

    async def head_object(self, key: str) -> ObjectInfo | None:
        self.calls.append("HEAD")
        stored = self.objects.get(key)
        if not self.readable or (stored is None and not self.listable):
            raise AccessDenied(f"S3 denied HeadObject of {key}")
        if stored is None:
            return None
        return ObjectInfo(len(stored.body), stored.etag, dict(stored.metadata), stored.encryption)

    async def create_multipart(
        self, key: str, content_type: str, metadata: Mapping[str, str], *, crc32: bool = False
    ) -> str:
        self.calls.append("CREATE-crc32" if crc32 else "CREATE")
        upload_id = f"upload-{len(self.upload_metadata)}"
        self.uploads[upload_id] = {}
        self.upload_metadata[upload_id] = dict(metadata)
        return upload_id

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
        self.calls.append(f"PART-{number}")
        self.part_headers.append(
            tuple(h for h, v in (("content-md5", md5_hex), ("crc32", crc32)) if v is not None)
        )
        body = bytes(body)  # the uploader reuses its buffers
        if number == self.fail_part:
            raise StorageError(f"part {number} failed (injected)")
        if md5_hex is not None:
            assert md5(body) == md5_hex
        if crc32 is not None and self.checks_crc32:
            assert crc32_b64(body) == crc32  # else S3 answers BadDigest
        self.uploads[upload_id][number] = body
        answered = crc32_b64(body) if crc32 is not None and self.checks_crc32 else None
        if number == self.crc_mismatch_part:
            answered = crc32_b64(b"other")
        return StoredPart(number, md5(body), answered)

    async def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[StoredPart], *, if_absent: bool
    ) -> Completed | None:
        self.calls.append("COMPLETE-if-absent" if if_absent else "COMPLETE")
        if if_absent and key in self.objects:
            return None
        bodies = self.uploads.pop(upload_id)
        etag = multipart_etag([bytes.fromhex(md5(bodies[p.number])) for p in parts])
        body = b"".join(bodies[p.number] for p in parts)
        checksum = None
        if all(p.crc32 for p in parts):
            checksum = composite_crc32([crc32_b64(bodies[p.number]) for p in parts])
        if self.complete_other_bytes:
            body = body[:-1] + bytes([body[-1] ^ 1])
            etag = multipart_etag([bytes.fromhex(md5(body))] * len(parts))
        self.objects[key] = Stored(body, etag, self.upload_metadata[upload_id])
        if self.complete_without_etag:
            return Completed("")
        return Completed(etag, checksum)

    async def checks_part_checksums(self, probe_key: str) -> bool:
        self.calls.append("PROBE")
        return self.checks_crc32

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        self.calls.append("ABORT")
        if self.deny_aborts:
            self.refused.add("s3:AbortMultipartUpload")
            return
        self.aborted.append(upload_id)
        self.uploads.pop(upload_id, None)


def _conforms(store: FakeStore) -> ObjectStore:
    return store  # mypy checks that the fake follows the protocol


@dataclass
class Rig:
    root: Path
    cache: CacheRoot
    store: FakeStore
    settings: Settings
    n: int = 0

    def row(self, data: bytes, *, md5_sum: str | None = None) -> MediaRow:
        """A row whose file holds `data` (its md5_sum that of `data` unless given)."""
        self.n += 1
        (self.root / "images" / f"{md5_sum or md5(data)}.jpg").write_bytes(data)
        return MediaRow(
            f"m{self.n:03d}",
            "image",
            None,
            md5_sum or md5(data),
            "image/jpeg",
            datetime(2025, 5, 1),
        )

    def uploader(self, **options: object) -> Uploader:
        opts = UploadOptions(**options)  # type: ignore[arg-type]
        return Uploader(self.settings, opts, self.store, cache=self.cache, cwd=self.root)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    root = tmp_path / "cache" / "media"
    (root / "images").mkdir(parents=True)
    settings = Settings(cache_root=root)
    with open_cache_root(settings) as cache:
        yield Rig(root, cache, FakeStore(), settings)


def body(i: int, size: int = 1000) -> bytes:
    return bytes([i % 251]) * (size - 8) + i.to_bytes(8, "big")


# -- single PUT ----------------------------------------------------------------------------


async def test_head_first_until_misses_then_conditional_puts(rig: Rig) -> None:
    up = rig.uploader(concurrency=1)  # switches after 2 HEADs in a row find nothing
    for i in range(4):
        assert (await up.handle(rig.row(body(i)))).outcome is Outcome.UPLOADED
    assert rig.store.calls == [
        "HEAD",
        "PUT-if-absent",
        "HEAD",
        "PUT-if-absent",
        "PUT-if-absent",  # no HEAD: one request per new file
        "PUT-if-absent",
    ]
    assert len(rig.store.objects) == 4


async def test_an_intact_object_is_recorded_without_sending_it(rig: Rig) -> None:
    up = rig.uploader()
    row = rig.row(body(1))
    first = await up.handle(row)
    rig.store.calls.clear()
    again = await rig.uploader().handle(row)  # a new run
    assert again.outcome is Outcome.SKIPPED_EXISTING and again.url == first.url
    assert again.bytes_sent == 0
    assert rig.store.calls == ["HEAD"]


async def test_a_damaged_object_under_the_key_is_replaced(rig: Rig) -> None:
    data = body(2)
    row = rig.row(data)
    key = (await rig.uploader().handle(row)).key
    assert key is not None
    rig.store.objects[key] = Stored(b"x" * len(data), md5(b"x" * len(data)))  # same size
    rig.store.calls.clear()
    result = await rig.uploader().handle(row)
    assert result.outcome is Outcome.UPLOADED
    assert rig.store.calls == ["HEAD", "PUT"]  # unconditional: the key is ours to fix
    assert rig.store.objects[key].body == data


async def test_a_refused_conditional_put_is_judged_by_a_head(rig: Rig) -> None:
    up = rig.uploader(concurrency=1)
    for i in range(2):  # two misses: conditional PUTs from now on
        await up.handle(rig.row(body(i)))
    intact, damaged = body(10), body(11)
    intact_row, damaged_row = rig.row(intact), rig.row(damaged)
    # Another process stores both keys meanwhile: one intact, one with other bytes.
    probe = rig.uploader(dry_run=True)
    intact_key = (await probe.handle(intact_row)).key
    damaged_key = (await probe.handle(damaged_row)).key
    assert intact_key and damaged_key
    rig.store.objects[intact_key] = Stored(intact, md5(intact))
    rig.store.objects[damaged_key] = Stored(b"y" * 10, md5(b"y" * 10))
    rig.store.calls.clear()

    result = await up.handle(intact_row)
    assert result.outcome is Outcome.SKIPPED_EXISTING
    assert rig.store.calls == ["PUT-if-absent", "HEAD"]
    assert up.existence.head_first  # an object existed: HEAD first again

    rig.store.calls.clear()
    result = await up.handle(damaged_row)
    assert result.outcome is Outcome.UPLOADED
    assert rig.store.calls == ["HEAD", "PUT"]
    assert rig.store.objects[damaged_key].body == damaged


async def test_a_server_without_conditional_writes_keeps_heading_first(rig: Rig) -> None:
    rig.store.conditional_writes = False
    up = rig.uploader(concurrency=1)
    for i in range(4):
        assert (await up.handle(rig.row(body(i)))).outcome is Outcome.UPLOADED
    assert rig.store.calls == ["HEAD", "PUT-if-absent", "PUT"] + ["HEAD", "PUT"] * 3


async def test_damage_in_transit_is_sent_again_then_failed(rig: Rig) -> None:
    rig.store.damage_next_puts = 1
    once = await rig.uploader().handle(rig.row(body(1)))
    assert once.outcome is Outcome.UPLOADED
    assert rig.store.calls == ["HEAD", "PUT-if-absent", "PUT"]
    assert once.bytes_sent == 2 * 1000

    rig.store.calls.clear()
    rig.store.damage_next_puts = 100
    always = await rig.uploader().handle(rig.row(body(2)))
    assert always.outcome is Outcome.FAILED and always.url is None
    assert "S3 returned ETag" in always.reason
    assert rig.store.calls == ["HEAD", "PUT-if-absent", "PUT", "PUT", "PUT"]


async def test_a_versioned_bucket_is_headed_before_every_put(rig: Rig) -> None:
    rig.store.versioned = rig.store.ignores_conditions = True
    up = rig.uploader(concurrency=1)
    rows = [rig.row(body(i)) for i in range(4)]
    for row in rows:
        assert (await up.handle(row)).outcome is Outcome.UPLOADED
    assert rig.store.calls == ["HEAD", "PUT"] * 4  # never a conditional PUT
    rig.store.calls.clear()
    for row in rows:  # a re-run: nothing is sent again, so no second versions
        assert (await rig.uploader(concurrency=1).handle(row)).outcome is Outcome.SKIPPED_EXISTING
    assert rig.store.calls == ["HEAD"] * 4


async def test_a_put_that_makes_a_version_turns_conditional_puts_off(rig: Rig) -> None:
    rig.store.ignores_conditions = True  # versioning not known at start (no permission)
    up = rig.uploader(concurrency=1)
    for i in range(5):
        assert (await up.handle(rig.row(body(i)))).outcome is Outcome.UPLOADED
    # the first conditional PUT answers with a version: a HEAD before every PUT from then on
    assert rig.store.calls == ["HEAD", "PUT-if-absent", *["HEAD", "PUT"] * 4]


async def test_force_sends_without_asking(rig: Rig) -> None:
    row = rig.row(body(3))
    await rig.uploader().handle(row)
    rig.store.calls.clear()
    result = await rig.uploader(force=True).handle(row)
    assert result.outcome is Outcome.UPLOADED and rig.store.calls == ["PUT"]


async def test_a_wrong_md5_sum_sends_nothing(rig: Rig) -> None:
    result = await rig.uploader().handle(rig.row(body(4), md5_sum="0" * 32))
    assert result.outcome is Outcome.CORRUPT and result.url is None
    assert rig.store.calls == []  # a small file is hashed as it is read, before any request


async def test_a_denied_put_stops_the_run(rig: Rig) -> None:
    rig.store.deny_puts = True
    with pytest.raises(StorageUnavailable, match="s3:PutObject"):
        await rig.uploader().handle(rig.row(body(5)))


async def test_rows_sharing_a_key_cause_one_upload(rig: Rig) -> None:
    import asyncio

    up = rig.uploader()
    data = body(6)
    rows = [rig.row(data) for _ in range(3)]
    results = await asyncio.gather(*(up.handle(r) for r in rows))
    assert sorted(r.outcome for r in results) == sorted(
        [Outcome.UPLOADED, Outcome.SKIPPED_EXISTING, Outcome.SKIPPED_EXISTING]
    )
    assert rig.store.calls.count("PUT-if-absent") + rig.store.calls.count("PUT") == 1


# -- one PUT streamed from the file -------------------------------------------------------

STREAMED = {"multipart_threshold": 20 * MIB, "part_size": 5 * MIB}


def medium(i: int) -> bytes:
    return body(i, 6 * MIB)  # over a buffer (a part), under the multipart threshold


async def test_a_file_over_a_buffer_goes_as_one_put_streamed_from_the_file(rig: Rig) -> None:
    data = medium(1)
    up = rig.uploader(**STREAMED)
    result = await up.handle(rig.row(data))
    assert result.outcome is Outcome.UPLOADED and result.key
    assert rig.store.streamed == [result.key]  # the body was the file, not a buffer
    assert rig.store.objects[result.key].body == data and result.bytes_sent == len(data)
    assert "CREATE" not in rig.store.calls  # no multipart upload


async def test_a_streamed_file_whose_bytes_differ_from_md5_sum_is_never_sent(rig: Rig) -> None:
    result = await rig.uploader(**STREAMED).handle(rig.row(medium(2), md5_sum="0" * 32))
    assert result.outcome is Outcome.CORRUPT
    assert not any(c.startswith("PUT") for c in rig.store.calls) and rig.store.objects == {}


async def test_a_streamed_put_damaged_in_transit_is_streamed_again(rig: Rig) -> None:
    rig.store.damage_next_puts = 1
    result = await rig.uploader(**STREAMED).handle(rig.row(medium(3)))
    assert result.outcome is Outcome.UPLOADED and result.key
    assert len(rig.store.streamed) == 2 and rig.store.objects[result.key].body == medium(3)


async def test_a_streamed_put_into_an_sse_kms_bucket_carries_the_files_crc32(rig: Rig) -> None:
    rig.store = FakeStore(kms=True, encryption="aws:kms")
    result = await rig.uploader(**STREAMED).handle(rig.row(medium(4)))
    assert result.outcome is Outcome.UPLOADED
    assert rig.store.checksums_sent == [crc32_b64(medium(4))]


# -- multipart -----------------------------------------------------------------------------

MULTIPART = {"multipart_threshold": 5 * MIB, "part_size": 5 * MIB}


def big(i: int) -> bytes:
    return body(i, 11 * MIB)  # three parts of 5, 5 and 1 MiB


async def test_a_multipart_upload_records_the_files_md5(rig: Rig) -> None:
    data = big(1)
    result = await rig.uploader(**MULTIPART).handle(rig.row(data))
    assert result.outcome is Outcome.UPLOADED and result.key
    stored = rig.store.objects[result.key]
    assert stored.body == data and stored.metadata == {METADATA_MD5: md5(data)}
    assert stored.etag.endswith("-3")
    assert rig.store.calls[0] == "HEAD" and rig.store.calls[-1] == "COMPLETE-if-absent"


async def test_a_failed_part_aborts_the_multipart_upload(rig: Rig) -> None:
    rig.store.fail_part = 2
    result = await rig.uploader(**MULTIPART).handle(rig.row(big(2)))
    assert result.outcome is Outcome.FAILED and "part 2" in result.reason
    assert rig.store.aborted == ["upload-0"] and rig.store.uploads == {}
    assert rig.store.objects == {}


async def test_an_intact_multipart_object_is_skipped_and_one_without_md5_replaced(
    rig: Rig,
) -> None:
    data = big(3)
    row = rig.row(data)
    key = (await rig.uploader(**MULTIPART).handle(row)).key
    assert key is not None
    rig.store.calls.clear()
    again = await rig.uploader(**MULTIPART).handle(row)
    assert again.outcome is Outcome.SKIPPED_EXISTING and rig.store.calls == ["HEAD"]

    # Same size, same ETag shape, but no recorded MD5: it cannot be proved, so it is replaced.
    rig.store.objects[key].metadata.clear()
    rig.store.calls.clear()
    replaced = await rig.uploader(**MULTIPART).handle(row)
    assert replaced.outcome is Outcome.UPLOADED
    assert rig.store.calls[0] == "HEAD" and rig.store.calls[-1] == "COMPLETE"
    assert rig.store.objects[key].metadata == {METADATA_MD5: md5(data)}


@pytest.mark.parametrize("budget", [None, 5 * MIB], ids=["held", "streamed"])
async def test_a_multipart_file_whose_bytes_differ_from_md5_sum_is_never_sent(
    rig: Rig, budget: int | None
) -> None:
    data = big(4)
    row = rig.row(data)
    (rig.root / "images" / f"{md5(data)}.jpg").write_bytes(big(5))  # changed after the row
    result = await rig.uploader(**MULTIPART, memory_budget=budget).handle(row)
    assert result.outcome is Outcome.CORRUPT
    assert rig.store.calls == ["HEAD"]  # proved before anything is sent, not even a probe


async def test_a_file_larger_than_the_budget_is_proved_then_sent_part_by_part(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5 MiB of budget and an 11 MiB file: it is hashed a chunk at a time, then read again
    a part at a time; a part whose bytes are not those proved is not sent."""
    streamed = {**MULTIPART, "memory_budget": 5 * MIB}
    data = big(11)
    result = await rig.uploader(**streamed).handle(rig.row(data))
    assert result.outcome is Outcome.UPLOADED and result.key
    assert rig.store.objects[result.key].body == data

    changed = big(12)
    row = rig.row(changed)
    path = rig.root / "images" / f"{md5(changed)}.jpg"
    proved = upload_module.hash_streamed

    def then_changed(f: object, part_size: int) -> tuple[str, list[int]]:
        result = proved(f, part_size)  # type: ignore[arg-type]
        path.write_bytes(big(13))  # same size, other bytes, after the proof
        return result

    monkeypatch.setattr(upload_module, "hash_streamed", then_changed)
    rig.store.calls.clear()
    bad = await rig.uploader(**streamed).handle(row)
    assert bad.outcome is Outcome.FAILED and "changed while it was sent" in bad.reason
    assert not any(c.startswith("PART") for c in rig.store.calls)
    assert rig.store.calls[-1] == "ABORT" and changed not in [
        o.body for o in rig.store.objects.values()
    ]


async def test_where_the_server_checks_crc32_parts_carry_no_md5_of_their_own(rig: Rig) -> None:
    rig.store.checks_crc32 = True
    data = big(8)
    result = await rig.uploader(**MULTIPART).handle(rig.row(data))
    assert result.outcome is Outcome.UPLOADED and result.key
    assert rig.store.objects[result.key].body == data
    assert rig.store.calls[:3] == ["HEAD", "PROBE", "CREATE-crc32"]

    # A part answered with another checksum than the one sent is not taken as stored.
    rig.store.crc_mismatch_part = 2
    bad = await rig.uploader(**MULTIPART).handle(rig.row(big(9)))
    assert bad.outcome is Outcome.FAILED and "part 2: S3 returned checksum" in bad.reason
    assert rig.store.calls[-1] == "ABORT"


async def test_where_the_server_does_not_check_crc32_parts_carry_content_md5(rig: Rig) -> None:
    data = big(10)
    result = await rig.uploader(**MULTIPART).handle(rig.row(data))
    assert result.outcome is Outcome.UPLOADED
    assert rig.store.calls[:3] == ["HEAD", "PROBE", "CREATE"]


async def test_a_multipart_upload_completed_without_an_etag_is_judged_by_a_head(
    rig: Rig,
) -> None:
    rig.store.complete_without_etag = True  # as Ceph RGW 16 answers
    data = big(6)
    result = await rig.uploader(**MULTIPART).handle(rig.row(data))
    assert result.outcome is Outcome.UPLOADED
    assert rig.store.calls[-2:] == ["COMPLETE-if-absent", "HEAD"]

    rig.store.complete_other_bytes = True
    bad = await rig.uploader(**MULTIPART).handle(rig.row(big(7)))
    assert bad.outcome is Outcome.FAILED and "without an ETag" in bad.reason
    assert "differs" in bad.reason


# -- least privilege: what the uploader does when S3 will not say -------------------------


async def test_without_list_bucket_a_refused_head_lets_the_conditional_put_decide(
    rig: Rig,
) -> None:
    """s3:PutObject + s3:GetObject: a missing key's HEAD is refused, a stored one's is not."""
    rig.store.listable = False
    stored = rig.row(body(1))
    await rig.uploader().handle(stored)
    rig.store.calls.clear()
    up = rig.uploader(concurrency=1)
    new = await up.handle(rig.row(body(2)))
    assert new.outcome is Outcome.UPLOADED and not new.resent
    again = await up.handle(stored)
    assert again.outcome is Outcome.SKIPPED_EXISTING and again.bytes_sent == 0
    assert rig.store.calls == ["HEAD", "PUT-if-absent", "HEAD"]
    assert up.access_notes() == []


async def test_write_only_credentials_send_a_stored_object_again_and_trust_its_etag(
    rig: Rig,
) -> None:
    """s3:PutObject alone: no HEAD can tell, so the conditional PUT decides; a key that
    exists (412) cannot be read back, so the file is sent again, unconditionally, and
    recorded on the ETag S3 answers. Once that is seen, no HEAD is sent again."""
    rows = [rig.row(body(i)) for i in range(3)]
    for row in rows[:2]:
        await rig.uploader().handle(row)
    key = (await rig.uploader(dry_run=True).handle(rows[1])).key
    assert key is not None
    rig.store.objects[key] = Stored(b"z" * 1000, md5(b"z" * 1000))  # damaged meanwhile
    rig.store.readable = rig.store.listable = False
    rig.store.calls.clear()

    up = rig.uploader(concurrency=4)
    results = [await up.handle(row) for row in rows]
    assert [r.outcome for r in results] == [Outcome.UPLOADED] * 3
    assert [r.resent for r in results] == [True, True, False]
    assert rig.store.calls == [
        *["HEAD", "PUT-if-absent", "HEAD", "PUT"],  # refused HEADs, 412, sent again
        *["PUT-if-absent", "PUT"],  # no HEAD any more
        "PUT-if-absent",  # a new object: one request
    ]
    assert rig.store.objects[key].body == body(1)  # the damaged object was replaced
    assert all(rig.store.objects[r.key or ""].body == body(i) for i, r in enumerate(results))
    notes = up.access_notes()
    assert len(notes) == 1 and "s3:GetObject" in notes[0] and "ETag" in notes[0]


async def test_write_only_a_resent_object_whose_etag_is_wrong_is_not_recorded(rig: Rig) -> None:
    row = rig.row(body(4))
    await rig.uploader().handle(row)
    rig.store.readable = False
    rig.store.damage_next_puts = 100
    result = await rig.uploader().handle(row)
    assert result.outcome is Outcome.FAILED and result.url is None
    assert "S3 returned ETag" in result.reason


async def test_a_versioned_bucket_without_reads_sends_every_file_and_says_why(
    rig: Rig,
) -> None:
    rig.store.versioned = rig.store.ignores_conditions = True
    rig.store.listable = False  # s3:GetObject, no s3:ListBucket: missing keys are 403
    up = rig.uploader(concurrency=1)
    for i in range(3):
        assert (await up.handle(rig.row(body(i)))).outcome is Outcome.UPLOADED
    assert rig.store.calls == ["HEAD", "PUT"] * 3
    (note,) = up.access_notes()
    assert "keeps versions" in note and "s3:GetObject" in note and "3 of those HEADs" in note


async def test_write_only_a_stored_multipart_object_is_completed_again(rig: Rig) -> None:
    data = big(8)
    row = rig.row(data)
    await rig.uploader(**MULTIPART).handle(row)
    rig.store.readable = False
    rig.store.calls.clear()
    result = await rig.uploader(**MULTIPART).handle(row)
    assert result.outcome is Outcome.UPLOADED and result.resent
    assert rig.store.calls[0] == "HEAD" and "ABORT" not in rig.store.calls
    assert rig.store.calls[-3:] == ["COMPLETE-if-absent", "HEAD", "COMPLETE"]
    assert result.key and rig.store.objects[result.key].body == data


async def test_write_only_a_multipart_object_completed_without_an_etag_is_not_recorded(
    rig: Rig,
) -> None:
    rig.store.complete_without_etag = True  # Ceph RGW 16
    rig.store.readable = False
    result = await rig.uploader(**MULTIPART).handle(rig.row(big(9)))
    assert result.outcome is Outcome.FAILED and result.url is None
    assert "s3:GetObject" in result.reason


async def test_a_refused_abort_is_reported_once_in_the_notes(rig: Rig) -> None:
    rig.store.deny_aborts = True
    rig.store.fail_part = 2
    up = rig.uploader(**MULTIPART)
    result = await up.handle(rig.row(big(10)))
    assert result.outcome is Outcome.FAILED
    (note,) = up.access_notes()
    assert "s3:AbortMultipartUpload" in note


# -- bytes sent are the bytes hashed; SSE-KMS ------------------------------------------


def crc32_kept(data: bytes, at: int, changed: bytes) -> bytes:
    """`data` with `changed` written at `at`, and the 4 bytes after it chosen so that the
    CRC32 of the whole is still that of `data` (CRC32 is affine over GF(2): the effect of
    each of those 32 bits is found, then the combination that undoes the change)."""
    target = zlib.crc32(data)
    base = bytearray(data)
    base[at : at + len(changed)] = changed
    spot = at + len(changed)
    start = zlib.crc32(bytes(base))
    effects = []
    for bit in range(32):
        flipped = bytearray(base)
        flipped[spot + bit // 8] ^= 1 << (bit % 8)
        effects.append((zlib.crc32(bytes(flipped)) ^ start, 1 << bit))
    want = start ^ target
    rows: list[tuple[int, int]] = []  # Gaussian elimination over GF(2)
    for effect, bits in effects:
        for r_effect, r_bits in rows:
            if effect ^ r_effect < effect:
                effect, bits = effect ^ r_effect, bits ^ r_bits
        if effect:
            rows.append((effect, bits))
    chosen = 0
    for r_effect, r_bits in sorted(rows, reverse=True):
        if want ^ r_effect < want:
            want, chosen = want ^ r_effect, chosen ^ r_bits
    assert want == 0
    for bit in range(32):
        if chosen >> bit & 1:
            base[spot + bit // 8] ^= 1 << (bit % 8)
    assert zlib.crc32(bytes(base)) == target and bytes(base) != data
    return bytes(base)


async def test_a_change_between_the_two_reads_that_keeps_each_parts_crc32_is_not_completed(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file above the byte budget is hashed, then read again part by part: a change of
    a part that keeps its CRC32 (a few chosen bytes) is caught by the MD5 of the second
    read before the upload is completed."""
    streamed = {**MULTIPART, "memory_budget": 5 * MIB}
    data = big(14)
    row = rig.row(data)
    path = rig.root / "images" / f"{md5(data)}.jpg"
    part_size = MULTIPART["part_size"]
    assert isinstance(part_size, int)
    second_part = data[part_size : 2 * part_size]
    forged = crc32_kept(second_part, 1000, b"not the bytes that were proved")
    proved = upload_module.hash_streamed

    def then_changed(f: object, size: int) -> tuple[str, list[int]]:
        result = proved(f, size)  # type: ignore[arg-type]
        path.write_bytes(data[:part_size] + forged + data[2 * part_size :])
        return result

    monkeypatch.setattr(upload_module, "hash_streamed", then_changed)
    result = await rig.uploader(**streamed).handle(row)
    assert result.outcome is Outcome.FAILED
    assert "changed between its two reads" in result.reason
    assert "COMPLETE" not in " ".join(rig.store.calls) and rig.store.calls[-1] == "ABORT"
    assert not rig.store.objects


async def test_over_plain_http_crc32_parts_carry_content_md5_too(rig: Rig) -> None:
    """An on-path writer could swap a part for one with the same CRC32; Content-MD5, a
    signed header, stops that. Over https the CRC32 alone is sent."""
    rig.store.checks_crc32 = True
    rig.store.plain_http = True
    result = await rig.uploader(**MULTIPART).handle(rig.row(big(15)))
    assert result.outcome is Outcome.UPLOADED
    assert rig.store.part_headers and all(
        h == ("content-md5", "crc32") for h in rig.store.part_headers
    )
    rig.store.plain_http = False
    rig.store.part_headers.clear()
    result = await rig.uploader(**MULTIPART).handle(rig.row(big(16)))
    assert result.outcome is Outcome.UPLOADED
    assert rig.store.part_headers and all(h == ("crc32",) for h in rig.store.part_headers)


async def test_an_sse_kms_bucket_archives_single_puts_proved_by_checksums(rig: Rig) -> None:
    """SSE-KMS ETags are not MD5s. With the bucket's default known, every
    PUT carries a CRC32 (and the MD5 in its metadata) and is proved by the echoed checksum;
    when only a PUT's answer reveals it, that one file is sent once more, the rest once."""
    rig.store.kms = True
    rig.store.encryption = "aws:kms"  # the default encryption, read at start
    up = rig.uploader(concurrency=1)
    results = [await up.handle(rig.row(body(i))) for i in range(3)]
    assert [r.outcome for r in results] == [Outcome.UPLOADED] * 3
    assert rig.store.calls.count("PUT-if-absent") + rig.store.calls.count("PUT") == 3
    assert all(c is not None for c in rig.store.checksums_sent)
    for r in results:
        assert r.key is not None
        assert rig.store.objects[r.key].metadata == {
            METADATA_MD5: md5(rig.store.objects[r.key].body)
        }
    again = await rig.uploader().handle(rig.row(body(0)))  # a new run: judged intact
    assert again.outcome is Outcome.SKIPPED_EXISTING

    rig.store = FakeStore(kms=True)  # the default could not be read (least privilege)
    up = rig.uploader(concurrency=1)
    results = [await up.handle(rig.row(body(10 + i))) for i in range(3)]
    assert [r.outcome for r in results] == [Outcome.UPLOADED] * 3
    assert rig.store.checksums_sent[0] is None  # learned from its answer
    assert len(rig.store.checksums_sent) == 4  # that file once more, the others once
    assert all(c is not None for c in rig.store.checksums_sent[1:])
    assert rig.store.encryption == "aws:kms"


async def test_an_sse_kms_bucket_on_a_server_without_checksums_is_refused_at_once(
    rig: Rig,
) -> None:
    rig.store = FakeStore(kms=True, echoes_checksums=False)
    up = rig.uploader(concurrency=1)
    with pytest.raises(StorageUnavailable, match="encrypts objects with aws:kms"):
        await up.handle(rig.row(body(1)))
    assert len(rig.store.checksums_sent) == 2  # the first PUT, and the one with a checksum

    rig.store = FakeStore(kms=True, encryption="aws:kms")
    with pytest.raises(StorageUnavailable, match="x-amz-checksum-crc32"):
        await rig.uploader(**MULTIPART).handle(rig.row(big(17)))  # no CRC32 parts either
    assert not any(c.startswith(("CREATE", "PART")) for c in rig.store.calls)
