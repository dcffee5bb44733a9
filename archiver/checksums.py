"""The checksums an upload is proved by, as S3's headers carry them: Content-MD5, CRC32 and
the composite CRC32 of a multipart object; and what makes an ETag no MD5 (SSE-KMS, SSE-C)."""

from __future__ import annotations

import base64
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from archiver.integrity import METADATA_MD5


def content_md5(md5_hex: str) -> str:
    """The base64 Content-MD5 header value for a hex digest."""
    return base64.b64encode(bytes.fromhex(md5_hex)).decode("ascii")


def encrypted_without_checksums(bucket: str, encryption: str | None) -> str:
    """Why archiver cannot prove an upload into this bucket (see `Storage.encryption`)."""
    return (
        f"bucket {bucket!r} encrypts objects with {encryption or 'SSE-KMS'}, whose ETags are "
        "not MD5s, and this server does not answer with S3's additional checksums "
        "(x-amz-checksum-crc32) to prove an upload by: archiver cannot prove what it would "
        "store there (make the bucket's default encryption SSE-S3, or use a server that "
        "supports checksums)"
    )


def checksummed(crc32: str, md5_hex: str) -> dict[str, Any]:
    """PutObject's parameters for a body proved by S3's CRC32 checksum, with the file's MD5
    in the object's metadata (what an SSE-KMS object is judged by later)."""
    return {
        "ChecksumAlgorithm": "CRC32",
        "ChecksumCRC32": crc32,
        "Metadata": {METADATA_MD5: md5_hex},
    }


def kms_default(response: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """The SSE-KMS algorithm and key (None when unnamed) of a GetBucketEncryption answer,
    or None (no default encryption, or SSE-S3, whose ETags are MD5s)."""
    config = response.get("ServerSideEncryptionConfiguration") or {}
    for rule in config.get("Rules") or []:
        default = rule.get("ApplyServerSideEncryptionByDefault") or {}
        algorithm = str(default.get("SSEAlgorithm"))
        if algorithm.startswith("aws:kms"):
            return algorithm, default.get("KMSMasterKeyID")
    return None


def etag_hiding_encryption(response: Mapping[str, Any]) -> str | None:
    """The encryption of an object (from a PUT's or a HEAD's response) whose ETag is then not
    an MD5 of its content: SSE-KMS (`aws:kms`, `aws:kms:dsse`) or SSE-C; None otherwise."""
    if response.get("SSECustomerAlgorithm"):
        return "SSE-C"
    sse = str(response.get("ServerSideEncryption") or "")
    return sse if sse.startswith("aws:kms") else None


def crc32_b64(data: bytes | memoryview) -> str:
    """The base64 x-amz-checksum-crc32 value of `data`."""
    return crc32_b64_of(zlib.crc32(data))


def crc32_b64_of(crc: int) -> str:
    """A CRC32 as S3's x-amz-checksum-crc32 writes it (base64 of its 4 bytes)."""
    return base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")


def composite_crc32(part_checksums: Sequence[str]) -> str:
    """The checksum S3 gives a multipart object made of parts with these CRC32 checksums:
    the CRC32 of their concatenated values, dash, part count."""
    joined = b"".join(base64.b64decode(c) for c in part_checksums)
    return f"{crc32_b64(joined)}-{len(part_checksums)}"
