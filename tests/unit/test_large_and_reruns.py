"""Multipart uploads, skipping what is stored, one upload per key (issue: large files,
idempotent re-runs, de-duplication). Requests are counted through the test proxy."""

from __future__ import annotations

import random
from datetime import datetime

from archiver.demo.sample import SampleRow, file_bytes, insert_rows
from archiver.policies import ExistencePolicy
from tests.helpers import (
    md5,
    media_file,
)
from tests.proxy import Request


def test_existence_policy() -> None:
    p = ExistencePolicy(misses_to_switch=3)
    assert p.head_first  # a re-run's first rows are the likeliest to be stored already
    p.absent(), p.absent()
    assert p.head_first
    p.absent()
    assert not p.head_first  # three misses in a row: conditional PUTs from now on
    p.present()
    assert p.head_first  # something was there: HEAD first again
    p.absent(), p.absent(), p.absent()
    assert not p.head_first
    p.no_conditional_writes()
    for _ in range(10):
        p.absent()
    assert p.head_first  # without conditional writes HEAD is the only check


def key_of(r: Request) -> str:
    return r.path.split("/", 2)[2]


async def add_files(
    env, db, n: int, size: int, *, rng: random.Random, prefix: str = "f", month: int = 1
) -> list[SampleRow]:
    rows = []
    for i in range(n):
        data = file_bytes(".mp4", size, rng)
        media_file(env.cache_root / "videos", f"{md5(data)}.mp4", data)
        rows.append(
            SampleRow(
                f"{prefix}{i:04d}", "video", md5(data), "video/mp4", None, datetime(2025, month, 1)
            )
        )
    await insert_rows(db, rows)
    return rows
