"""The app's `post_media` schema (`POST_MEDIA_DDL`) and synthetic media caches (tests, demo,
benchmarks). Files are random, incompressible bytes behind a real magic number."""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from archiver.settings import DEFAULT_MULTIPART_THRESHOLD_BYTES

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


CHUNK_BYTES = 8 * 1024 * 1024


def write_media(
    directory: Path, ext: str, size: int, rng: random.Random, name_ext: str | None = None
) -> tuple[Path, str]:
    """Write a media file named `{md5}{name_ext or ext}` in chunks; (path, md5)."""
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5()
    tmp = directory / f".writing-{rng.getrandbits(64):016x}"
    with tmp.open("wb") as f:
        first = file_bytes(ext, min(size, CHUNK_BYTES), rng)
        for chunk in (
            first,
            *(
                rng.randbytes(min(CHUNK_BYTES, size - done))
                for done in range(len(first), size, CHUNK_BYTES)
            ),
        ):
            digest.update(chunk)
            f.write(chunk)
    md5 = digest.hexdigest()
    path = directory / f"{md5}{name_ext if name_ext is not None else ext}"
    tmp.rename(path)
    return path, md5


async def create_schema(conn: object) -> None:
    """Create post_media (`POST_MEDIA_DDL`) on an asyncpg connection."""
    await conn.execute(POST_MEDIA_DDL)  # type: ignore[attr-defined]


async def insert_rows(conn: object, rows: list[SampleRow]) -> None:
    """Insert rows on an asyncpg connection."""
    await conn.executemany(INSERT_SQL, [r.args() for r in rows])  # type: ignore[attr-defined]


def relpath(path: Path, start: Path) -> str:
    """`path` relative to `start` when inside it (as rows store it), else absolute."""
    try:
        return os.path.relpath(path, start) if path.is_relative_to(start) else str(path)
    except ValueError:
        return str(path)


# The awkward cases the demo makes (one row each, a pair for the duplicate), and what
# `archiver upload` must make of each.
DEMO_CASES = {
    "renamed_bin": "local_file_path says {md5}.bin, the file was renamed to {md5}.jpg",
    "sniffed_png": "a .bin file with mime application/octet-stream whose bytes are PNG",
    "by_mime": "no local_file_path: found by md5 + mime type",
    "by_glob": "no mime type: found as {md5}.*",
    "missing": "no file at all (missing_local)",
    "duplicate": "a second row with the same md5 in the same month (one upload)",
    "null_created_at": "created_at is NULL: the file's mtime gives YYYY/MM",
    "corrupt": "the file's bytes do not match md5_sum (never uploaded)",
    "large": "a video above the multipart threshold (uploaded in parts)",
}


@dataclass
class SampleSet:
    """Rows and files made for a demo or a benchmark, and what was made."""

    rows: list[SampleRow]
    made: dict[str, int]
    total_bytes: int

    def expected_outcomes(self) -> dict[str, int]:
        """What `archiver upload` must report for this set (see DEMO_CASES)."""
        missing = self.made.get("missing", 0)
        corrupt = self.made.get("corrupt", 0)
        duplicate = self.made.get("duplicate", 0)
        return {
            "uploaded": len(self.rows) - missing - corrupt - duplicate,
            "skipped_existing": duplicate,
            "missing_local": missing,
            "invalid": 0,
            "corrupt": corrupt,
            "failed": 0,
        }


def _size(rng: random.Random, kind: str, small: bool) -> int:
    if small:
        return {
            "image": rng.randint(20_000, 300_000),
            "video": rng.randint(500_000, 3_000_000),
            "document": rng.randint(30_000, 200_000),
        }[kind]
    return {
        "image": rng.randint(30_000, 1_500_000),
        "video": rng.randint(2_000_000, 40_000_000),
        "document": rng.randint(50_000, 2_000_000),
    }[kind]


_KINDS = {
    "image": (".jpg", "image/jpeg", "images"),
    "video": (".mp4", "video/mp4", "videos"),
    "document": (".pdf", "application/pdf", "documents"),
}


