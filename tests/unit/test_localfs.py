"""The local-filesystem adapter: no symlink followed after a file was found, no blocking on
special files, deletes only of the very file proved, restores that leave nothing behind."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from archiver.errors import NotARegularFile
from archiver.localfs import CacheRoot, LocalFile, NewFile


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "cache" / "images" / "sub").mkdir(parents=True)
    return (tmp_path / "cache").resolve()


def test_a_fifo_is_refused_on_the_open_descriptor_without_blocking(root: Path) -> None:
    fifo = root / "images" / "x.jpg"
    os.mkfifo(fifo)  # opening it for reading without O_NONBLOCK would wait for a writer
    with CacheRoot(root) as cache, pytest.raises(NotARegularFile, match="a FIFO"):
        cache.open_file(fifo)


def test_a_directory_swapped_for_a_symlink_is_not_followed(root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.jpg").write_bytes(b"outside")
    sub = root / "images" / "sub"
    sub.rmdir()
    sub.symlink_to(elsewhere)
    with CacheRoot(root) as cache, pytest.raises(OSError):
        cache.open_file(sub / "x.jpg")


def test_delete_goes_through_the_held_directory_even_after_a_swap(
    root: Path, tmp_path: Path
) -> None:
    sub = root / "images" / "sub"
    (sub / "x.jpg").write_bytes(b"proved")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.jpg").write_bytes(b"important")
    with CacheRoot(root) as cache, cache.open_file(sub / "x.jpg") as f:
        assert f.read_all() == b"proved"
        sub.rename(root / "images" / "sub.orig")
        sub.symlink_to(elsewhere)  # the swap, between the check and the delete
        assert f.unlink_if_unchanged() == "deleted"
    assert (elsewhere / "x.jpg").read_bytes() == b"important"
    assert not (root / "images" / "sub.orig" / "x.jpg").exists()


def test_nothing_is_deleted_when_the_name_now_names_another_file(root: Path) -> None:
    path = root / "images" / "x.jpg"
    path.write_bytes(b"proved")
    with CacheRoot(root) as cache, cache.open_file(path) as f:
        path.unlink()
        path.write_bytes(b"a new file under the same name")
        assert f.unlink_if_unchanged() == "changed"
    assert path.read_bytes() == b"a new file under the same name"
    with CacheRoot(root) as cache, cache.open_file(path) as f:
        path.unlink()
        assert f.unlink_if_unchanged() == "gone"


def test_two_rows_sharing_a_file_delete_it_at_once_as_deleted_and_gone(root: Path) -> None:
    # prune-local proves and deletes two rows sharing one file concurrently: the loser must
    # see the file "gone", never "changed" (which would keep a row and exit 1).
    path = root / "images" / "shared.jpg"
    with CacheRoot(root) as cache:
        for _ in range(300):
            path.write_bytes(b"shared")
            a, b = cache.open_file(path), cache.open_file(path)
            barrier = threading.Barrier(2)
            outcomes: list[str] = []

            def delete(
                f: LocalFile, barrier: threading.Barrier = barrier, outcomes: list[str] = outcomes
            ) -> None:
                barrier.wait()
                outcomes.append(f.unlink_if_unchanged())

            threads = [threading.Thread(target=delete, args=(f,)) for f in (a, b)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            a.close()
            b.close()
            assert sorted(outcomes) == ["deleted", "gone"]


def test_a_new_file_has_no_name_until_published_and_never_replaces_one(root: Path) -> None:
    with CacheRoot(root) as cache:
        dir_fd = cache.open_dir(["videos"], create=True)
        try:
            unpublished = NewFile(dir_fd, "a.mp4")
            unpublished.write(b"half")
            assert list((root / "videos").iterdir()) == []  # nothing named while written
            unpublished.close()
            assert list((root / "videos").iterdir()) == []
            first = NewFile(dir_fd, "a.mp4")
            first.write(b"first")
            assert first.publish()
            first.close()
            second = NewFile(dir_fd, "a.mp4")
            second.write(b"second")
            assert not second.publish()  # the name is taken: nothing replaced
            second.close()
        finally:
            os.close(dir_fd)
    assert [p.name for p in (root / "videos").iterdir()] == ["a.mp4"]
    assert (root / "videos" / "a.mp4").read_bytes() == b"first"


def test_open_dir_refuses_a_symlinked_directory_and_odd_names(root: Path, tmp_path: Path) -> None:
    (root / "documents").symlink_to(tmp_path)
    with CacheRoot(root) as cache:
        for parts in (["documents"], [".."], ["images/sub"]):
            with pytest.raises(OSError):
                cache.open_dir(parts, create=True)
