"""The integrity rule (`archiver.integrity`): one table, the same answer for every job."""

from __future__ import annotations

import pytest

from archiver.integrity import METADATA_MD5, content_mismatch, mismatch, object_intact
from archiver.storage import ObjectInfo

MD5 = "0123456789abcdef0123456789abcdef"
OTHER = "e" * 32


def info(size: int = 10, etag: str = MD5, metadata: dict[str, str] | None = None) -> ObjectInfo:
    return ObjectInfo(size=size, etag=etag, metadata=metadata or {})


@pytest.mark.parametrize(
    ("obj", "size", "verdict"),
    [
        (None, 10, "missing"),
        (info(), 10, None),
        (info(), None, None),  # no size known: the ETag alone
        (info(size=11), 10, "size 11 differs from 10"),
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
        (info(size=9, etag="abc-3", metadata={METADATA_MD5: MD5}), 10, "size 9 differs from 10"),
        # Metadata is only read on multipart objects: a single-part ETag is the content's MD5.
        (info(metadata={METADATA_MD5: OTHER}), 10, None),
    ],
)
def test_mismatch(obj: ObjectInfo | None, size: int | None, verdict: str | None) -> None:
    assert mismatch(obj, MD5, size) == verdict
    assert object_intact(obj, MD5, size) is (verdict is None)


def test_content_mismatch() -> None:
    assert content_mismatch(MD5, MD5) is None
    assert content_mismatch(OTHER, MD5) == f"bytes hash to {OTHER}, not md5_sum {MD5}"
