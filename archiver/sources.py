"""Where each setting came from, for the messages that name it: the `.env` file (loaded
without overriding the environment, its unknown keys warned about), a variable of the
environment, or a flag; what the environment overrides in the `.env`; a variable set but
empty; a flag that would do nothing."""

from __future__ import annotations

import os
from pathlib import Path

import click

from archiver import envfile
from archiver.errors import ConfigError
from archiver.settings import DATABASE_VARIABLES


def load_env_file(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    """`--env-file` (eager): load it, or ./.env, warning about unknown keys (of the file and
    of the environment's ARCHIVER_ variables); what it set and shadowed goes in ctx.meta."""
    path = value or ctx.find_root().meta.get("archiver.env_file")
    if path:
        if not Path(path).is_file():
            raise click.BadParameter(f"{path} is not a file", param_hint="--env-file")
    elif Path(".env").is_file():
        path = ".env"
    warnings = envfile.environment_warnings(dict(os.environ))
    if path:
        in_file, keys, shadowed = envfile.load(Path(path))
        warnings += in_file
        ctx.meta["archiver.env_loaded"] = str(Path(path).resolve())
        ctx.meta["archiver.env_keys"] = keys
        ctx.meta["archiver.env_shadowed"] = shadowed
    for warning in warnings:
        click.echo(f"archiver: warning: {warning}", err=True)


def overrides(ctx: click.Context) -> list[str]:
    """What of the .env the environment overrides, one sentence each (for -v and check):
    a key the environment sets too, and the app's SUPABASE_DB_URL when DATABASE_URL, from
    the environment, comes first."""
    meta = ctx.find_root().meta
    where = meta.get("archiver.env_loaded")
    if where is None:
        return []
    said = [
        f"{key} in {where} is not used: the environment sets it"
        for key in sorted(meta.get("archiver.env_shadowed", ()))
    ]
    first, app = DATABASE_VARIABLES
    keys = meta.get("archiver.env_keys", ())
    if os.environ.get(first) and first not in keys and app in keys:
        said.append(f"{app} in {where} is not used: {first}, from the environment, comes first")
    return said


def _variables(param: click.Parameter) -> list[str]:
    return [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())


def _named(ctx: click.Context, variable: str) -> str:
    """`VARIABLE`, or `VARIABLE in /app/.env` when the .env set it."""
    meta = ctx.find_root().meta
    if variable in meta.get("archiver.env_keys", ()):
        return f"{variable} in {meta['archiver.env_loaded']}"
    return variable


def source_of(ctx: click.Context, name: str) -> str | None:
    """Where the value of option `name` came from, as an error should name it: its flag
    (`--storage-class`), its variable (`ARCHIVER_STORAGE_CLASS`), or the variable and the
    .env file that set it; None for its default."""
    param = next((p for p in ctx.command.params if p.name == name), None)
    source = ctx.get_parameter_source(name)
    if param is None or source is None:
        return None
    if source is click.core.ParameterSource.ENVIRONMENT:
        names = _variables(param)
        variable = next((n for n in names if os.environ.get(n)), names[0] if names else None)
        return _named(ctx, variable) if variable else None
    if source is click.core.ParameterSource.COMMANDLINE:
        opts: list[str] = list(getattr(param, "opts", None) or [name])
        return max(opts, key=len)
    return None


def name_its_source(exc: click.UsageError) -> None:
    """A bad value from a variable (or the .env) is named by it, not by its flag."""
    if isinstance(exc, click.BadParameter) and exc.ctx and exc.param and exc.param.name:
        from_env = click.core.ParameterSource.ENVIRONMENT
        if exc.ctx.get_parameter_source(exc.param.name) is from_env:
            exc.param_hint = source_of(exc.ctx, exc.param.name)


def without_effect(flag: str, needs: str) -> None:
    """A usage error for `flag`, given on the command line, when it would do nothing
    without `needs` (`--interval` without `--watch`): accepted silently, the user would
    believe it applied. (Its variable in the environment or .env is no mistake.)"""
    ctx = click.get_current_context()
    name = flag.lstrip("-").replace("-", "_")
    if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError(f"{flag} has no effect without {needs}")


def empty_variables(ctx: click.Context) -> None:
    """ConfigError for an ARCHIVER_ variable of one of the command's options that is set
    but empty (`ARCHIVER_BUCKET=`): left alone it would mean the default without a word.
    (An empty DATABASE_URL or AWS_ variable is left to its readers: an app's .env may hold
    `DATABASE_URL=` beside the SUPABASE_DB_URL it means, and the AWS SDK reads its own.)"""
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name or "") is click.core.ParameterSource.COMMANDLINE:
            continue
        for variable in _variables(param):
            empty = variable in os.environ and not os.environ[variable].strip()
            if empty and variable.startswith("ARCHIVER_"):
                where = _named(ctx, variable).removeprefix(variable)  # ` in /app/.env`, or ""
                raise ConfigError(
                    f"{variable} is set but empty{where}: give it a value, or remove it for "
                    "the default"
                )


def settings_sources(database_url: str | None) -> dict[str, str | None]:
    """For `Settings`: where the database URL, cache root and profile came from (None: a
    default, or no command line), and the .env read ("" when there was none to read)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return {}
    return {
        "database_from": source_of(ctx, "database_url") if database_url else None,
        "cache_root_from": source_of(ctx, "cache_root"),
        "profile_from": source_of(ctx, "profile"),
        "env_file": ctx.find_root().meta.get("archiver.env_loaded", ""),
    }
