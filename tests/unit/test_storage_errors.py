"""How botocore errors become archiver errors (the table in storage.translate)."""

from __future__ import annotations

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ProfileNotFound,
)

from archiver.checksums import content_md5
from archiver.errors import (
    BucketMissing,
    CredentialsRefused,
    StorageError,
    StorageUnavailable,
)
from archiver.storage_answers import translate


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


@pytest.mark.parametrize(
    ("exc", "kind", "exit_code"),
    [
        (client_error("NoSuchBucket", 404), BucketMissing, 2),
        (client_error("BucketAlreadyExists", 409), StorageUnavailable, 2),
        (client_error("AccessDenied", 403), StorageUnavailable, 2),
        # The credentials themselves refused: a watch ends on these.
        (client_error("InvalidAccessKeyId", 403), CredentialsRefused, 2),
        (client_error("SignatureDoesNotMatch", 403), CredentialsRefused, 2),
        (client_error("ExpiredToken", 400), CredentialsRefused, 2),
        (NoCredentialsError(), StorageUnavailable, 2),
        (ProfileNotFound(profile="ab-power-user"), StorageUnavailable, 2),
        (client_error("SlowDown", 503), StorageError, 1),  # after botocore's retries: row fails
        (client_error("InternalError", 500), StorageError, 1),
        (client_error("BadDigest", 400), StorageError, 1),
        (EndpointConnectionError(endpoint_url="http://x"), StorageError, 1),
    ],
)
def test_translate(exc: Exception, kind: type, exit_code: int) -> None:
    err = translate(exc, "social-tui", "PUT k")
    assert type(err) is kind
    assert err.exit_code == exit_code  # type: ignore[attr-defined]
    assert "social-tui" in str(err) or kind is StorageError or "credentials" in str(err)


def test_content_md5() -> None:
    assert content_md5("d41d8cd98f00b204e9800998ecf8427e") == "1B2M2Y8AsgTpgAmY7PhCfg=="
