"""prune-local's decisions, one row at a time, against an in-memory object store and a real
cache directory: a file is deleted only when its row, its own bytes and its object were all
proved in this run; every other row keeps its file and says why."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from archiver.commands.prune_local import PruneReport, _Pruner
from archiver.errors import AccessDenied
from archiver.localfs import CacheRoot
from archiver.models import MediaRow, ObjectInfo, ProblemKind
from archiver.resolve import open_cache_root, resolver_for
from archiver.settings import Settings
from tests.helpers import archived_row

WHEN = datetime(2025, 3, 4, 5, 6, 7)
BODY = b"a picture\n" * 100
MD5 = hashlib.md5(BODY).hexdigest()
KEY = f"cache/2025/03/{MD5}.jpg"


@dataclass
class FakeHeads:
    """What HEAD answers, by key; a key in `denied` answers 403."""

    objects: dict[str, ObjectInfo] = field(default_factory=dict)
    denied: set[str] = field(default_factory=set)

    async def head_object(self, key: str) -> ObjectInfo | None:
        if key in self.denied:
            raise AccessDenied(f"S3 denied HeadObject of s3://bucket/{key}")
        return self.objects.get(key)


INTACT = ObjectInfo(len(BODY), MD5, {})


@dataclass
class Rig:
    root: Path
    settings: Settings
    cache: CacheRoot
    store: FakeHeads

    def pruner(self, *, needed: set[bytes] = frozenset(), dry_run: bool = False) -> _Pruner:
        return _Pruner(
            self.settings,
            self.store,
            self.cache,
            resolver_for(self.settings, self.cache.path, self.root.parent.parent),
            needed=set(needed),
            report=PruneReport(dry_run=dry_run),
        )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    root = tmp_path / "cache" / "media"
    (root / "images").mkdir(parents=True)
    (root / "images" / f"{MD5}.jpg").write_bytes(BODY)
    settings = Settings(bucket="bucket", cache_root=root)
    with open_cache_root(settings) as cache:
        yield Rig(root, settings, cache, FakeHeads({KEY: INTACT}))


def archived(**kw: object) -> MediaRow:
    return archived_row(MD5, KEY, **kw)


async def test_a_proved_file_is_deleted(rig: Rig) -> None:
    pruner = rig.pruner()
    assert await pruner.prune(archived()) == len(BODY)
    assert not (rig.root / "images" / f"{MD5}.jpg").exists()
    assert pruner.report.deleted == 1 and pruner.report.kept == []


async def test_a_dry_run_lists_it_and_deletes_nothing(rig: Rig) -> None:
    pruner = rig.pruner(dry_run=True)
    assert await pruner.prune(archived()) == len(BODY)  # the bytes it would free
    assert (rig.root / "images" / f"{MD5}.jpg").exists()
    assert list(pruner.report.would_delete.values()) == [len(BODY)]
    # A second row of the same file: counted as a real run would find it (gone), once.
    assert await pruner.prune(archived(media_id="m2")) == 0
    report = pruner.report
    assert (report.checked, len(report.would_delete), report.missing_local) == (2, 1, 1)


def corrupt_the_file(rig: Rig) -> None:
    (rig.root / "images" / f"{MD5}.jpg").write_bytes(BODY[:-1] + b"?")


def link_the_file(rig: Rig) -> None:
    (rig.root / "shared").mkdir()
    (rig.root / "images" / f"{MD5}.jpg").rename(rig.root / "shared" / "x.jpg")
    (rig.root / "images" / f"{MD5}.jpg").symlink_to(rig.root / "shared" / "x.jpg")


@pytest.mark.parametrize(
    ("row", "change", "kind", "says"),
    [
        # 1. archive_url is not the object archiver would have made for the row
        (archived(archive_url="s3://elsewhere/x.jpg"), None, ProblemKind.INVALID, "bucket"),
        (archived(md5_sum="not-an-md5"), None, ProblemKind.INVALID, "md5_sum"),
        # 2. the file is reached through a symlink below the cache root
        (archived(), link_the_file, ProblemKind.KEPT_SYMLINK, "symlink"),
        # 3. the local file's own bytes are not md5_sum
        (archived(), corrupt_the_file, ProblemKind.KEPT_UNVERIFIED, "local file"),
        # 4. the object is missing, not intact, or cannot be read
        (archived(), lambda r: r.store.objects.clear(), ProblemKind.KEPT_UNVERIFIED, KEY),
        (
            archived(),
            lambda r: r.store.objects.update({KEY: ObjectInfo(len(BODY) - 1, MD5, {})}),
            ProblemKind.KEPT_UNVERIFIED,
            "size",
        ),
        (
            archived(),
            lambda r: r.store.objects.update({KEY: ObjectInfo(len(BODY), "0" * 32, {})}),
            ProblemKind.KEPT_UNVERIFIED,
            KEY,
        ),
        (
            archived(),
            lambda r: r.store.objects.update({KEY: ObjectInfo(len(BODY), "abc-2", {})}),
            ProblemKind.KEPT_UNVERIFIED,
            KEY,  # another tool's multipart object without the MD5 archiver records
        ),
        (archived(), lambda r: r.store.denied.add(KEY), ProblemKind.KEPT_UNVERIFIED, "denied"),
    ],
)
async def test_a_file_not_proved_is_kept(
    rig: Rig, row: MediaRow, change: object, kind: ProblemKind, says: str
) -> None:
    if callable(change):
        change(rig)
    pruner = rig.pruner()
    assert await pruner.prune(row) == 0
    (problem,) = pruner.report.kept
    assert problem.kind is kind and says in problem.detail, problem
    assert (rig.root / "images" / f"{MD5}.jpg").exists()
    assert pruner.report.deleted == 0


async def test_a_file_a_row_not_yet_archived_needs_is_kept(rig: Rig) -> None:
    pruner = rig.pruner(needed={bytes.fromhex(MD5)})
    assert await pruner.prune(archived()) == 0
    assert [p.kind for p in pruner.report.kept] == [ProblemKind.KEPT_NEEDED]
    assert (rig.root / "images" / f"{MD5}.jpg").exists()


async def test_a_missing_file_is_counted_not_kept(rig: Rig) -> None:
    (rig.root / "images" / f"{MD5}.jpg").unlink()
    pruner = rig.pruner()
    assert await pruner.prune(archived()) == 0
    assert pruner.report.missing_local == 1 and pruner.report.kept == []


async def test_a_path_outside_the_cache_root_is_never_touched(rig: Rig, tmp_path: Path) -> None:
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(BODY)
    pruner = rig.pruner()
    await pruner.prune(archived(local_file_path=str(outside)))
    assert outside.exists()
    assert pruner.report.deleted <= 1  # the file under the root may go; the outside one never
