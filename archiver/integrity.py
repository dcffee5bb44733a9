"""Is this object this row's file? The rule, in one place (pure).

- A single-part object (an ETag without a dash) holds the file when its ETag equals the
  file's MD5 and its size the file's size.
- A multipart object's ETag is no MD5 of its content, so archiver records the file's MD5 in
  the metadata of every multipart object it makes (`METADATA_MD5`); such an object holds the
  file when that recorded MD5 equals the file's and its size the file's size.
- Anything else (a multipart object without a recorded MD5) cannot be shown to hold it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from archiver.storage import ObjectInfo

METADATA_MD5 = "md5"  # x-amz-meta-md5: the whole file's MD5, on multipart objects


def mismatch(info: ObjectInfo | None, md5: str, size: int) -> str | None:
    """Why the object does not hold the file of this MD5 and size, or None when it does."""
    if info is None:
        return "missing"
    if info.size != size:
        return f"size {info.size} differs from {size}"
    if not info.is_multipart:
        return None if info.etag == md5 else f"ETag {info.etag} differs from md5_sum {md5}"
    recorded = info.metadata.get(METADATA_MD5)
    if recorded is None:
        return "multipart object without a recorded MD5: cannot be verified"
    return None if recorded == md5 else f"recorded MD5 {recorded} differs from md5_sum {md5}"


def object_intact(info: ObjectInfo, md5: str, size: int) -> bool:
    """Whether an existing object holds exactly the file (see the module docstring)."""
    return mismatch(info, md5, size) is None
