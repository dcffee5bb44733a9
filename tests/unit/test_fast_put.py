"""The PutObject fast path's request bodies, read and rewound as botocore reads a file, and
written as aiohttp writes a payload."""

from __future__ import annotations

from pathlib import Path

import pytest

from archiver.localfs import CacheRoot
from archiver.storage_fast_put import Body, FileBody


class Writer:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    async def write(self, chunk: bytes | memoryview) -> None:
        self.chunks.append(bytes(chunk))


DATA = bytes(range(256)) * 10_000  # 2.4 MiB


async def test_a_body_payload_reads_and_rewinds_like_a_file() -> None:
    body = Body(DATA)
    assert len(body) == len(DATA) and body.tell() == 0
    assert body.read(10) == DATA[:10] and body.tell() == 10
    assert body.seek(0, 2) == len(DATA) and body.read() == b""
    assert body.seek(0) == 0 and body.read() == DATA

    writer = Writer()
    await body.write(writer)  # type: ignore[arg-type]
    assert b"".join(writer.chunks) == DATA and len(writer.chunks) == 3  # 1 MiB slices


async def test_a_file_body_streams_the_file_a_chunk_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(DATA)
    with CacheRoot(tmp_path) as cache, cache.open_file(path) as f:
        body = FileBody(f, f.size)
        assert len(body) == len(DATA)
        assert body.read(10) == DATA[:10] and body.tell() == 10
        assert body.seek(0) == 0 and body.read() == DATA
        for _ in range(2):  # a retry writes it again, from the start
            writer = Writer()
            await body.write(writer)  # type: ignore[arg-type]
            assert b"".join(writer.chunks) == DATA and len(writer.chunks) == 3

        path.write_bytes(DATA[:1000])  # truncated (same inode) after it was hashed
        with pytest.raises(OSError, match="shrank"):
            await body.write(Writer())  # type: ignore[arg-type]
