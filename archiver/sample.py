"""The `post_media` schema of the feature notes and synthetic media caches (tests, demo,
benchmarks). Files are random, incompressible bytes behind a real magic number."""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

POST_MEDIA_DDL = """
CREATE TABLE IF NOT EXISTS post_media (
    media_id TEXT PRIMARY KEY,
    post_id TEXT NOT NULL,
    media_type TEXT NOT NULL,
    media_url TEXT NOT NULL,
    local_file_path TEXT,
    md5_sum TEXT,
    file_size INTEGER,
    mime_type TEXT,
    width INTEGER,
    height INTEGER,
    archive_url TEXT,
    created_at TIMESTAMP,
    updated_at TIMESTAMP
);
CREATE INDEX IF NOT EXISTS idx_media_archive_url ON post_media(archive_url)
    WHERE archive_url IS NOT NULL;
"""

INSERT_SQL = """
INSERT INTO post_media (media_id, post_id, media_type, media_url, local_file_path, md5_sum,
                        file_size, mime_type, archive_url, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
"""

MAGIC = {
    ".jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    ".png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    ".gif": b"GIF89a\x01\x00\x01\x00",
    ".webp": b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    ".mp4": b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00",
    ".mov": b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00",
    ".webm": b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01webm",
    ".pdf": b"%PDF-1.7\n",
}


@dataclass
class SampleRow:
    """A row to insert, with the file (if any) it points at."""

    media_id: str
    media_type: str
    md5_sum: str | None
    mime_type: str | None
    local_file_path: str | None
    created_at: datetime | None
    file_size: int | None = None
    archive_url: str | None = None
    post_id: str = "post-1"

    def args(self) -> tuple[object, ...]:
        return (
            self.media_id,
            self.post_id,
            self.media_type,
            f"https://example.invalid/{self.media_id}",
            self.local_file_path,
            self.md5_sum,
            self.file_size,
            self.mime_type,
            self.archive_url,
            self.created_at,
        )


def file_bytes(ext: str, size: int, rng: random.Random) -> bytes:
    """`size` bytes starting with the magic number of `ext` (when it has one)."""
    magic = MAGIC.get(ext, b"")[:size]
    return magic + rng.randbytes(size - len(magic))


def write_media(
    directory: Path, ext: str, size: int, rng: random.Random, name_ext: str | None = None
) -> tuple[Path, str]:
    """Write a media file named `{md5}{name_ext or ext}`; (path, md5)."""
    data = file_bytes(ext, size, rng)
    md5 = hashlib.md5(data).hexdigest()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{md5}{name_ext if name_ext is not None else ext}"
    path.write_bytes(data)
    return path, md5


async def create_schema(conn: object) -> None:
    """Create post_media (feature notes' schema) on an asyncpg connection."""
    await conn.execute(POST_MEDIA_DDL)  # type: ignore[attr-defined]


async def insert_rows(conn: object, rows: list[SampleRow]) -> None:
    """Insert rows on an asyncpg connection."""
    await conn.executemany(INSERT_SQL, [r.args() for r in rows])  # type: ignore[attr-defined]


def human(nbytes: float) -> str:
    """`1.5 MB` style sizes."""
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:,.0f} {unit}" if unit == "B" else f"{nbytes:,.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:,.1f} GB"


def relpath(path: Path, start: Path) -> str:
    """`path` relative to `start` when inside it (as rows store it), else absolute."""
    try:
        return os.path.relpath(path, start) if path.is_relative_to(start) else str(path)
    except ValueError:
        return str(path)
