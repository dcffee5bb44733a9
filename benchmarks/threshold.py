"""Where single PUTs give way to multipart uploads: the realistic mix (85% images, 10% videos
of 2-40 MB, 5% documents) uploaded by `archiver upload --multipart-threshold N` for several
N, beside s5cmd, on moto over http and on Ceph RGW over http (`--server rgw`). A file up to
the threshold is hashed once and sent as one PUT (streamed from the file when it is larger
than a part buffer); a larger one is hashed, then sent in parts, each hashed again.
Run: `uv run --group bench python -m benchmarks.threshold`.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

from benchmarks.common import (
    AWS_ENV,
    compile_bytecode,
    machine,
    moto_process,
    postgres,
    scratch,
    write_json,
)
from benchmarks.throughput import Services, realistic_mix, run_tool, table

THRESHOLDS_MIB = (8, 32, 64, 256)


@contextlib.contextmanager
def server(kind: str) -> Iterator[tuple[str, dict[str, str], bool]]:
    """(S3 URL, extra environment, whether to empty the bucket after each run)."""
    if kind == "moto":
        with moto_process() as url:
            yield url, {}, False
        return
    from tests.rgw import LocalRGW

    rgw = LocalRGW.start(AWS_ENV["AWS_ACCESS_KEY_ID"], AWS_ENV["AWS_SECRET_ACCESS_KEY"])
    try:
        yield rgw.http_url, {"AWS_REQUEST_CHECKSUM_CALCULATION": "when_required"}, True
    finally:
        rgw.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=("moto", "rgw"), default="moto")
    parser.add_argument("--files", type=int, default=300)
    args = parser.parse_args()
    compile_bytecode()
    with scratch("archiver-bench-threshold-") as work, postgres() as pg:
        mix = realistic_mix(work / "mix", args.files)
        with server(args.server) as (url, env, empty):
            svc = Services(pg.dsn, pg.port, url, 0.0, extra_env=env, empty_after=empty)
            results = [
                run_tool("archiver", mix, svc, extra=("--multipart-threshold", str(n)))
                for n in THRESHOLDS_MIB
            ]
            results.append(run_tool("s5cmd", mix, svc))
    print(f"{machine()}\n\n### {args.files} files, realistic mix, {args.server}, http\n")
    print(table(results))
    write_json(f"threshold-{args.server}", results)


if __name__ == "__main__":
    main()
