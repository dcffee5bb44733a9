"""The exceptions that cross module boundaries.

Adapters translate their driver's exceptions into these, so nothing above `db.py` and
`storage.py` ever sees an asyncpg or botocore type. Per-row problems are *not* exceptions:
they are outcomes (see `models.Outcome`).
"""

from __future__ import annotations


class ArchiverError(Exception):
    """Base class: a failure that stops a command. `exit_code` is what the CLI returns."""

    exit_code = 1


class ConfigError(ArchiverError):
    """Bad flag, bad configuration, unreachable service or missing credentials (exit 2)."""

    exit_code = 2


class DatabaseError(ArchiverError):
    """The database failed in a way that a retry of the same statement may fix."""


class DatabaseUnavailable(ConfigError):
    """The database cannot be reached or refuses us at start-up."""


class StorageError(ArchiverError):
    """An S3 request failed for one object (the row is `failed`, the run goes on)."""


class AccessDenied(StorageError):
    """S3 refused one object request (403); the message names the IAM action it needs.
    For prune-local, restore and verify that is one row's failure; upload stops on it."""


class BucketMissing(ConfigError):
    """The target bucket does not exist."""


class StorageUnavailable(ConfigError):
    """S3 cannot be used at all: no credentials, access denied, endpoint unreachable."""


class AuthenticationFailed(ConfigError):
    """The database or S3 refused who archiver is (a wrong password, unknown or revoked
    keys): not an outage. A watch ends on it (exit 2), so that its supervisor restarts it
    with the configuration fixed, rather than backing off forever."""


class DatabaseAuthFailed(DatabaseUnavailable, AuthenticationFailed):
    """The database refused the DSN's user or password."""


class CredentialsRefused(StorageUnavailable, AuthenticationFailed):
    """S3 refused the credentials themselves (InvalidAccessKeyId, SignatureDoesNotMatch,
    ExpiredToken, ...)."""
