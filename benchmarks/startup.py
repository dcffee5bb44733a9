"""Start-up: what `archiver upload` costs before its first row, and what it imports.

`archiver upload --json` over an empty selection (a database with no rows to archive, a
bucket on moto), with bytecode compiled, min of `--runs` fresh processes: the process's CPU
and wall time, then one run under `python -X importtime` for the packages it loads and their
cumulative import time. Run: `uv run python -m benchmarks.startup`.
"""

from __future__ import annotations

import argparse
import re
import sys

from benchmarks.common import (
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

# Modules `archiver upload` has no use for.
NOT_FOR_UPLOAD = (
    "archiver.cloudfront",
    "archiver.demo",
    "archiver.commands.setup_cdn",
    "archiver.commands.setup_bucket",
    "archiver.commands.verify",
    "archiver.commands.restore",
    "archiver.commands.prune_local",
    "archiver.commands.check",
)  # (archiver.iam is loaded: the command line's iam-policy argument names its choices)


def imports(stderr: str) -> dict[str, int]:
    """{module: cumulative import time in µs} from `-X importtime` lines."""
    found: dict[str, int] = {}
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            found[m.group(4)] = int(m.group(2))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    compile_bytecode()
    cmd = [sys.executable, "-m", "archiver", "upload", "--json"]
    with postgres() as pg, moto_process() as endpoint, scratch("startup-") as root:
        dsn = new_database(pg.dsn, [])
        env = archiver_env(dsn, endpoint, new_bucket(endpoint), root)
        runs = [measure(cmd, env=env) for _ in range(args.runs)]
        traced = measure([sys.executable, "-X", "importtime", *cmd[1:]], env=env)
    for m in runs:
        if m.returncode != 0:
            raise SystemExit(f"archiver upload exited {m.returncode}: {m.stderr[-2000:]}")
    cpu = min(m.cpu_s for m in runs)
    wall = min(m.wall_s for m in runs)
    loaded = imports(traced.stderr)
    top = sorted(
        ((name, us) for name, us in loaded.items() if "." not in name), key=lambda x: -x[1]
    )[:12]
    unneeded = sorted(n for n in loaded if n.startswith(NOT_FOR_UPLOAD))
    print(machine())
    print(f"\n`archiver upload` over no rows, min of {args.runs}: ", end="")
    print(f"CPU {cpu:.3f} s, wall {wall:.3f} s")
    print(markdown_table(["package", "import ms (cumulative)"], [[n, us / 1000] for n, us in top]))
    print(f"\nmodules loaded that upload does not use: {', '.join(unneeded) or 'none'}")
    write_json(
        "startup",
        {"cpu_s": cpu, "wall_s": wall, "top_imports_us": dict(top), "unneeded": unneeded},
    )


if __name__ == "__main__":
    main()
