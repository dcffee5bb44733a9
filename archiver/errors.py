"""Every exception that crosses a module boundary, and the exit code of an interrupted run.

Adapters translate their driver's exceptions into these, so nothing above `db.py` and the
`storage*.py` modules ever sees an asyncpg or botocore type. Per-row problems are *not* exceptions:
they are outcomes (see `models.Outcome`). Each class says two things explicitly:

- `fatal`: it stops the whole run (an infrastructure failure), rather than being one row's
  or one setting's failure that is reported and counted;
- `retryable`: a later attempt (the next pass of `upload --watch`) may succeed without
  anyone changing the configuration.
"""

from __future__ import annotations

INTERRUPTED_EXIT_CODE = 130  # a run stopped by Ctrl-C or SIGTERM (128 + SIGINT)


class ArchiverError(Exception):
    """Base class: a failure that stops a command. `exit_code` is what the CLI returns."""

    exit_code = 1
    fatal = True
    retryable = True


class Interrupted(ArchiverError):
    """Ctrl-C or SIGTERM while a command was starting (connecting, checking, setting up): it
    stops at once, as nothing is in flight that could be finished (exit 130)."""

    exit_code = INTERRUPTED_EXIT_CODE
    retryable = False


class ConfigError(ArchiverError):
    """Bad flag, bad configuration, unreachable service or missing credentials (exit 2)."""

    exit_code = 2
    retryable = False


class DatabaseError(ArchiverError):
    """The database failed in a way that a retry of the same statement may fix."""


class DatabaseUnavailable(ConfigError):
    """The database cannot be reached or refuses us at start-up."""

    retryable = True


class StorageError(ArchiverError):
    """An S3 request failed for one object (the row is `failed`, the run goes on)."""

    fatal = False


class AccessDenied(StorageError):
    """S3 refused one object request (403); the message names the IAM action it needs.
    For prune-local, restore and verify that is one row's failure; upload stops on it."""


class BucketMissing(ConfigError):
    """The target bucket does not exist."""


class StorageUnavailable(ConfigError):
    """S3 cannot be used at all: no credentials, access denied, endpoint unreachable."""

    retryable = True


class AuthenticationFailed(ConfigError):
    """The database or S3 refused who archiver is (a wrong password, unknown or revoked
    keys): not an outage. A watch ends on it (exit 2), so that its supervisor restarts it
    with the configuration fixed, rather than backing off forever."""

    retryable = False


class DatabaseAuthFailed(DatabaseUnavailable, AuthenticationFailed):
    """The database refused the DSN's user or password."""

    retryable = False


class CredentialsRefused(StorageUnavailable, AuthenticationFailed):
    """S3 refused the credentials themselves (InvalidAccessKeyId, SignatureDoesNotMatch,
    ExpiredToken, ...)."""

    retryable = False


# -- answers about one setting or one object, handled where they are raised ----------------


class SettingUnsupported(Exception):
    """The S3-compatible server does not implement a bucket or distribution setting."""

    fatal = False
    retryable = False


class SettingRefused(Exception):
    """The server refused a bucket or distribution setting; the message says why (code, or
    the IAM action the credentials lack)."""

    fatal = False
    retryable = False


class ConditionalWritesUnsupported(Exception):
    """The server refused `If-None-Match: *` on PUT as not implemented."""

    fatal = False
    retryable = False


class RestoreFailed(Exception):
    """This row's download cannot become its file."""

    fatal = False
    retryable = True


class NotARegularFile(OSError):
    """Something other than a regular file (a FIFO, a device, a directory) is at the name."""

    fatal = False
    retryable = False
