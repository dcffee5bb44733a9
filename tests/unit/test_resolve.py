"""Which local file a row means, and confinement to the cache root."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pytest

from archiver.models import MediaRow
from archiver.resolve import INDEX_MAX_AGE_S, Found, NotFound, PathRefused, Resolver, resolve_file

MD5 = "0123456789abcdef0123456789abcdef"


def row(
    local: str | None = None, mime: str | None = "image/jpeg", media_type: str = "image"
) -> MediaRow:
    return MediaRow("m1", media_type, local, MD5, mime, datetime(2025, 1, 1))


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "cache" / "media"
    (root / "images").mkdir(parents=True)
    (root / "videos").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    return {"cwd": tmp_path, "root": root.resolve(), "images": root / "images", "outside": outside}


def touch(p: Path, data: bytes = b"x") -> Path:
    p.write_bytes(data)
    return p


# (files to create under images/, the row, expected kind, expected file name or reason part)
CASES = [
    (["{md5}.jpg"], row(local="cache/media/images/{md5}.jpg"), Found, "{md5}.jpg"),
    (["{md5}.jpg"], row(local="cache/media/images/{md5}.bin"), Found, "{md5}.jpg"),
    (["{md5}.png"], row(local=None, mime="image/png"), Found, "{md5}.png"),
    (["{md5}.bin", "{md5}.webp"], row(mime=None), Found, "{md5}.webp"),  # non-.bin preferred
    (["{md5}.bin"], row(mime="application/octet-stream"), Found, "{md5}.bin"),
    (["{md5}.png", "{md5}.gif"], row(mime=None), Found, "{md5}.gif"),  # name order
    (["{md5}.png", "{md5}.jpg"], row(mime="image/jpeg"), Found, "{md5}.jpg"),  # mime first
    ([], row(), NotFound, "no local file"),
    (["other.jpg"], row(), NotFound, "no local file"),
    ([], row(media_type="../x"), PathRefused, "plain word"),
    ([], row(media_type="Image Files"), PathRefused, "plain word"),
]


@pytest.mark.parametrize(("files", "the_row", "kind", "expect"), CASES)
def test_lookup_order(
    layout: dict[str, Path], files: list[str], the_row: MediaRow, kind: type, expect: str
) -> None:
    for name in files:
        touch(layout["images"] / name.format(md5=MD5))
    if the_row.local_file_path:
        the_row = MediaRow(
            the_row.media_id,
            the_row.media_type,
            the_row.local_file_path.format(md5=MD5),
            the_row.md5_sum,
            the_row.mime_type,
            the_row.created_at,
        )
    result = resolve_file(the_row, MD5, layout["root"], layout["cwd"])
    assert isinstance(result, kind), result
    if isinstance(result, Found):
        assert result.path.name == expect.format(md5=MD5)
        assert result.path.is_relative_to(layout["root"])
    else:
        assert expect in result.reason


def test_absolute_path_outside_root_is_refused_and_no_other_lookup_is_tried(layout) -> None:
    outside = touch(layout["outside"] / f"{MD5}.jpg")
    touch(layout["images"] / f"{MD5}.jpg")  # a good file exists too, but must not be used
    result = resolve_file(row(local=str(outside)), MD5, layout["root"], layout["cwd"])
    assert isinstance(result, PathRefused) and "outside the cache root" in result.reason


def test_relative_escape_is_refused(layout) -> None:
    touch(layout["outside"] / f"{MD5}.jpg")
    local = f"cache/media/images/../../../outside/{MD5}.jpg"
    result = resolve_file(row(local=local), MD5, layout["root"], layout["cwd"])
    assert isinstance(result, PathRefused)


def test_symlink_leading_out_is_refused(layout) -> None:
    target = touch(layout["outside"] / "secret.jpg")
    (layout["images"] / f"{MD5}.jpg").symlink_to(target)
    result = resolve_file(row(), MD5, layout["root"], layout["cwd"])
    assert isinstance(result, PathRefused)


def test_symlink_inside_root_is_followed(layout) -> None:
    target = touch(layout["root"] / "videos" / "real.jpg")
    (layout["images"] / f"{MD5}.jpg").symlink_to(target)
    result = resolve_file(row(), MD5, layout["root"], layout["cwd"])
    assert isinstance(result, Found) and result.path == target.resolve()


def test_directory_is_refused(layout) -> None:
    (layout["images"] / f"{MD5}.jpg").mkdir()
    result = resolve_file(row(), MD5, layout["root"], layout["cwd"])
    assert isinstance(result, PathRefused) and "regular file" in result.reason


def test_dangling_symlink_is_not_found(layout) -> None:
    (layout["images"] / f"{MD5}.jpg").symlink_to(layout["outside"] / "gone.jpg")
    result = resolve_file(row(), MD5, layout["root"], layout["cwd"])
    assert isinstance(result, NotFound)


def test_missing_local_file_path_falls_through(layout) -> None:
    touch(layout["images"] / f"{MD5}.jpg")
    result = resolve_file(row(local="nowhere/x.jpg"), MD5, layout["root"], layout["cwd"])
    assert isinstance(result, Found) and result.via == "mime_type"


def test_missing_files_cost_one_listing_per_directory_not_one_per_row(layout) -> None:
    import hashlib

    for i in range(500):
        touch(layout["images"] / f"{hashlib.md5(str(i).encode()).hexdigest()}.jpg")
    listings: list[Path] = []

    def listdir(path: Path) -> list[str]:
        listings.append(path)
        return os.listdir(path)

    now = [0.0]
    resolver = Resolver(layout["root"], layout["cwd"], clock=lambda: now[0], listdir=listdir)
    for i in range(1000):  # rows whose files are missing: step 3 looks at every name
        missing = hashlib.md5(f"missing-{i}".encode()).hexdigest()
        assert isinstance(resolver.resolve(row(mime=None), missing), NotFound)
    assert len(listings) == 1

    # A file that appears later is found once the listing is older than INDEX_MAX_AGE_S.
    late = hashlib.md5(b"late").hexdigest()
    touch(layout["images"] / f"{late}.webp")
    now[0] += INDEX_MAX_AGE_S
    found = resolver.resolve(row(mime=None), late)
    assert isinstance(found, Found) and found.path.name == f"{late}.webp"
    assert len(listings) == 2


@pytest.mark.parametrize(
    "local", ["x" * 300, "cache/media/images/" + "y" * 300, "a\x00b", "/" + "d/" * 3000]
)
def test_a_path_that_cannot_be_looked_up_is_refused_not_raised(layout, local: str) -> None:
    result = resolve_file(row(local=local), MD5, layout["root"], layout["cwd"])
    assert isinstance(result, PathRefused) and "cannot be looked up" in result.reason


def test_a_fifo_is_refused(layout) -> None:
    os.mkfifo(layout["images"] / f"{MD5}.jpg")
    result = resolve_file(row(), MD5, layout["root"], layout["cwd"])
    assert isinstance(result, PathRefused) and "regular file" in result.reason
