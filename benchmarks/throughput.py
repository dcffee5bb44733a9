"""Throughput side by side: archiver, the original sequential design, s5cmd and the AWS CLI.

Scenarios: 2,000 x 100 KB with 0 ms (over http and over https) and with 20 ms one-way
delay on S3 and PostgreSQL (benchmarks/latency_proxy.py), and 500 files of a realistic size
mix with 0 ms (http and https). Every run gets a fresh database and bucket, and is checked
afterwards (objects present, rows recorded). Then a concurrency sweep of archiver in the
20 ms scenario, drawn as a PNG.
Run: `uv run --group bench python -m benchmarks.throughput [--quick] [--server rgw]`
(`--server rgw`: the same tools against Ceph RGW, over http and https; tests/rgw.py).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from archiver.demo.localpg import free_port, wait_port
from archiver.demo.sample import SampleRow, make_sample_set, write_media
from benchmarks.common import (
    AWS_ENV,
    OUT,
    archived_rows,
    archiver_cmd,
    archiver_env,
    compile_bytecode,
    count_objects,
    empty_bucket,
    machine,
    markdown_table,
    measure,
    moto_process,
    new_bucket,
    new_database,
    postgres,
    query_value,
    scratch,
    write_json,
)

HERE = Path(__file__).resolve().parent
SWEEP = (1, 4, 16, 64, 256)


@contextmanager
def delayed(host: str, port: int, delay_ms: float) -> Iterator[tuple[str, int]]:
    """(host, port) reaching host:port through a latency proxy, or directly at 0 ms."""
    if not delay_ms:
        yield host, port
        return
    listen = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.latency_proxy",
            "--listen",
            str(listen),
            "--upstream",
            f"{host}:{port}",
            "--delay-ms",
            str(delay_ms),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(listen)
        yield "127.0.0.1", listen
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class Dataset:
    workdir: Path
    root: Path
    rows: list[SampleRow]
    files: int
    bytes: int


def small_files(workdir: Path, n: int) -> Dataset:
    rng = random.Random(11)
    root = workdir / "cache" / "media"
    rows = []
    for i in range(n):
        _, md5 = write_media(root / "images", ".jpg", rng.randint(98_000, 102_000), rng)
        rows.append(
            SampleRow(
                f"m{i:06d}",
                "image",
                md5,
                "image/jpeg",
                None,
                datetime(2025, 1 + i % 12, 1 + i % 28),
            )
        )
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return Dataset(workdir, root, rows, n, total)


def realistic_mix(workdir: Path, n: int) -> Dataset:
    root = workdir / "cache" / "media"
    sample = make_sample_set(workdir, root, n, awkward=False, small=False)
    return Dataset(workdir, root, sample.rows, n, sample.total_bytes)


def xact_commits(admin_dsn: str, dsn: str) -> int:
    """Transactions committed so far in `dsn`'s database (one per autocommitted statement)."""
    time.sleep(0.3)  # backends flush their statistics as they exit
    sql = "SELECT xact_commit FROM pg_stat_database WHERE datname = $1"
    return int(query_value(admin_dsn, sql, dsn.rsplit("/", 1)[1]))


@dataclass
class Services:
    admin_dsn: str
    pg_port: int
    s3_url: str
    delay_ms: float
    extra_env: dict[str, str] = field(default_factory=dict)  # AWS_CA_BUNDLE for https
    empty_after: bool = False  # delete each run's objects (RGW's memstore holds them in RAM)