class _Maker:
    """Writes sample files and makes their rows, drawing from one seeded generator."""

    def __init__(self, workdir: Path, cache_root: Path, n: int, rng: random.Random, small: bool):
        self.workdir, self.cache_root, self.n, self.rng, self.small = (
            workdir,
            cache_root,
            n,
            rng,
            small,
        )
        self.rows: list[SampleRow] = []
        self.made: dict[str, int] = {}
        self.total = 0

    def when(self) -> datetime:
        rng = self.rng
        return datetime(
            rng.choice([2024, 2025]),
            rng.randint(1, 12),
            rng.randint(1, 28),
            rng.randint(0, 23),
            rng.randint(0, 59),
        )

    def add(
        self,
        case: str,
        kind: str,
        *,
        size: int | None = None,
        ext: str | None = None,
        name_ext: str | None = None,
        mime: str | None = "",
        local: bool = True,
        created: datetime | None = None,
        write: bool = True,
    ) -> SampleRow:
        default_ext, default_mime, folder = _KINDS[kind]
        ext = ext or default_ext
        data_size = size if size is not None else _size(self.rng, kind, self.small)
        if write:
            path, md5 = write_media(self.cache_root / folder, ext, data_size, self.rng, name_ext)
            self.total += data_size
        else:
            md5 = hashlib.md5(self.rng.randbytes(16)).hexdigest()
            path = self.cache_root / folder / f"{md5}{ext}"
        row = SampleRow(
            media_id=f"med-{len(self.rows):06d}",
            media_type=kind,
            md5_sum=md5,
            mime_type=default_mime if mime == "" else mime,
            local_file_path=relpath(path, self.workdir) if local else None,
            created_at=created if created is not None else self.when(),
            file_size=data_size,
            post_id=f"post-{self.rng.randint(1, max(1, self.n // 3)):05d}",
        )
        self.rows.append(row)
        self.made[case] = self.made.get(case, 0) + 1
        return row

    def awkward(self, large_bytes: int) -> None:
        """One row of each of DEMO_CASES."""
        add = self.add
        row = add("renamed_bin", "image")
        row.local_file_path = str(Path(row.local_file_path or "").with_suffix(".bin"))
        add("sniffed_png", "image", ext=".png", name_ext=".bin", mime="application/octet-stream")
        add("by_mime", "image", local=False)
        add("by_glob", "image", ext=".webp", mime=None, local=False)
        add("missing", "video", write=False)
        first = add("duplicate_first", "video")
        assert first.created_at is not None
        twin = SampleRow(
            f"med-{len(self.rows):06d}",
            "video",
            first.md5_sum,
            "video/mp4",
            None,
            first.created_at.replace(day=min(28, first.created_at.day + 1)),
            first.file_size,
            post_id="post-dup",
        )
        self.rows.append(twin)
        self.made["duplicate"] = 1
        self.made["normal"] = self.made.pop("duplicate_first")
        row = add("null_created_at", "document")
        row.created_at = None
        bad = add("corrupt", "image")
        bad.md5_sum = hashlib.md5((bad.md5_sum or "").encode()).hexdigest()
        add("large", "video", size=large_bytes)


def make_sample_set(
    workdir: Path,
    cache_root: Path,
    n: int,
    *,
    seed: int = 7,
    awkward: bool = True,
    small: bool = True,
    large_bytes: int = DEFAULT_MULTIPART_THRESHOLD_BYTES + 4 * 1024 * 1024,
) -> SampleSet:
    """`n` rows under `cache_root` (paths stored relative to `workdir`): mostly images, some
    videos and documents of realistic sizes, plus one of each DEMO_CASES when `awkward`."""
    maker = _Maker(workdir, cache_root, n, random.Random(seed), small)
    if awkward and n >= len(DEMO_CASES) + 1:
        maker.awkward(large_bytes)
    while len(maker.rows) < n:
        kind = maker.rng.choices(["image", "video", "document"], weights=[85, 10, 5])[0]
        maker.add("normal", kind, local=maker.rng.random() < 0.7)
    return SampleSet(maker.rows, maker.made, maker.total)
