"""`upload --watch`'s rules: backoff after failed passes, which pass gets a line, and what
is retried."""

from __future__ import annotations

from archiver.commands.watch import (
    BACKOFF_MAX_S,
    backoff_s,
    did_work,
    full_pass,
    pass_line,
    retryable,
)
from archiver.errors import (
    BucketMissing,
    ConfigError,
    CredentialsRefused,
    DatabaseAuthFailed,
    DatabaseError,
    DatabaseUnavailable,
    StorageUnavailable,
)
from archiver.models import Outcome, Summary

# -- pure -----------------------------------------------------------------------------------


def test_backoff_doubles_from_five_seconds_up_to_a_cap() -> None:
    assert backoff_s(60, 0) == 60
    assert [backoff_s(60, n) for n in (1, 2, 3, 4, 5)] == [5, 10, 20, 40, 80]
    assert backoff_s(60, 20) == BACKOFF_MAX_S
    assert backoff_s(900, 20) == 900  # never more often than the interval


def summary_of(**counts: int) -> Summary:
    s = Summary()
    for name, n in counts.items():
        s.counts[Outcome(name)] = n
    return s


def test_a_pass_gets_a_line_when_it_did_something() -> None:
    assert not did_work(summary_of(), 0)
    assert not did_work(summary_of(known_problem=3), 0)  # set aside untried
    assert did_work(summary_of(uploaded=1), 0)
    assert did_work(summary_of(failed=1), 0)
    assert did_work(summary_of(missing_local=2), 0)  # files the backfill has not written yet
    assert not did_work(summary_of(missing_local=2), 2)  # ... said once, not every pass
    assert did_work(summary_of(missing_local=1), 2)
    recorded = summary_of()
    recorded.db_updated = 4  # uploads an earlier pass could not record
    assert did_work(recorded, 0)


def test_a_pass_is_full_when_it_worked_on_limit_rows_whatever_it_found_missing() -> None:
    assert not full_pass(summary_of(uploaded=7), None)
    assert full_pass(summary_of(uploaded=7), 7)
    assert full_pass(summary_of(uploaded=5, corrupt=1, failed=1), 7)
    assert not full_pass(summary_of(uploaded=6), 7)
    # Missing files and known problems take none of the limit: the pass did not stop at it.
    assert not full_pass(summary_of(uploaded=1, missing_local=6), 7)
    assert not full_pass(summary_of(uploaded=1, known_problem=6), 7)


def test_a_file_gone_for_good_is_not_repeated_in_every_pass_line() -> None:
    first = pass_line(1, summary_of(uploaded=2, missing_local=1), 0)
    assert "1 file not there yet" in first
    again = pass_line(2, summary_of(uploaded=3, missing_local=1), 1)
    assert "not there yet" not in again and "3 uploaded" in again
    assert "2 files not there yet" in pass_line(3, summary_of(uploaded=1, missing_local=2), 1)


def test_outages_are_retried_configuration_errors_are_not() -> None:
    assert retryable(DatabaseUnavailable("connection refused"))
    assert retryable(StorageUnavailable("S3 is not reachable"))
    assert retryable(DatabaseError("connection lost"))
    assert not retryable(ConfigError("no database configured"))
    assert not retryable(BucketMissing("bucket 'x' does not exist"))
    # A changed password or revoked keys: the supervisor restarts with the new ones.
    assert not retryable(DatabaseAuthFailed("password authentication failed"))
    assert not retryable(CredentialsRefused("S3 refused these credentials"))
