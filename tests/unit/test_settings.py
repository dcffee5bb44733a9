"""Settings: validation and secret redaction."""

from __future__ import annotations

import os

import pytest

from archiver.errors import ConfigError
from archiver.settings import (
    DEFAULT_MAX_ATTEMPTS,
    ClientOptions,
    Settings,
    UploadOptions,
    check_dsn,
    redact_dsn,
    scrub,
)


@pytest.mark.parametrize(
    ("dsn", "shown", "hidden"),
    [
        (
            "postgresql://postgres.abc:hunter2@aws-0-eu.pooler.supabase.com:6543/postgres",
            "postgresql://postgres.abc:***@aws-0-eu.pooler.supabase.com:6543/postgres",
            "hunter2",
        ),
        (
            "postgres://u:p%40ss@h/db?sslmode=require",
            "postgres://u:***@h/db?sslmode=require",
            "p%40ss",
        ),
        ("postgresql://u@h/db", "postgresql://u@h/db", None),
        (
            "postgresql://h/db?password=topsecret&x=1",
            "postgresql://h/db?password=***&x=1",
            "topsecret",
        ),
        (
            "host=h user=u password=topsecret dbname=d",
            "host=h user=u password=*** dbname=d",
            "topsecret",
        ),
        (None, "(unset)", None),
        # Passwords holding an unescaped delimiter: everything up to the last `@` is secret.
        ("postgresql://app:Wr?ngPass@h:5432/db", "postgresql://app:***@h:5432/db", "ngPass"),
        ("postgresql://app:Wr/ngPass@h/db", "postgresql://app:***@h/db", "ngPass"),
        ("postgresql://app:Wr#ngP@ss@h/db", "postgresql://app:***@h/db", "Wr"),
        ("postgresql://app:P@ss@h/db", "postgresql://app:***@h/db", "ss@"),
    ],
)
def test_redact_dsn(dsn: str | None, shown: str, hidden: str | None) -> None:
    assert redact_dsn(dsn) == shown
    if hidden:
        assert hidden not in redact_dsn(dsn)


def test_repr_never_shows_the_password() -> None:
    s = Settings(database_url="postgresql://u:hunter2@h:5432/db")
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s)
    assert "***" in repr(s)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bucket": "Bad_Bucket"},
        {"bucket": "ab"},
        {"bucket": "a" * 64},
        {"bucket": "a..b"},
        {"key_prefix": ""},
        {"key_prefix": "/"},
        {"key_prefix": "a/../b"},
        {"endpoint_url": "ftp://x"},
        {"endpoint_url": "localhost:9000"},
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        Settings(**kwargs)  # type: ignore[arg-type]


def test_key_prefix_slashes_are_trimmed() -> None:
    assert Settings(key_prefix="/media/cache/").key_prefix == "media/cache"


def test_defaults_match_the_contract() -> None:
    s = Settings()
    assert (s.bucket, s.key_prefix, str(s.cache_root), s.region) == (
        "social-tui",
        "cache",
        "cache/media",
        "us-east-1",
    )
    o = UploadOptions()
    assert (o.concurrency, o.batch_size, o.limit, o.dry_run, o.force) == (
        32,
        50,
        None,
        False,
        False,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"concurrency": 0},
        {"concurrency": 1025},
        {"batch_size": 0},
        {"limit": -1},
        {"part_size": 1024},
        {"multipart_threshold": 10},
        {"media_types": ("audio",)},
    ],
)
def test_bad_upload_options(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        UploadOptions(**kwargs)  # type: ignore[arg-type]


def test_require_database() -> None:
    with pytest.raises(ConfigError, match=r"DATABASE_URL.*SUPABASE_DB_URL"):
        Settings().require_database()


def test_the_database_url_is_database_url_else_the_apps_supabase_db_url() -> None:
    app = "postgresql://u@pooler.example:6543/postgres"
    settings = Settings.from_env({"SUPABASE_DB_URL": app})
    assert (settings.database_url, settings.database_from) == (app, "SUPABASE_DB_URL")
    both = Settings.from_env({"SUPABASE_DB_URL": app, "DATABASE_URL": "postgresql://x/y"})
    assert (both.database_url, both.database_from) == ("postgresql://x/y", "DATABASE_URL")
    assert Settings.from_env({"DATABASE_URL": ""}).database_url is None


@pytest.mark.parametrize(
    ("dsn", "error"),
    [
        ("postgresql://u:pw@h:5432/db", None),
        ("postgres://u:p%40ss@h/db?sslmode=require", None),
        ("postgresql://u:pw@h1:5432,h2:5433/db", None),
        ("postgresql://u:pw@[::1]:5432/db", None),
        ("postgresql://u:pw@h/db?options=-c%20x=a@b", None),  # an @ inside a query value
        ("postgresql:///db?host=/run/postgresql", None),
        ("host=h user=u password=x dbname=d", None),
        ("postgresql://app:Wr?ngPass@h/db", "unescaped"),
        ("postgresql://app:Wr/ngPass@h/db", "unescaped"),
        ("postgresql://app:Wr#ngP@ss@h/db", "unescaped"),
        ("postgresql://app:P@ss@h/db", "unescaped"),
        ("postgresql://app:pw@h:99999/db", "invalid port '99999'"),
        ("postgresql://app:pw@h:0/db", "invalid port '0'"),
        ("postgresql://app:pw@h:5432,h2:x/db", "invalid port 'x'"),
        ("mysql://u:pw@h/db", "must start with postgresql://"),
        # Copied without (all of) the scheme: not a URL, not key=value pairs.
        ("postgres.abcd:S3cretPass@host:6543/postgres", "is not a database URL"),
        ("postgresql//u:pw@h/db", "is not a database URL"),
        ("postgresql:/u:pw@h/db", "is not a database URL"),
        ("u:pw@h/db?sslmode=require", "is not a database URL"),
    ],
)
def test_check_dsn(dsn: str, error: str | None) -> None:
    if error is None:
        assert check_dsn(dsn) == dsn
        return
    with pytest.raises(ConfigError) as caught:
        check_dsn(dsn)
    assert error in str(caught.value)
    assert "pw" not in str(caught.value).replace("password", "")
    for secret in ("Wr", "ngPass", "ngP", "P@ss", "S3cret", "Pass"):
        assert secret not in str(caught.value)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgres.abcd:S3cretPass@host:6543/postgres",
        "postgresql//u:S3cretPass@h/db",
        "postgresql:/u:S3cretPass@h/db",
        "S3cretPass",
    ],
)
def test_strings_of_no_known_shape_are_never_printed(dsn: str) -> None:
    assert "S3cret" not in redact_dsn(dsn)
    message = f"could not connect to {dsn}: password S3cretPass rejected"
    assert "S3cret" not in scrub(message, dsn)
    settings = Settings(database_url=dsn, database_from="SUPABASE_DB_URL in /app/.env")
    assert "S3cret" not in repr(settings)
    with pytest.raises(ConfigError, match=r"^SUPABASE_DB_URL in /app/.env is not a database URL"):
        settings.require_database()


