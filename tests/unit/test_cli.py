"""The real command (`python -m archiver`) against the rig: output, exit codes, config."""

from __future__ import annotations


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
