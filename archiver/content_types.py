"""Extension, MIME type and magic-byte tables (pure).

The tables are the project's own rather than `mimetypes`', whose answers depend on the
machine's /etc/mime.types: an object key must not change with the host it was made on.
"""

from __future__ import annotations

import re

from archiver.keys import plain_ext

OCTET_STREAM_TYPES = frozenset({"application/octet-stream", "binary/octet-stream"})
FALLBACK_EXT = ".bin"
FALLBACK_CONTENT_TYPE = "application/octet-stream"

# MIME type -> the extension archiver gives such a file.
MIME_TO_EXT: dict[str, str] = {
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/pjpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/avif": ".avif",
    "image/heic": ".heic",
    "image/heif": ".heif",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
    "image/svg+xml": ".svg",
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "video/webm": ".webm",
    "video/x-matroska": ".mkv",
    "video/mpeg": ".mpeg",
    "video/3gpp": ".3gp",
    "video/x-m4v": ".m4v",
    "audio/mpeg": ".mp3",
    "audio/mp4": ".m4a",
    "audio/ogg": ".ogg",
    "application/pdf": ".pdf",
    "application/zip": ".zip",
    "application/json": ".json",
    "text/plain": ".txt",
}

# Extension -> Content-Type, for rows whose mime_type says nothing useful.
EXT_TO_MIME: dict[str, str] = {ext: mime for mime, ext in reversed(MIME_TO_EXT.items())}
EXT_TO_MIME.update(
    {
        ".jpeg": "image/jpeg",
        ".jpe": "image/jpeg",
        ".tif": "image/tiff",
        ".mpg": "video/mpeg",
        ".qt": "video/quicktime",
    }
)

_MIME_RE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*\Z")

# How many leading bytes `sniff_ext` needs.
SNIFF_BYTES = 64


def normalize_mime(mime_type: str | None) -> str | None:
    """`type/subtype` lower-cased without parameters, or None when it is not a real type."""
    if not mime_type:
        return None
    base = mime_type.split(";", 1)[0].strip().lower()
    if not _MIME_RE.match(base) or base in OCTET_STREAM_TYPES:
        return None
    return base


def ext_for_mime(mime_type: str | None) -> str | None:
    """The extension implied by a MIME type, or None when the type is unknown."""
    base = normalize_mime(mime_type)
    return MIME_TO_EXT.get(base) if base else None


def sniff_ext(head: bytes) -> str | None:
    """The extension implied by a file's first bytes (JPEG, PNG, GIF, WebP, MP4/MOV, WebM, PDF)."""
    if head.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return ".gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return ".webp"
    if head[4:8] == b"ftyp":
        return ".mov" if head[8:12] == b"qt  " else ".mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return ".webm" if b"webm" in head else ".mkv"
    if head.startswith(b"%PDF-"):
        return ".pdf"
    return None


def needs_sniffing(file_suffix: str, mime_type: str | None) -> bool:
    """Whether `choose_ext` would look at the file's first bytes."""
    suffix = plain_ext(file_suffix)
    return (suffix is None or suffix == FALLBACK_EXT) and ext_for_mime(mime_type) is None


def choose_ext(file_suffix: str, mime_type: str | None, head: bytes) -> str:
    """The object's extension: the file's own suffix when it is a plain one other than `.bin`,
    else the MIME type's, else sniffed, else `.bin`."""
    suffix = plain_ext(file_suffix)
    if suffix and suffix != FALLBACK_EXT:
        return suffix
    return ext_for_mime(mime_type) or sniff_ext(head) or FALLBACK_EXT


# The archive is served (a CDN is planned), so only media types pass through: anything a
# browser would run or render as a page (text/html, SVG with its scripts, JavaScript) is
# stored as opaque bytes.
SERVED_TYPE_PREFIXES = ("image/", "video/", "audio/")
SERVED_TYPES = frozenset({"application/pdf"})
NEVER_SERVED_TYPES = frozenset({"image/svg+xml"})


def served_type(mime: str | None) -> str | None:
    """`mime` when it is a media type archiver lets through, else None."""
    if mime is None or mime in NEVER_SERVED_TYPES:
        return None
    if mime in SERVED_TYPES or mime.startswith(SERVED_TYPE_PREFIXES):
        return mime
    return None


def content_type_for(mime_type: str | None, ext: str) -> str:
    """The object's Content-Type: a real `mime_type`, else what the extension implies, when
    either is a media type of the allow-list; else `application/octet-stream`."""
    return (
        served_type(normalize_mime(mime_type))
        or served_type(EXT_TO_MIME.get(ext))
        or FALLBACK_CONTENT_TYPE
    )
