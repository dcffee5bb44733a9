"""The archive as a round trip: upload, prune-local, restore, against the real services."""

from __future__ import annotations

import json
import random
from datetime import datetime
from pathlib import Path

from archiver.demo.sample import SampleRow, file_bytes, insert_rows
from archiver.settings import MIB
from tests.helpers import both_servers, build_contract_cases, insert_cases, md5, media_file, run_cli
from tests.proxy import CorruptResponse


def cache_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


async def archived(db) -> list:
    return await db.fetch("SELECT * FROM post_media WHERE archive_url IS NOT NULL")


@both_servers
async def test_upload_prune_restore_round_trips_every_file(env, db, s3) -> None:
    rng = random.Random(70)
    cases = build_contract_cases(env, rng)
    big = file_bytes(".mp4", 9 * MIB, rng)
    media_file(env.cache_root / "videos", f"{md5(big)}.mp4", big)
    await insert_cases(db, cases)
    await insert_rows(
        db, [SampleRow("big", "video", md5(big), "video/mp4", None, datetime(2025, 2, 2))]
    )
    out = run_cli(env, "upload", "--json", "--multipart-threshold", "5", "--part-size", "5")
    assert out.returncode == 0, out.stderr
    rows = await archived(db)
    contents = {r["md5_sum"].lower(): None for r in rows}
    for case in cases:
        if case.key:
            contents[case.row.md5_sum.lower()] = case.data
    contents[md5(big)] = big
    before = len(cache_files(env.cache_root))

    out = run_cli(env, "prune-local", "--dry-run", "--json")
    assert out.returncode == 0, out.stderr
    dry = json.loads(out.stdout)
    assert dry["deleted"] == 0 and dry["would_delete"] == len(contents)
    assert dry["bytes_would_free"] == sum(len(v) for v in contents.values())
    assert len(cache_files(env.cache_root)) == before  # a dry run deletes nothing

    out = run_cli(env, "prune-local", "--json")
    assert out.returncode == 0, out.stderr
    pruned = json.loads(out.stdout)
    assert pruned["deleted"] == len(contents)  # one file per distinct object
    assert pruned["bytes_freed"] == sum(len(v) for v in contents.values())
    assert pruned["kept_unverified"] == 0
    assert pruned["checked"] == len(rows)
    assert cache_files(env.cache_root) == {}
    assert await db.fetchval("SELECT count(archive_url) FROM post_media") == len(rows)

    out = run_cli(env, "restore", "--all-missing", "--json", "--concurrency", "4")
    assert out.returncode == 0, out.stderr
    restored = json.loads(out.stdout)
    assert restored["restored"] == len(contents) and restored["failed"] == 0
    # The two rows sharing a file: the second is selected only if it is looked at before
    # the first one's file is back (both are checked concurrently).
    assert len(rows) - 1 <= restored["selected"] <= len(rows)
    assert restored["selected"] == restored["restored"] + restored["already_present"]
    for r in rows:
        # Back where the app looks: its local_file_path (all of this test's are inside the
        # cache root), else the canonical name.
        key = r["archive_url"].split("/", 3)[3]
        path = env.cache_root / f"{r['media_type']}s" / f"{r['md5_sum'].lower()}{Path(key).suffix}"
        if r["local_file_path"]:
            path = env.workdir / r["local_file_path"]
        assert path.read_bytes() == contents[r["md5_sum"].lower()], r["media_id"]
    leftovers = [p for p in env.cache_root.rglob(".*restore-*")]
    assert leftovers == []

    out = run_cli(env, "restore", "--all-missing", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["selected"] == 0


async def upload_three(env, db) -> list[SampleRow]:
    rng = random.Random(71)
    rows = []
    for i in range(3):
        data = file_bytes(".jpg", 3000 + i, rng)
        media_file(env.cache_root / "images", f"{md5(data)}.jpg", data)
        rows.append(
            SampleRow(f"p{i}", "image", md5(data), "image/jpeg", None, datetime(2025, 4, 4))
        )
    await insert_rows(db, rows)
    out = run_cli(env, "upload", "--json")
    assert out.returncode == 0, out.stderr
    return rows


@both_servers
async def test_prune_keeps_files_whose_object_is_gone_or_different(env, db, s3) -> None:
    rows = await upload_three(env, db)
    keys = [f"cache/2025/04/{r.md5_sum}.jpg" for r in rows]
    s3.delete_object(Bucket=env.bucket, Key=keys[0])
    s3.put_object(Bucket=env.bucket, Key=keys[1], Body=b"something else")

    out = run_cli(env, "prune-local", "--json")
    assert out.returncode == 1
    result = json.loads(out.stdout)
    assert (result["deleted"], result["kept_unverified"]) == (1, 2)
    assert {k["media_id"] for k in result["kept"]} == {"p0", "p1"}
    for r, kept in zip(rows, (True, True, False), strict=True):
        assert (env.cache_root / "images" / f"{r.md5_sum}.jpg").exists() == kept


@both_servers
async def test_prune_never_deletes_outside_the_cache_root(env, db, s3) -> None:
    rows = await upload_three(env, db)
    outside = env.workdir / "outside"
    outside.mkdir()
    # p0: its row now points at a copy outside the cache root
    original = env.cache_root / "images" / f"{rows[0].md5_sum}.jpg"
    copy = outside / original.name
    copy.write_bytes(original.read_bytes())
    original.unlink()
    await db.execute("UPDATE post_media SET local_file_path = $1 WHERE media_id = 'p0'", str(copy))
    # p1: its cache entry is a symlink to a file outside the cache root
    inside = env.cache_root / "images" / f"{rows[1].md5_sum}.jpg"
    target = outside / "p1.jpg"
    target.write_bytes(inside.read_bytes())
    inside.unlink()
    inside.symlink_to(target)
    # p2: a symlink inside the cache root: never deleted through
    real = env.cache_root / "images" / f"{rows[2].md5_sum}.jpg"
    moved = env.cache_root / "documents" / "real.jpg"
    real.rename(moved)
    real.symlink_to(moved)

    out = run_cli(env, "prune-local", "--json")
    result = json.loads(out.stdout)
    assert out.returncode == 1
    # p0 and p1 name files outside the root: invalid rows; p2 is kept (a symlink on the way)
    counts = ("deleted", "invalid", "kept_unverified", "kept_symlink")
    assert tuple(result[k] for k in counts) == (0, 2, 0, 1)
    assert copy.exists() and target.exists() and moved.exists() and inside.is_symlink()


@both_servers
async def test_a_corrupted_download_leaves_no_file_and_fails(penv, db, s3, proxy) -> None:
    rows = await upload_three(penv, db)
    for r in rows:
        (penv.cache_root / "images" / f"{r.md5_sum}.jpg").unlink()
    key0 = f"cache/2025/04/{rows[0].md5_sum}.jpg"
    proxy.rule = lambda req: (
        CorruptResponse() if req.method == "GET" and req.path.endswith(key0) else None
    )
    s3.put_object(
        Bucket=penv.bucket,
        Key=f"cache/2025/04/{rows[1].md5_sum}.jpg",
        Body=b"overwritten with other bytes",
    )

    out = run_cli(
        penv,
        "restore",
        "--media-id",
        "p0",
        "--media-id",
        "p1",
        "--media-id",
        "p2",
        "--media-id",
        "nope",
        "--json",
    )
    assert out.returncode == 1
    result = json.loads(out.stdout)
    assert (result["restored"], result["failed"], result["selected"]) == (1, 3, 4)
    assert {f["media_id"] for f in result["failures"]} == {"p0", "p1", "nope"}
    names = sorted(p.name for p in (penv.cache_root / "images").iterdir())
    assert names == [f"{rows[2].md5_sum}.jpg"]  # no final name, no temporary left behind


@both_servers
async def test_restore_never_replaces_a_different_file(env, db, s3) -> None:
    rows = await upload_three(env, db)
    path = env.cache_root / "images" / f"{rows[0].md5_sum}.jpg"
    path.write_bytes(b"a different file")
    out = run_cli(env, "restore", "--media-id", "p0", "--media-id", "p1", "--json")
    result = json.loads(out.stdout)
    assert out.returncode == 1
    assert (result["already_present"], result["failed"]) == (1, 1)
    assert path.read_bytes() == b"a different file"


@both_servers
def test_restore_needs_a_selection(env) -> None:
    out = run_cli(env, "restore")
    assert out.returncode == 2 and "--all-missing" in out.stderr
