"""The PutObject fast path's request body, read and rewound as botocore reads a file."""

from __future__ import annotations

from archiver.storage_fast_put import Body


async def test_a_body_payload_reads_and_rewinds_like_a_file() -> None:
    data = bytes(range(256)) * 10_000
    body = Body(data)
    assert len(body) == len(data) and body.tell() == 0
    assert body.read(10) == data[:10] and body.tell() == 10
    assert body.seek(0, 2) == len(data) and body.read() == b""
    assert body.seek(0) == 0 and body.read() == data

    class Writer:
        def __init__(self) -> None:
            self.chunks: list[bytes] = []

        async def write(self, chunk: memoryview) -> None:
            self.chunks.append(bytes(chunk))

    writer = Writer()
    await body.write(writer)  # type: ignore[arg-type]
    assert b"".join(writer.chunks) == data and len(writer.chunks) == 3  # 1 MiB slices
