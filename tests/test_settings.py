"""Settings: validation and secret redaction."""

from __future__ import annotations

import pytest

from archiver.errors import ConfigError
from archiver.settings import Settings, UploadOptions, redact_dsn


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
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        Settings().require_database()
