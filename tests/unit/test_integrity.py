"""The integrity rule (`archiver.integrity`): one table, the same answer for every job."""

from __future__ import annotations

import pytest

from archiver.integrity import (
    METADATA_MD5,
    Verdict,
    content_mismatch,
    judge,
    mismatch,
    object_intact,
)
from archiver.models import ObjectInfo

MD5 = "0123456789abcdef0123456789abcdef"
OTHER = "e" * 32


def info(
    size: int = 10,
    etag: str = MD5,
    metadata: dict[str, str] | None = None,
    encryption: str | None = None,
) -> ObjectInfo:
    return ObjectInfo(size=size, etag=etag, metadata=metadata or {}, encryption=encryption)


KMS_ETAG = "9" * 32  # an SSE-KMS object's ETag: 32 hex digits, not the MD5 of its bytes


@pytest.mark.parametrize(
    ("obj", "size", "verdict"),
    [
        (None, 10, "missing"),
        (info(), 10, None),
        (info(), None, None),  # no size known: the ETag alone
        (info(size=11), 10, "size 11 differs from the local file's 10"),
        (info(etag="f" * 32), 10, f"ETag {'f' * 32} differs from md5_sum {MD5}"),
        (info(etag="f" * 32), None, f"ETag {'f' * 32} differs from md5_sum {MD5}"),
        (info(etag="abc-3", metadata={METADATA_MD5: MD5}), 10, None),
        (
            info(etag="abc-3", metadata={METADATA_MD5: OTHER}),
            10,
            f"recorded MD5 {OTHER} differs from md5_sum {MD5}",
        ),
        # A multipart object without a recorded MD5 cannot be shown to hold the file, even
        # when its size is right (or unknown): this is what guards prune's deletes.
        (
            info(etag="abc-3"),
            10,
            "multipart object without a recorded MD5: its content cannot be verified",
        ),
        (
            info(etag="abc-3"),
            None,
            "multipart object without a recorded MD5: its content cannot be verified",
        ),
        (
            info(size=9, etag="abc-3", metadata={METADATA_MD5: MD5}),
            10,
            "size 9 differs from the local file's 10",
        ),
        # Metadata is only read on multipart objects: a single-part ETag is the content's MD5.
        (info(metadata={METADATA_MD5: OTHER}), 10, None),
    ],
)
def test_mismatch(obj: ObjectInfo | None, size: int | None, verdict: str | None) -> None:
    assert mismatch(obj, MD5, size) == verdict
    assert object_intact(obj, MD5, size) is (verdict is None)


@pytest.mark.parametrize(
    ("obj", "size", "verdict"),
    [
        (None, 10, Verdict.MISSING),
        (info(), None, Verdict.INTACT),
        (info(etag="f" * 32), None, Verdict.BAD),  # an MD5, and another one: proof
        (info(size=11), 10, Verdict.BAD),  # the local file's size is proof
        # What cannot be judged is never taken for damage: another tool's
        # multipart copy, an SSE-KMS or SSE-C object whose ETag is no MD5.
        (info(etag="abc-3"), 10, Verdict.UNKNOWN),
        (info(etag=KMS_ETAG, encryption="aws:kms"), 10, Verdict.UNKNOWN),
        (info(etag=KMS_ETAG, encryption="aws:kms:dsse"), None, Verdict.UNKNOWN),
        (info(etag=KMS_ETAG, encryption="SSE-C"), None, Verdict.UNKNOWN),
        # archiver's own encrypted objects carry the MD5 it proved before sending them.
        (
            info(etag=KMS_ETAG, encryption="aws:kms", metadata={METADATA_MD5: MD5}),
            10,
            Verdict.INTACT,
        ),
        (
            info(etag=KMS_ETAG, encryption="aws:kms", metadata={METADATA_MD5: OTHER}),
            10,
            Verdict.BAD,
        ),
        (info(size=9, etag=KMS_ETAG, encryption="aws:kms"), 10, Verdict.BAD),
    ],
)
def test_judge(obj: ObjectInfo | None, size: int | None, verdict: Verdict) -> None:
    judgement = judge(obj, MD5, size)
    assert judgement.verdict is verdict
    assert (judgement.reason is None) is (verdict is Verdict.INTACT)
    if verdict is Verdict.UNKNOWN:
        assert "cannot be verified" in (judgement.reason or "")


def test_content_mismatch() -> None:
    assert content_mismatch(MD5, MD5) is None
    assert content_mismatch(OTHER, MD5) == f"bytes hash to {OTHER}, not md5_sum {MD5}"
