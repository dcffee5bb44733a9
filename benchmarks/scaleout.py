"""One archiver process against two on the same backlog (claims share the rows).

Each run starts from the same unarchived backlog in a fresh database and bucket; the two
processes start together. Reports files/s of each process and of the whole, and checks
that every row was archived and no key was uploaded twice. Run:
`uv run python -m benchmarks.scaleout [--files N]` (about a minute).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import time
from datetime import datetime
from pathlib import Path

from archiver.demo.sample import SampleRow, write_media
from benchmarks.common import (
    archived_rows,
    archiver_cmd,
    archiver_env,
    compile_bytecode,
    count_objects,
    machine,
    markdown_table,
    moto_process,
    new_bucket,
    new_database,
    postgres,
    scratch,
    write_json,
)


def backlog(root: Path, n: int, size: int) -> list[SampleRow]:
    rng = random.Random(5)
    rows = []
    for i in range(n):
        _, md5 = write_media(root / "images", ".jpg", size, rng)
        rows.append(
            SampleRow(f"m{i:06d}", "image", md5, "image/jpeg", None, datetime(2025, 1 + i % 12, 1))
        )
    return rows


def run_processes(count: int, env: dict[str, str], cwd: Path) -> tuple[float, list[dict]]:
    import json

    started = time.monotonic()
    procs = [
        subprocess.Popen(
            archiver_cmd("upload", "--no-progress", "--json"),
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"archiver exited {proc.returncode}: {err}")
        results.append(json.loads(out))
    return time.monotonic() - started, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=4000)
    parser.add_argument("--size", type=int, default=20_000, help="bytes per file")
    args = parser.parse_args()
    compile_bytecode()
    table = []
    with scratch("archiver-bench-scale-") as work, postgres() as pg, moto_process() as endpoint:
        root = work / "cache" / "media"
        rows = backlog(root, args.files, args.size)
        for count in (1, 2):
            dsn = new_database(pg.dsn, rows)
            bucket = new_bucket(endpoint)
            wall, results = run_processes(count, archiver_env(dsn, endpoint, bucket, root), work)
            ok = archived_rows(dsn) == len(rows) == count_objects(endpoint, bucket)
            uploaded = sum(r["uploaded"] for r in results)
            each = ", ".join(f"{r['files_per_s']:.0f}" for r in results)
            table.append(
                {
                    "processes": count,
                    "wall_s": round(wall, 1),
                    "files_per_s_total": round(len(rows) / wall, 1),
                    "files_per_s_each": each,
                    "uploaded": uploaded,
                    "check": "ok" if ok and uploaded == len(rows) else "FAILED",
                }
            )
            print(f"{count} process(es): {len(rows) / wall:.0f} files/s", flush=True)
    print(
        f"\nMachine: {machine()}; {args.files:,} files of {args.size:,} bytes; moto in its "
        "own process\n"
    )
    print(
        markdown_table(
            [
                "processes",
                "wall s",
                "files/s (together)",
                "files/s (each, own timer)",
                "uploaded",
                "check",
            ],
            [
                [
                    t["processes"],
                    t["wall_s"],
                    t["files_per_s_total"],
                    t["files_per_s_each"],
                    t["uploaded"],
                    t["check"],
                ]
                for t in table
            ],
        )
    )
    write_json(
        "scaleout.json",
        {
            "machine": machine(),
            "when": datetime.now().isoformat(),
            "files": args.files,
            "size": args.size,
            "results": table,
        },
    )


if __name__ == "__main__":
    main()
