"""Is this object this row's file? The rule, in one place (pure). upload, verify,
prune-local and restore all ask it here.

- A single-part object (an ETag without a dash) that is not encrypted with SSE-KMS or SSE-C
  holds the file when its ETag equals the file's MD5 and its size the file's size.
- A multipart object's ETag is no MD5 of its content, nor is an SSE-KMS or SSE-C object's
  (AWS's `Object.ETag` documentation), so archiver records the file's MD5 in the metadata of
  every such object it makes (`METADATA_MD5`), and only after S3 checked the bytes against a
  checksum sent with them: such an object holds the file when that recorded MD5 equals the
  file's and its size the file's size.
- Such an object without a recorded MD5 (another tool's copy) cannot be judged either way:
  `Verdict.UNKNOWN`, never taken for damage (verify's --repair leaves it linked, prune-local
  keeps the file).

An object is shown NOT to hold the file (`Verdict.BAD`) only by what proves it: another
size than the local file's, an ETag that is an MD5 and not this one, a recorded MD5 that
is another. The `file_size` column is the app's and is never a proof: the size is the
local file's, when there is one.

Bytes read back (restore's download) are the file when they hash to its MD5: that proves
more than any ETag, so restore checks the bytes themselves (`content_mismatch`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from archiver.models import ObjectInfo

METADATA_MD5 = "md5"  # x-amz-meta-md5: the whole file's MD5, on multipart objects


class Verdict(enum.Enum):
    INTACT = "intact"  # shown to hold the file
    MISSING = "missing"  # no object
    BAD = "bad"  # shown to hold something else
    UNKNOWN = "unknown"  # present, but nothing it carries can show what it holds


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    reason: str | None = None  # why it is not INTACT

    @property
    def intact(self) -> bool:
        return self.verdict is Verdict.INTACT


def judge(info: ObjectInfo | None, md5: str, size: int | None) -> Judgement:
    """What the object is to the file of this MD5 and (local) size; `size` None when no
    local file is known (the content check alone decides)."""
    if info is None:
        return Judgement(Verdict.MISSING, "missing")
    if size is not None and info.size != size:
        return Judgement(Verdict.BAD, f"size {info.size} differs from the local file's {size}")
    if not info.is_multipart and not info.encrypted:
        if info.etag == md5:
            return Judgement(Verdict.INTACT)
        return Judgement(Verdict.BAD, f"ETag {info.etag} differs from md5_sum {md5}")
    recorded = info.metadata.get(METADATA_MD5)
    if recorded is None:
        what = (
            f"object encrypted with {info.encryption}, whose ETag is not an MD5,"
            if info.encrypted
            else "multipart object"
        )
        return Judgement(
            Verdict.UNKNOWN, f"{what} without a recorded MD5: its content cannot be verified"
        )
    if recorded == md5:
        return Judgement(Verdict.INTACT)
    return Judgement(Verdict.BAD, f"recorded MD5 {recorded} differs from md5_sum {md5}")


def mismatch(info: ObjectInfo | None, md5: str, size: int | None) -> str | None:
    """Why the object is not shown to hold the file of this MD5 and size ("missing" when
    there is no object), or None when it is."""
    return judge(info, md5, size).reason


def object_intact(info: ObjectInfo | None, md5: str, size: int | None) -> bool:
    """Whether the object exists and holds exactly the file (see the module docstring)."""
    return mismatch(info, md5, size) is None


def content_mismatch(actual_md5: str, md5: str) -> str | None:
    """Why bytes read back are not the row's file, or None when they are."""
    return None if actual_md5 == md5 else f"bytes hash to {actual_md5}, not md5_sum {md5}"
