"""Pure rules: keys, dates, MD5 validation, extensions, content types, sniffing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from archiver.content_types import choose_ext, content_type_for, ext_for_mime, sniff_ext
from archiver.demo.sample import MAGIC
from archiver.keys import (
    NotOurs,
    archive_url,
    archived_key,
    as_utc,
    normalize_md5,
    object_key,
    plain_ext,
)

MD5 = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (MD5, MD5),
        (MD5.upper(), MD5),
        (f"  {MD5}\n", MD5),
        (None, None),
        ("", None),
        (MD5[:-1], None),
        (MD5 + "0", None),
        ("g" * 32, None),
        ("../" + MD5[3:], None),
    ],
)
def test_normalize_md5(raw: str | None, expected: str | None) -> None:
    assert normalize_md5(raw) == expected


@pytest.mark.parametrize(
    ("created_at", "mtime", "expected"),
    [
        (datetime(2025, 12, 31, 23, 30), 0.0, datetime(2025, 12, 31, 23, 30, tzinfo=UTC)),
        # an aware timestamp is converted: 00:30 at +02:00 is still December in UTC
        (
            datetime(2026, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=2))),
            0.0,
            datetime(2025, 12, 31, 22, 30, tzinfo=UTC),
        ),
        (None, 1707566400.0, datetime(2024, 2, 10, 12, 0, tzinfo=UTC)),
    ],
)
def test_as_utc(created_at: datetime | None, mtime: float, expected: datetime) -> None:
    assert as_utc(created_at, mtime) == expected


@pytest.mark.parametrize(
    ("prefix", "when", "ext", "key"),
    [
        ("cache", datetime(2025, 12, 3, tzinfo=UTC), ".jpg", f"cache/2025/12/{MD5}.jpg"),
        ("cache", datetime(2024, 2, 1, tzinfo=UTC), ".pdf", f"cache/2024/02/{MD5}.pdf"),
        ("media/cache", datetime(999, 1, 1, tzinfo=UTC), ".bin", f"media/cache/0999/01/{MD5}.bin"),
    ],
)
def test_object_key(prefix: str, when: datetime, ext: str, key: str) -> None:
    assert object_key(prefix, when, MD5, ext) == key
    assert archive_url("social-tui", key) == f"s3://social-tui/{key}"
    got = archived_key(
        f"s3://social-tui/{key}", bucket="social-tui", prefix=prefix, md5=MD5, created_at=when
    )
    assert got == key  # what upload records, the other commands accept


DEC = datetime(2025, 12, 3, 10, 0)


@pytest.mark.parametrize(
    ("url", "created_at", "why"),
    [
        (None, DEC, "not archived"),
        ("s3://other-bucket/private/payroll.csv", DEC, "not under s3://social-tui/cache/"),
        (f"s3://other-bucket/cache/2025/12/{MD5}.jpg", DEC, "not under"),
        (f"s3://social-tui/other/2025/12/{MD5}.jpg", DEC, "not under"),
        (f"s3://social-tui/cache/../private/{MD5}.jpg", DEC, "does not end in"),
        (f"s3://social-tui/cache/2025/12/sub/{MD5}.jpg", DEC, "does not end in"),
        (f"s3://social-tui/cache/2025/12/{MD5}", DEC, "does not end in"),
        (f"s3://social-tui/cache/2025/12/{MD5}.j pg", DEC, "does not end in"),
        (f"s3://social-tui/cache/2025/12/{MD5.upper()}.jpg", DEC, "does not end in"),
        (f"s3://social-tui/cache/2025/12/{'f' * 32}.jpg", DEC, "names another file's MD5"),
        (f"s3://social-tui/cache/2025/13/{MD5}.jpg", None, "no real month"),
        (f"s3://social-tui/cache/2025/11/{MD5}.jpg", DEC, "filed under 2025/11"),
        ("https://social-tui.s3.amazonaws.com/cache/2025/12/x.jpg", DEC, "not under"),
        ("", DEC, "not under"),
    ],
)
def test_archived_key_refuses_what_archiver_would_not_have_made(
    url: str | None, created_at: datetime | None, why: str
) -> None:
    got = archived_key(url, bucket="social-tui", prefix="cache", md5=MD5, created_at=created_at)
    assert isinstance(got, NotOurs) and why in got.reason, got


def test_archived_key_takes_the_month_from_the_url_when_created_at_is_null() -> None:
    url = f"s3://social-tui/media/cache/2019/07/{MD5}.webm"
    got = archived_key(url, bucket="social-tui", prefix="media/cache", md5=MD5, created_at=None)
    assert got == f"media/cache/2019/07/{MD5}.webm"


@pytest.mark.parametrize(
    ("suffix", "plain"),
    [
        (".jpg", ".jpg"),
        (".JPEG", ".jpeg"),
        (".mp4", ".mp4"),
        ("", None),
        (".", None),
        (".j\udcffg", None),
        (".j pg", None),
        (".tar.gz", None),
        (".x" * 20, None),
        (".é", None),
    ],
)
def test_plain_ext(suffix: str, plain: str | None) -> None:
    assert plain_ext(suffix) == plain


@pytest.mark.parametrize(
    ("mime", "ext"),
    [
        ("image/jpeg", ".jpg"),
        ("IMAGE/JPEG; charset=binary", ".jpg"),
        ("image/png", ".png"),
        ("video/mp4", ".mp4"),
        ("video/quicktime", ".mov"),
        ("application/pdf", ".pdf"),
        ("application/octet-stream", None),
        ("binary/octet-stream", None),
        ("", None),
        (None, None),
        ("not a type", None),
        ("image/x-unknown", None),
    ],
)
def test_ext_for_mime(mime: str | None, ext: str | None) -> None:
    assert ext_for_mime(mime) == ext


@pytest.mark.parametrize("ext", sorted(MAGIC))
def test_sniff_recognises_every_magic_number(ext: str) -> None:
    assert sniff_ext(MAGIC[ext] + b"\x00" * 64) == ext


@pytest.mark.parametrize("head", [b"", b"hello world", b"\x00" * 64, b"RIFF\x00\x00\x00\x00AVI "])
def test_sniff_unknown(head: bytes) -> None:
    assert sniff_ext(head) is None


@pytest.mark.parametrize(
    ("suffix", "mime", "head", "ext"),
    [
        (".jpg", "image/png", MAGIC[".png"], ".jpg"),  # the file's own suffix wins
        (".JPEG", None, b"", ".jpeg"),  # lower-cased, kept as it is
        (".bin", "image/png", MAGIC[".jpg"], ".png"),  # then the mime type
        ("", "video/mp4", b"", ".mp4"),
        (".bin", "application/octet-stream", MAGIC[".png"], ".png"),  # then sniffing
        (".BIN", None, MAGIC[".pdf"], ".pdf"),
        (".bin", None, b"plain text", ".bin"),  # else .bin
        ("", None, b"", ".bin"),
        (".j\udcffg", "image/jpeg", b"", ".jpg"),  # a name that is not UTF-8: not in a key
        (".j\udcffg", None, MAGIC[".png"], ".png"),
        (".a b", None, b"", ".bin"),
    ],
)
def test_choose_ext(suffix: str, mime: str | None, head: bytes, ext: str) -> None:
    assert choose_ext(suffix, mime, head) == ext


@pytest.mark.parametrize(
    ("mime", "ext", "content_type"),
    [
        ("image/jpeg", ".jpg", "image/jpeg"),
        ("image/webp", ".jpg", "image/webp"),  # a real mime_type is kept
        ("application/octet-stream", ".png", "image/png"),
        ("binary/octet-stream", ".mp4", "video/mp4"),
        (None, ".jpeg", "image/jpeg"),
        ("", ".pdf", "application/pdf"),
        (None, ".bin", "application/octet-stream"),
        ("garbage", ".gif", "image/gif"),
        # Only media types are stored as such: the archive is served (a CDN is planned).
        ("text/html", ".bin", "application/octet-stream"),
        ("text/html", ".jpg", "image/jpeg"),
        ("application/javascript", ".bin", "application/octet-stream"),
        ("image/svg+xml", ".svg", "application/octet-stream"),  # SVG runs scripts
        ("audio/mpeg", ".mp3", "audio/mpeg"),
        ("application/pdf", ".pdf", "application/pdf"),
        (None, ".json", "application/octet-stream"),
        ("text/plain", ".txt", "application/octet-stream"),
    ],
)
def test_content_type_for(mime: str | None, ext: str, content_type: str) -> None:
    assert content_type_for(mime, ext) == content_type