def test_scrub_removes_every_piece_of_a_malformed_password() -> None:
    dsn = "postgresql://app:Wr?ngPass@h/db"
    message = f"cannot use {dsn}: host 'ngPass@h' not found, user app, password Wr?ngPass"
    clean = scrub(message, dsn)
    assert "ngPass" not in clean and "Wr?" not in clean
    assert "user app" in clean


def test_client_config_counts_attempts_as_botocore_must_read_them() -> None:
    from archiver.storage import client_config

    config = client_config(ClientOptions(max_attempts=2), max_connections=4)
    # `max_attempts` in this dict would mean retries after the first try (3 attempts).
    assert config.retries == {"mode": "standard", "total_max_attempts": 2}
    assert config.request_checksum_calculation == "when_required"
    assert config.max_pool_connections == 4 + 8
    assert (config.connect_timeout, config.read_timeout) == (10.0, 60.0)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ClientOptions("standard", DEFAULT_MAX_ATTEMPTS, "when_required")),
        ({"AWS_MAX_ATTEMPTS": "2"}, ClientOptions("standard", 2, "when_required")),
        ({"AWS_MAX_ATTEMPTS": " 1 "}, ClientOptions("standard", 1, "when_required")),
        ({"AWS_RETRY_MODE": "ADAPTIVE"}, ClientOptions("adaptive", 6, "when_required")),
        (
            {"AWS_REQUEST_CHECKSUM_CALCULATION": "when_supported"},
            ClientOptions("standard", 6, "when_supported"),
        ),
        ({"AWS_MAX_ATTEMPTS": ""}, ClientOptions()),  # set but empty: the default
    ],
)
def test_client_options_from_the_environment(env: dict[str, str], expected: ClientOptions) -> None:
    assert ClientOptions.from_env(env) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AWS_MAX_ATTEMPTS": "abc"}, "AWS_MAX_ATTEMPTS must be a whole number"),
        ({"AWS_MAX_ATTEMPTS": "-1"}, "AWS_MAX_ATTEMPTS must be a whole number"),
        ({"AWS_MAX_ATTEMPTS": "0"}, "AWS_MAX_ATTEMPTS must be at least 1"),
        ({"AWS_RETRY_MODE": "fast"}, "AWS_RETRY_MODE must be one of standard, adaptive, legacy"),
        ({"AWS_REQUEST_CHECKSUM_CALCULATION": "always"}, "AWS_REQUEST_CHECKSUM_CALCULATION"),
    ],
)
def test_bad_client_options_are_config_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ClientOptions.from_env(env)


def test_from_env_reads_the_apps_env_file_under_the_environment(tmp_path, monkeypatch) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "SUPABASE_DB_URL=postgresql://app@db.example:6543/postgres\n"
        "ARCHIVER_BUCKET=from-file\nARCHIVER_KEY_PREFIX=file-prefix\n"
    )
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({"ARCHIVER_KEY_PREFIX": "env-prefix"})
    assert (settings.bucket, settings.key_prefix) == ("from-file", "env-prefix")
    assert settings.database_from == f"SUPABASE_DB_URL in {dotenv}"
    assert settings.env_file == str(dotenv)
    assert Settings.from_env({}, env_file=None).bucket == "social-tui"  # no file read
    for name in ("ARCHIVER_BUCKET", "ARCHIVER_KEY_PREFIX", "DATABASE_URL", "SUPABASE_DB_URL"):
        monkeypatch.setenv(name, "")  # (so that the teardown removes what from_env() sets)
        monkeypatch.delenv(name)
    assert Settings.from_env().bucket == "from-file"  # no argument: the process's environment
    assert os.environ["ARCHIVER_BUCKET"] == "from-file"  # (for the AWS SDK, as the CLI does)