def run_tool(
    tool: str,
    data: Dataset,
    svc: Services,
    *,
    concurrency: int | None = None,
    limit: int | None = None,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One measured run of one tool on a fresh database and bucket (`extra`: more
    arguments for `archiver upload`)."""
    rows = data.rows[:limit] if limit else data.rows
    dsn = new_database(svc.admin_dsn, rows)
    bucket = new_bucket(svc.s3_url)
    s3 = urlsplit(svc.s3_url)
    before = xact_commits(svc.admin_dsn, dsn)
    with (
        delayed(s3.hostname or "", s3.port or 0, svc.delay_ms) as (sh, sp),
        delayed("127.0.0.1", svc.pg_port, svc.delay_ms) as (ph, pp),
    ):
        endpoint = f"{s3.scheme}://{sh}:{sp}"
        dsn_via = dsn.replace(f"127.0.0.1:{svc.pg_port}", f"{ph}:{pp}")
        env = archiver_env(dsn_via, endpoint, bucket, data.root)
        if tool == "archiver":
            args = ["upload", "--no-progress", "--json"]
            if concurrency:
                args += ["--concurrency", str(concurrency)]
            cmd = archiver_cmd(*args, *extra)
        elif tool == "baseline":
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.baseline",
                "--database-url",
                dsn_via,
                "--bucket",
                bucket,
                "--cache-root",
                str(data.root),
                "--endpoint-url",
                endpoint,
            ]
        elif tool == "s5cmd":
            cmd = [
                shutil.which("s5cmd") or "s5cmd",
                "--endpoint-url",
                endpoint,
                "cp",
                f"{data.root}/*",
                f"s3://{bucket}/raw/",
            ]
        else:  # aws
            cmd = [
                "aws",
                "s3",
                "cp",
                str(data.root),
                f"s3://{bucket}/raw/",
                "--recursive",
                "--endpoint-url",
                endpoint,
                "--only-show-errors",
            ]
        env = {**env, **AWS_ENV, **svc.extra_env, "PYTHONPATH": str(HERE.parent)}
        run = measure(cmd, env=env, cwd=data.workdir)
    if run.returncode != 0:
        raise SystemExit(f"{tool} exited {run.returncode}: {run.stderr[-2000:]}")
    files = len(rows)
    objects = count_objects(svc.s3_url, bucket)
    if svc.empty_after:
        empty_bucket(svc.s3_url, bucket)
    database = tool in ("archiver", "baseline")
    recorded = archived_rows(dsn) if database else None
    ok = objects == files and (recorded == files if database else True)
    round_trips = xact_commits(svc.admin_dsn, dsn) - before if database else None
    mb = data.bytes * files / data.files / 1e6
    writes = run.json().get("db_writes") if tool == "archiver" else files
    return {
        "write_backs_per_1000": round(1000 * writes / files, 1) if database else None,
        "tool": " ".join([tool, *([f"-c {concurrency}"] if concurrency else []), *extra]),
        "files": files,
        "mb": round(mb, 1),
        "wall_s": round(run.wall_s, 2),
        "files_per_s": round(files / run.wall_s, 1),
        "mb_per_s": round(mb / run.wall_s, 1),
        "cpu_ms_per_file": round(1000 * run.cpu_s / files, 2),
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        "db_round_trips_per_1000": round(1000 * round_trips / files, 1) if database else None,
        "check": "ok" if ok else f"FAILED ({objects} objects, {recorded} rows)",
    }


def table(results: list[dict[str, Any]]) -> str:
    headers = [
        "tool",
        "files",
        "MB",
        "wall s",
        "files/s",
        "MB/s",
        "client CPU ms/file",
        "peak RSS MB",
        "DB round trips /1,000 files (write-back)",
        "check",
    ]
    keys = [
        "tool",
        "files",
        "mb",
        "wall_s",
        "files_per_s",
        "mb_per_s",
        "cpu_ms_per_file",
        "peak_rss_mb",
        "round_trips",
        "check",
    ]
    rows = []
    for result in results:
        r = dict(result)
        total, writes = r["db_round_trips_per_1000"], r["write_backs_per_1000"]
        r["round_trips"] = None if total is None else f"{total} ({writes})"
        rows.append([("-" if r[k] is None else r[k]) for k in keys])
    return markdown_table(headers, rows)


def plot(sweep: list[dict[str, Any]], references: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    xs = [int(r["tool"].rsplit(" ", 1)[1]) for r in sweep]
    ax.plot(xs, [r["files_per_s"] for r in sweep], "o-", label="archiver (files/s)")
    for (name, value), style in zip(references.items(), ("--", ":", "-."), strict=False):
        ax.axhline(value, linestyle=style, color="grey", label=f"{name}: {value:.0f}")
        ax.annotate(
            name,
            (xs[0], value),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
            color="dimgrey",
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("--concurrency")
    ax.set_ylabel("files/s")
    ax.set_title("2,000 x 100 KB, 20 ms one-way delay on S3 and PostgreSQL")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sets (a smoke run)")
    parser.add_argument(
        "--server",
        choices=("moto", "rgw"),
        default="moto",
        help="the S3 server: moto (every scenario, the sweep, the targets) or Ceph RGW "
        "(tests/rgw.py: small files over http and https, and the mix)",
    )
    args = parser.parse_args()
    if args.server == "rgw":
        rgw_main(args.quick)
        return
    n_small, n_mix, baseline_slow = (300, 60, 60) if args.quick else (2000, 500, 300)
    have_aws = shutil.which("aws") is not None
    peers = ["s5cmd", *(["aws"] if have_aws else [])]
    report: dict[str, Any] = {"machine": machine(), "when": datetime.now().isoformat()}
    started = time.monotonic()
    compile_bytecode()
    from tests.rgw import self_signed_certificate

    with scratch("archiver-bench-tp-") as work, postgres() as pg:
        tls = self_signed_certificate(work)
        os.environ["AWS_CA_BUNDLE"] = str(tls[0])  # this process's own checks, over https
        ca = {"AWS_CA_BUNDLE": str(tls[0])}
        small = small_files(work / "small", n_small)
        mix = realistic_mix(work / "mix", n_mix)
        # (title, data, delay, baseline rows (None: all, 0: none), https)
        scenarios = [
            (f"{n_small:,} x 100 KB, 0 ms, http", small, 0.0, None, False),
            (f"{n_small:,} x 100 KB, 0 ms, https", small, 0.0, 0, True),
            (
                f"{n_small:,} x 100 KB, 20 ms one-way on S3 and PostgreSQL, http",
                small,
                20.0,
                baseline_slow,
                False,
            ),
            (f"{n_mix:,} files, realistic mix, 0 ms, http", mix, 0.0, None, False),
            (f"{n_mix:,} files, realistic mix, 0 ms, https", mix, 0.0, 0, True),
        ]
        for title, data, delay, baseline_limit, https in scenarios:
            # A fresh server per scenario frees its memory.
            with moto_process(tls if https else None) as s3_url:
                svc = Services(pg.dsn, pg.port, s3_url, delay, extra_env=ca if https else {})
                results = [run_tool("archiver", data, svc)]
                if baseline_limit != 0:
                    results.append(run_tool("baseline", data, svc, limit=baseline_limit))
                results += [run_tool(p, data, svc) for p in peers]
                if delay:
                    report["sweep"] = [
                        run_tool(
                            "archiver",
                            data,
                            svc,
                            concurrency=c,
                            limit=min(data.files, max(200, 100 * c)),
                        )
                        for c in SWEEP
                    ]
            report[title] = results
            print(f"\n### {title}\n", flush=True)
            print(table(results), flush=True)
            if delay and baseline_limit:
                print(f"\n(baseline: the first {baseline_limit} rows; files/s is its rate)")
    print("\n### Concurrency sweep (20 ms)\n")
    print(table(report["sweep"]))
    titles = [s[0] for s in scenarios]
    by = {t: {r["tool"]: r for r in report[t]} for t in titles}
    zero, zero_tls, lat, mixed, mixed_tls = (by[t] for t in titles)
    references = {"baseline": lat["baseline"]["files_per_s"], "s5cmd": lat["s5cmd"]["files_per_s"]}
    if "aws" in lat:
        references["aws cli"] = lat["aws"]["files_per_s"]
    # A smoke run must not replace the committed plot of a full run.
    png = (OUT if args.quick else HERE) / "throughput-sweep.png"
    png.parent.mkdir(exist_ok=True)
    plot(report["sweep"], references, png)
    targets = issue_targets(zero, zero_tls, lat, mixed, mixed_tls)
    report["targets"] = [{"target": t, "measured": m, "met": ok} for t, m, ok in targets]
    print("\n### Targets\n")
    print(
        markdown_table(
            ["target", "measured", "met"], [[t, m, "yes" if ok else "NO"] for t, m, ok in targets]
        )
    )
    print(f"\nMachine: {machine()}. Plot: {png}. Whole run: {time.monotonic() - started:.0f} s.")
    write_json("throughput.json", report)


Results = dict[str, dict[str, Any]]


def issue_targets(
    zero: Results, zero_tls: Results, lat: Results, mixed: Results, mixed_tls: Results
) -> list[tuple[str, str, bool]]:
    """The targets of the hot path on moto, each as (target, measured, met)."""

    def ratio(results: Results, key: str) -> float:
        return float(results["archiver"][key]) / float(results["s5cmd"][key])

    a = lat["archiver"]["files_per_s"]
    targets = [
        (
            "20 ms: archiver >= 30x the baseline's files/s",
            f"{a / lat['baseline']['files_per_s']:.1f}x",
            a >= 30 * lat["baseline"]["files_per_s"],
        ),
        (
            "20 ms: archiver >= 1.0x s5cmd's files/s",
            f"{ratio(lat, 'files_per_s'):.2f}x",
            ratio(lat, "files_per_s") >= 1.0,
        ),
    ]
    r = ratio(zero, "files_per_s")
    targets.append(("0 ms, http: archiver >= 0.95x s5cmd's files/s", f"{r:.2f}x", r >= 0.95))
    for name, results in (("http", mixed), ("https", mixed_tls)):
        r = ratio(results, "mb_per_s")
        cpu = results["archiver"]["cpu_ms_per_file"]
        targets.append(
            (
                f"mix, {name}: archiver >= 1.0x s5cmd's MB/s at <= 5 ms of CPU per file",
                f"{r:.2f}x, {cpu:.2f} ms",
                r >= 1.0 and cpu <= 5,
            )
        )
    cpu = zero["archiver"]["cpu_ms_per_file"]
    targets.append(("client CPU per small file, http <= 1.2 ms", f"{cpu:.2f} ms", cpu <= 1.2))
    trips = max(s["archiver"]["write_backs_per_1000"] for s in (zero, lat, mixed))
    targets.append(
        ("DB round trips for write-back <= 25 per 1,000 files", f"{trips:.1f}", trips <= 25)
    )
    return targets


def rgw_targets(small_tls: Results) -> list[tuple[str, str, bool]]:
    """The targets of the hot path on RGW over https."""
    a, s = small_tls["archiver"], small_tls["s5cmd"]
    files = a["files_per_s"] / s["files_per_s"]
    return [
        ("https: archiver >= 1.0x s5cmd's files/s", f"{files:.2f}x", files >= 1.0),
        (
            "https: client CPU per small file <= s5cmd's",
            f"{a['cpu_ms_per_file']:.2f} ms (s5cmd {s['cpu_ms_per_file']:.2f})",
            a["cpu_ms_per_file"] <= s["cpu_ms_per_file"],
        ),
    ]


def rgw_main(quick: bool) -> None:
    """The same tools against Ceph RGW, which keeps connections alive over http and https
    and is cheaper per request than moto: its client CPU per file is closer to real S3's."""
    from tests.rgw import LocalRGW

    n_small, n_mix = (300, 60) if quick else (2000, 500)
    peers = ["s5cmd", *(["aws"] if shutil.which("aws") else [])]
    report: dict[str, Any] = {"machine": machine(), "when": datetime.now().isoformat()}
    started = time.monotonic()
    compile_bytecode()
    rgw = LocalRGW.start(AWS_ENV["AWS_ACCESS_KEY_ID"], AWS_ENV["AWS_SECRET_ACCESS_KEY"])
    os.environ["AWS_CA_BUNDLE"] = str(rgw.ca_file)  # this process's own checks, over https
    # RGW 16 answers botocore's default streamed checksums over https with 411: every
    # Python tool gets archiver's default (s5cmd sends none).
    tls = {"AWS_CA_BUNDLE": str(rgw.ca_file), "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required"}
    try:
        with scratch("archiver-bench-rgw-") as work, postgres() as pg:
            small = small_files(work / "small", n_small)
            mix = realistic_mix(work / "mix", n_mix)
            scenarios = [
                (f"RGW, {n_small:,} x 100 KB, http", small, rgw.http_url),
                (f"RGW, {n_small:,} x 100 KB, https", small, rgw.https_url),
                (f"RGW, {n_mix:,} files, realistic mix, http", mix, rgw.http_url),
            ]
            # A fresh RGW is slower for its first few thousand requests (its pools and
            # bucket indexes warm up): an unmeasured run first, so no tool pays for that.
            run_tool("s5cmd", small, Services(pg.dsn, pg.port, rgw.http_url, 0.0, tls, True))
            for title, data, url in scenarios:
                svc = Services(pg.dsn, pg.port, url, 0.0, extra_env=tls, empty_after=True)
                results = [run_tool("archiver", data, svc)]
                results += [run_tool(p, data, svc) for p in peers]
                report[title] = results
                print(f"\n### {title}\n", flush=True)
                print(table(results), flush=True)
    finally:
        rgw.stop()
    by = {t: {r["tool"]: r for r in report[t]} for t, _, _ in scenarios}
    targets = rgw_targets(by[scenarios[1][0]])
    report["targets"] = [{"target": t, "measured": m, "met": ok} for t, m, ok in targets]
    print("\n### Targets\n")
    print(
        markdown_table(
            ["target", "measured", "met"], [[t, m, "yes" if ok else "NO"] for t, m, ok in targets]
        )
    )
    print(f"\nMachine: {machine()}. Whole run: {time.monotonic() - started:.0f} s.")
    write_json("throughput-rgw.json", report)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
