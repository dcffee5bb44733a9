"""Is this object this row's file? The rule, in one place (pure). upload, verify,
prune-local and restore all ask it here.

- A single-part object (an ETag without a dash) holds the file when its ETag equals the
  file's MD5 and its size the file's size.
- A multipart object's ETag is no MD5 of its content, so archiver records the file's MD5 in
  the metadata of every multipart object it makes (`METADATA_MD5`); such an object holds the
  file when that recorded MD5 equals the file's and its size the file's size.
- Anything else (a multipart object without a recorded MD5, or with another one) cannot be
  shown to hold it, whatever its size.

Bytes read back (restore's download) are the file when they hash to its MD5: that proves
more than any ETag, so restore checks the bytes themselves (`content_mismatch`).

When no size is known (verify of a row whose file is gone and whose `file_size` is NULL),
the content check alone decides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from archiver.storage import ObjectInfo

METADATA_MD5 = "md5"  # x-amz-meta-md5: the whole file's MD5, on multipart objects


def mismatch(info: ObjectInfo | None, md5: str, size: int | None) -> str | None:
    """Why the object does not hold the file of this MD5 and size ("missing" when there is
    no object), or None when it does."""
    if info is None:
        return "missing"
    if size is not None and info.size != size:
        return f"size {info.size} differs from {size}"
    if not info.is_multipart:
        return None if info.etag == md5 else f"ETag {info.etag} differs from md5_sum {md5}"
    recorded = info.metadata.get(METADATA_MD5)
    if recorded is None:
        return "multipart object without a recorded MD5: its content cannot be verified"
    return None if recorded == md5 else f"recorded MD5 {recorded} differs from md5_sum {md5}"


def object_intact(info: ObjectInfo | None, md5: str, size: int | None) -> bool:
    """Whether the object exists and holds exactly the file (see the module docstring)."""
    return mismatch(info, md5, size) is None


def content_mismatch(actual_md5: str, md5: str) -> str | None:
    """Why bytes read back are not the row's file, or None when they are."""
    return None if actual_md5 == md5 else f"bytes hash to {actual_md5}, not md5_sum {md5}"
