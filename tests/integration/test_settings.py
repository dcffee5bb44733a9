"""Settings: validation and secret redaction."""

from __future__ import annotations

import pytest

from archiver.errors import ConfigError
from archiver.settings import (
    DEFAULT_MAX_ATTEMPTS,
    ClientOptions,
)


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
