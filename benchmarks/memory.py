"""Peak RSS of `archiver upload --concurrency 32`, measured on the archiver process alone.

Scenarios:
  (a) one 300 MB file plus 40 files of 20 MB (multipart uploads, bytes in flight bounded)
  (b) 2,000 and then 20,000 rows of small files (memory must not grow with the rows)

Targets: (a) peaks under 250 MB; (b) the 20,000-row run peaks no more than 30 MB above the
2,000-row run. Run: `uv run python benchmarks/memory.py` (about 2 minutes, 1.2 GB of disk).
"""

from __future__ import annotations

import argparse
import random
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
    measure,
    moto_process,
    new_bucket,
    new_database,
    postgres,
    scratch,
    write_json,
)

MB = 1_000_000


def large_set(root: Path, rng: random.Random, big_mb: int, n: int, each_mb: int) -> list[SampleRow]:
    rows = []
    sizes = [big_mb * MB] + [each_mb * MB] * n
    for i, size in enumerate(sizes):
        _, md5 = write_media(root / "videos", ".mp4", size, rng)
        rows.append(
            SampleRow(f"v{i:05d}", "video", md5, "video/mp4", None, datetime(2025, 1 + i % 12, 1))
        )
    return rows


def small_set(root: Path, rng: random.Random, n: int) -> list[SampleRow]:
    rows = []
    for i in range(n):
        _, md5 = write_media(root / "images", ".jpg", rng.randint(2_000, 12_000), rng)
        rows.append(
            SampleRow(
                f"i{i:06d}",
                "image",
                md5,
                "image/jpeg",
                None,
                datetime(2025, 1 + i % 12, 1 + i % 28),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sets (a smoke run)")
    args = parser.parse_args()
    compile_bytecode()
    big_mb, n_large, each_mb = (60, 8, 20) if args.quick else (300, 40, 20)
    small_counts = (200, 2000) if args.quick else (2000, 20000)

    results = []
    with scratch("archiver-bench-mem-") as work, postgres() as pg, moto_process() as endpoint:
        rng = random.Random(42)
        scenarios = [
            (
                f"(a) 1 x {big_mb} MB + {n_large} x {each_mb} MB",
                "large",
                lambda root: large_set(root, rng, big_mb, n_large, each_mb),
            )
        ]
        scenarios += [
            (f"(b) {n:,} small files", f"small{n}", lambda root, n=n: small_set(root, rng, n))
            for n in small_counts
        ]
        for label, name, make in scenarios:
            root = work / name / "cache" / "media"
            rows = make(root)
            total_mb = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / MB
            dsn = new_database(pg.dsn, rows)
            bucket = new_bucket(endpoint)
            run = measure(
                archiver_cmd("upload", "--concurrency", "32", "--no-progress", "--json"),
                env=archiver_env(dsn, endpoint, bucket, root),
                cwd=work / name,
            )
            if run.returncode != 0:
                raise SystemExit(f"{label}: archiver exited {run.returncode}: {run.stderr}")
            summary = run.json()
            ok = archived_rows(dsn) == len(rows) and count_objects(endpoint, bucket) == len(rows)
            results.append(
                {
                    "scenario": label,
                    "files": len(rows),
                    "mb": round(total_mb, 1),
                    "wall_s": round(run.wall_s, 1),
                    "cpu_s": round(run.cpu_s, 1),
                    "peak_rss_mb": round(run.peak_rss_mb, 1),
                    "uploaded": summary["uploaded"],
                    "check": "ok" if ok else "FAILED",
                }
            )
            print(f"{label}: peak RSS {run.peak_rss_mb:.0f} MB, {run.wall_s:.1f} s", flush=True)
            import shutil

            shutil.rmtree(work / name, ignore_errors=True)

    large = results[0]["peak_rss_mb"]
    growth = results[2]["peak_rss_mb"] - results[1]["peak_rss_mb"]
    verdicts = {
        "(a) under 250 MB": f"{large:.0f} MB: {'met' if large < 250 else 'NOT met'}",
        "(b) growth at most 30 MB": f"{growth:+.0f} MB: {'met' if growth <= 30 else 'NOT met'}",
    }
    print(f"\nMachine: {machine()}\n")
    print(
        markdown_table(
            ["scenario", "files", "MB", "wall s", "CPU s", "peak RSS MB", "check"],
            [
                [
                    r["scenario"],
                    f"{r['files']:,}",
                    r["mb"],
                    r["wall_s"],
                    r["cpu_s"],
                    r["peak_rss_mb"],
                    r["check"],
                ]
                for r in results
            ],
        )
    )
    print()
    for target, verdict in verdicts.items():
        print(f"- target {target}: {verdict}")
    path = write_json(
        "memory.json",
        {
            "machine": machine(),
            "when": datetime.now().isoformat(),
            "results": results,
            "targets": verdicts,
        },
    )
    print(f"\n(JSON: {path})")


if __name__ == "__main__":
    main()
