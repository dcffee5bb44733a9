"""The command line's entry point, in process and offline: version, help, and the usage
and configuration errors it turns into one line and exit 2 before connecting to anything."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from archiver.cli import main

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run_main(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Run:
    """`archiver ARGS` through `main` (what the installed command runs), in an empty work
    directory with a media cache, `env` set, and a database and an endpoint nothing listens
    on: (exit code, stdout, stderr)."""
    (tmp_path / "cache" / "media").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:Sup3rS3cret@127.0.0.1:1/db")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")

    def run(*args: str, **env: str) -> tuple[int, str, str]:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(SystemExit) as done:
            main(list(args))
        out = capsys.readouterr()
        assert "Sup3rS3cret" not in out.out + out.err
        return int(done.value.code or 0), out.out, out.err

    return run


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_version_and_help(run_main: Run) -> None:
    code, out, _ = run_main("--version")
    assert code == 0 and "0.1.0" in out
    code, out, err = run_main("upload", "--help")
    assert code == 0, err
    assert "--concurrency" in out


@pytest.mark.parametrize(
    "args",
    [
        ["upload", "--bogus"],
        ["upload", "--concurrency", "0"],
        ["upload", "--media-type", "audio"],
        ["nonsense"],
    ],
)
def test_bad_flag_exits_2_with_one_line(run_main: Run, args: list[str]) -> None:
    code, _, err = run_main(*args)
    assert code == 2, (args, err)
    assert one_line_error(err).startswith("archiver: error:")


@pytest.mark.parametrize(
    "command", [["upload"], ["verify", "--verify-s3"], ["prune-local"], ["setup-bucket"]]
)
def test_bad_s3_client_settings_exit_2_in_every_command(run_main: Run, command: list[str]) -> None:
    code, _, err = run_main(*command, AWS_MAX_ATTEMPTS="six")
    assert code == 2, (command, err)
    assert one_line_error(err) == (
        "archiver: error: AWS_MAX_ATTEMPTS must be a whole number, not 'six'"
    )


def test_bad_retry_mode_exits_2(run_main: Run) -> None:
    code, _, err = run_main("restore", "--all-missing", AWS_RETRY_MODE="fast")
    assert code == 2 and "AWS_RETRY_MODE must be one of" in one_line_error(err)


def test_missing_database_url_exits_2(run_main: Run) -> None:
    code, _, err = run_main("upload", DATABASE_URL="")
    assert code == 2
    assert "DATABASE_URL" in one_line_error(err)


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
