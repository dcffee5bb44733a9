"""The README is a front page and docs/ the reference: every flag `--help` shows is
documented, every command has its page, and the README's two set-up commands stay."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from archiver.cli import cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = "\n".join(p.read_text() for p in sorted((ROOT / "docs").rglob("*.md")))


def commands(group: click.Group = cli, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += commands(command, f"{prefix}{name} ")
        else:
            found.append((f"{prefix}{name}", command))
    return found


def flags(command: click.Command) -> list[str]:
    return [
        flag
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden
        for flag in (*param.opts, *param.secondary_opts)
    ] + ["--help"]


@pytest.mark.parametrize(("name", "command"), commands(), ids=lambda v: str(v))
def test_every_help_flag_is_documented(name: str, command: click.Command) -> None:
    missing = [f for f in flags(command) if not re.search(rf"{re.escape(f)}(?![\w-])", DOCS)]
    assert not missing, f"archiver {name}: {missing} not in docs/"


@pytest.mark.parametrize(("name", "_command"), commands(), ids=lambda v: str(v))
def test_every_command_has_its_page(name: str, _command: click.Command) -> None:
    page = ROOT / "docs" / "commands" / f"{name.split()[0]}.md"
    assert page.is_file() and f"archiver {name}" in page.read_text()


def test_readme_is_a_front_page_with_both_set_up_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert "uv run archiver demo" in readme and "uv run pytest" in readme
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), link
