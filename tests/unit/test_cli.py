"""The real command (`python -m archiver`) against the rig: output, exit codes, config."""

from __future__ import annotations

import subprocess

from tests.helpers import (
    run_cli,
)

JSON_KEYS = {
    "selected",
    "uploaded",
    "skipped_existing",
    "missing_local",
    "invalid",
    "corrupt",
    "failed",
    "db_updated",
    "bytes_uploaded",
    "elapsed_s",
    "files_per_s",
    "dry_run",
}


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def run_without(env, drop: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(env, *args, environ={k: v for k, v in env.environ().items() if k != drop})


def test_every_variable_a_flag_reads_is_known_to_the_env_file_check() -> None:
    """A variable a flag reads must never be reported as a typo in `.env`."""
    import click

    from archiver.cli import cli
    from archiver.envfile import KNOWN_KEYS

    names: set[str] = set()

    def walk(group: click.Group) -> None:
        for command in group.commands.values():
            if isinstance(command, click.Group):
                walk(command)
                continue
            for param in command.params:
                envvar = getattr(param, "envvar", None)
                names.update([envvar] if isinstance(envvar, str) else envvar or [])

    walk(cli)
    assert "ARCHIVER_CDN_DOMAIN" in names and "ARCHIVER_WATCH_INTERVAL" in names
    assert names - KNOWN_KEYS == set()
