"""The data plane's decisions: what obstore's answers mean to botocore's classifiers, where it
sends, which keys it takes as they are, what retries and credentials it is given."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from archiver.settings import ClientOptions
from archiver.storage_answers import (
    action_refused,
    error_code,
    http_status,
    is_precondition_failed,
    is_redirect,
)
from archiver.storage_data_plane import (
    BotocoreCredentials,
    client_error,
    endpoint_for,
    retry_config,
    usable_key,
)


def obstore_error(status: str, code: str, message: str = "") -> Exception:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?><Error>'
        f"<Code>{code}</Code><Message>{message}</Message></Error>"
    )
    return Exception(
        "Generic S3 error: Error performing PUT http://127.0.0.1:9000/b/k in 3ms - Server "
        f"returned non-2xx status code: {status}: {body}\n\nDebug source:\n..."
    )


def test_an_answer_becomes_the_client_error_botocore_would_raise() -> None:
    denied = client_error(obstore_error("403 Forbidden", "AccessDenied", "no"), "PutObject")
    assert denied is not None and action_refused(denied) and error_code(denied) == "AccessDenied"
    assert http_status(denied) == 403 and denied.operation_name == "PutObject"

    exists = client_error(obstore_error("412 Precondition Failed", "PreconditionFailed"), "P")
    assert exists is not None and is_precondition_failed(exists)

    moved = client_error(obstore_error("400 Bad Request", "AuthorizationHeaderMalformed"), "P")
    assert moved is not None and is_redirect(moved)

    keys = client_error(obstore_error("403 Forbidden", "InvalidAccessKeyId"), "P")
    assert keys is not None and error_code(keys) == "InvalidAccessKeyId"


def test_no_answer_is_no_client_error() -> None:
    assert client_error(Exception("error sending request: connection refused"), "P") is None
    bare = client_error(Exception("Server returned non-2xx status code: 503 Slow Down: "), "P")
    assert bare is not None and error_code(bare) == "503" and http_status(bare) == 503


AWS = "b-1.s3.eu-west-1.amazonaws.com"
FIPS = "b-1.s3-fips.us-east-1.amazonaws.com"


@pytest.mark.parametrize(
    ("prefix", "where"),
    [
        ("http://127.0.0.1:9000/b-1/", ("http://127.0.0.1:9000", False)),
        (f"https://{AWS}/", (f"https://{AWS}", True)),
        (f"https://{FIPS}/", (f"https://{FIPS}", True)),
        ("https://gw.example/s3/b-1/", None),  # an endpoint with a path of its own
        ("https://other.example/", None),
    ],
)  # fmt: skip
def test_the_endpoint_is_where_botocore_puts_keys(prefix: str, where: object) -> None:
    assert endpoint_for(prefix, "b-1") == where


@pytest.mark.parametrize(
    ("key", "usable"),
    [
        ("cache/2025/01/0123456789abcdef0123456789abcdef.jpg", True),
        ("cache/2025/01/a key+with~odd%chars ü.bin", True),
        ("cache//2025/x.jpg", False),
        ("/cache/x.jpg", False),
        ("cache/./x.jpg", False),
        ("cache/../x.jpg", False),
        ("cache/x/", False),
        ("cache\\x.jpg", False),
        ("", False),
    ],
)
def test_keys_obstore_would_rewrite_go_through_botocore(key: str, usable: bool) -> None:
    assert usable_key(key) is usable


def test_retries_count_as_aws_max_attempts_does() -> None:
    config = retry_config(ClientOptions(max_attempts=6))
    assert config["max_retries"] == 5
    assert retry_config(ClientOptions(max_attempts=1))["max_retries"] == 0


class Frozen:
    def __init__(self, n: int) -> None:
        self.access_key, self.secret_key, self.token = f"AK{n}", f"SK{n}", f"T{n}"


class Refreshable:
    """botocore's refreshable credentials, as far as the provider uses them."""

    def __init__(self) -> None:
        self.n = 0

    def refresh_needed(self) -> bool:
        return False

    async def get_frozen_credentials(self) -> Any:
        self.n += 1
        return Frozen(self.n)


async def test_credentials_are_read_from_botocore_before_each_put() -> None:
    source = Refreshable()
    provider = BotocoreCredentials(source)
    with pytest.raises(RuntimeError):
        provider()
    await provider.refresh()
    first = provider()
    assert (first["access_key_id"], first["secret_access_key"], first["token"]) == (
        "AK1",
        "SK1",
        "T1",
    )
    # obstore asks again within a minute: a refreshed credential reaches it in time
    assert first["expires_at"] - datetime.now(UTC) <= timedelta(seconds=60)
    await provider.refresh()
    assert provider()["access_key_id"] == "AK2"


async def test_static_credentials_never_expire() -> None:
    class Static:
        async def get_frozen_credentials(self) -> Any:
            return Frozen(7)

    provider = BotocoreCredentials(Static())
    await provider.refresh()
    assert provider()["expires_at"] is None
