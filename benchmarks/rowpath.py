"""The row path: what a run costs per row when there is nothing to send.

A backlog of rows whose files are all missing (a cron run over a backlog the cache no longer
holds, or a repeat run after a backfill was archived) is run through `archiver upload` twice:
the first run meets every row, the second is the repeat. Rows/s is the rows handled over the
run's own elapsed time (its JSON `elapsed_s`); CPU per row is the whole process's CPU
(start-up included) over the rows. Target: the repeat run over 200,000 rows at 20,000 rows/s
or more. Run: `uv run python -m benchmarks.rowpath` (`--rows N`, default 200,000).
"""

from __future__ import annotations

import argparse
import hashlib
from datetime import datetime

from archiver.demo.sample import SampleRow
from benchmarks.common import (
    archiver_cmd,
    archiver_env,
    compile_bytecode,
    machine,
    markdown_table,
    measure,
    moto_process,
    new_bucket,
    new_database,
    postgres,
    scratch,
    write_json,
)


def missing_rows(n: int) -> list[SampleRow]:
    """`n` rows of images whose files are not in the cache."""
    return [
        SampleRow(
            media_id=f"m{i:07d}",
            media_type="image",
            md5_sum=hashlib.md5(str(i).encode()).hexdigest(),
            mime_type="image/jpeg",
            local_file_path=None,
            created_at=datetime(2025, 1, 1 + i % 28),
        )
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    compile_bytecode()
    results = []
    with postgres() as pg, moto_process() as endpoint, scratch("rowpath-") as root:
        images = root / "images"
        images.mkdir(parents=True)
        for i in range(100):  # other files: the directory is there and listed
            (images / f"{hashlib.md5(f'other{i}'.encode()).hexdigest()}.jpg").write_bytes(b"x")
        dsn = new_database(pg.dsn, missing_rows(args.rows))
        bucket = new_bucket(endpoint)
        env = archiver_env(dsn, endpoint, bucket, root)
        for run in ("first", "repeat"):
            m = measure(archiver_cmd("upload", "--json"), env=env)
            if m.returncode not in (0, 1):
                raise SystemExit(f"archiver upload exited {m.returncode}: {m.stderr[-2000:]}")
            report = m.json()
            rows = report["selected"] + report["known_problem"]
            elapsed = report["elapsed_s"]
            results.append(
                {
                    "run": run,
                    "rows": rows,
                    "missing_local": report["missing_local"],
                    "elapsed_s": elapsed,
                    "rows_per_s": round(rows / elapsed) if elapsed else None,
                    "wall_s": round(m.wall_s, 2),
                    "cpu_s": round(m.cpu_s, 2),
                    "cpu_us_per_row": round(m.cpu_s / rows * 1e6, 1) if rows else None,
                    "stderr_lines": len(m.stderr.splitlines()),
                }
            )
    print(machine())
    headers = list(results[0])
    print(markdown_table(headers, [[r[h] for h in headers] for r in results]))
    repeat = results[-1]["rows_per_s"] or 0
    verdict = "met" if repeat >= 20_000 else "NOT met"
    print(f"\ntarget: the repeat run at >= 20,000 rows/s: {repeat:,} rows/s, {verdict}")
    write_json("rowpath", results)


if __name__ == "__main__":
    main()
