"""Decisions of the commands, table-driven, without a server: restore's plan, check's
verdicts, multipart part sizing, the `.env` typo warnings, watch's retry rule, and the
command line refusing bad flags before it touches a database or a bucket."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from archiver import errors
from archiver.cli import cli
from archiver.commands.check import FAIL, OK, WARN, _privileges, _verdict
from archiver.commands.restore import Target, plan
from archiver.commands.watch import retryable
from archiver.db import Page, pages
from archiver.envfile import environment_warnings, unknown_key_warnings
from archiver.models import MediaRow
from archiver.multipart import part_size_for
from archiver.policies import RetryPolicy, retrying
from archiver.resolve import Resolver
from archiver.settings import MAX_PARTS, MIB, Settings
from tests.helpers import archived_row

MD5 = "0123456789abcdef0123456789abcdef"


def media(**kw: object) -> MediaRow:
    return archived_row(MD5, f"cache/2025/03/{MD5}.jpg", **kw)


# -- restore's plan ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (media(), Target(MD5, f"cache/2025/03/{MD5}.jpg", ("images",), f"{MD5}.jpg")),
        (
            media(local_file_path="cache/media/videos/x.mp4"),
            Target(MD5, f"cache/2025/03/{MD5}.jpg", ("videos",), "x.mp4", row_path=True),
        ),
        # A path outside the cache root is not where the file goes back.
        (
            media(local_file_path="/etc/passwd"),
            Target(MD5, f"cache/2025/03/{MD5}.jpg", ("images",), f"{MD5}.jpg"),
        ),
        (media(media_type="../x"), "not a plain word"),
        (media(archive_url="s3://other/cache/2025/03/x.jpg"), "bucket"),
        (media(md5_sum="nope"), "md5"),
    ],
)
def test_restore_plan(tmp_path: Path, row: MediaRow, expected: Target | str) -> None:
    root = tmp_path / "cache" / "media"
    root.mkdir(parents=True)
    settings = Settings(bucket="bucket", cache_root=root)
    got = plan(row, settings, Resolver(root, tmp_path))
    if isinstance(expected, str):
        assert isinstance(got, str) and expected in got
    else:
        assert got == expected


# -- check's verdicts --------------------------------------------------------------------

ALL = ["SELECT", "INSERT", "UPDATE", "DELETE"]


@pytest.mark.parametrize(
    ("found", "state", "says"),
    [
        ({"can_select": False, "can_update": True, "tables": {}}, FAIL, "missing SELECT"),
        ({"can_select": True, "can_update": False, "tables": {}}, FAIL, "missing UPDATE"),
        (
            {"can_select": True, "can_update": True, "can_create": True, "tables": {"t": None}},
            OK,
            "t absent (upload creates it)",
        ),
        (
            {"can_select": True, "can_update": True, "can_create": False, "tables": {"t": None}},
            WARN,
            "db init",
        ),
        (  # upload would stop on it: check fails too, naming the GRANT
            {"can_select": True, "can_update": True, "user": "app", "tables": {"t": ["SELECT"]}},
            FAIL,
            "t: missing INSERT, UPDATE, DELETE (as the table's owner, run "
            "`GRANT SELECT, INSERT, UPDATE, DELETE ON t TO app;`)",
        ),
        (  # a missing table (WARN) does not hide one that fails
            {
                "can_select": True,
                "can_update": True,
                "can_create": False,
                "user": "App Role",
                "tables": {"t": ["SELECT"], "u": None},
            },
            FAIL,
            'TO "App Role";',
        ),
        ({"can_select": True, "can_update": True, "tables": {"t": ALL}}, OK, "t ok"),
    ],
)
def test_check_privileges(found: dict[str, object], state: str, says: str) -> None:
    got_state, detail = _privileges(found)
    assert got_state == state and says in detail


@pytest.mark.parametrize(
    ("found", "verdict"),
    [
        ({"a": True, "b": True}, True),
        ({"a": True, "b": False}, False),
        ({"a": None, "b": True}, None),
        ({"a": None, "b": False}, False),
        ({"a": True}, None),  # an action not probed cannot be told
    ],
)
def test_check_permission_verdict(found: dict[str, bool | None], verdict: bool | None) -> None:
    assert _verdict(found, ("a", "b")) is verdict


# -- part sizing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "preferred", "expected"),
    [
        (100 * MIB, 8 * MIB, 8 * MIB),
        (8 * MIB * MAX_PARTS, 8 * MIB, 8 * MIB),  # exactly 10,000 parts
        (8 * MIB * MAX_PARTS + 1, 8 * MIB, 9 * MIB),  # one byte more: grown by a whole MiB
        (5 * 1024**4, 8 * MIB, 525 * MIB),  # 5 TiB, S3's largest object
    ],
)
def test_part_size_keeps_within_ten_thousand_parts(
    size: int, preferred: int, expected: int
) -> None:
    got = part_size_for(size, preferred)
    assert got == expected
    assert -(-size // got) <= MAX_PARTS and got % MIB == 0


# -- the .env typo check -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("ARCHIVER_BUCKT", "ARCHIVER_BUCKET"),
        ("database_url", "DATABASE_URL"),
        ("AWS_REGOIN", "AWS_REGION"),
        ("ARCHIVER_WATCH_INTERVALS", "ARCHIVER_WATCH_INTERVAL"),
    ],
)
def test_env_file_typos_name_the_known_key(key: str, hint: str) -> None:
    (line,) = unknown_key_warnings([key], ".env")
    assert f"unknown key {key} (did you mean {hint}?)" in line


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("SUPABASE_DB_ULR", "SUPABASE_DB_URL"),  # the app's database URL, misspelt
        ("ARCHIVER_CONCURENCY", "ARCHIVER_CONCURRENCY"),
        ("ARCHIVER_LOGFILE", "ARCHIVER_LOG_FILE"),
        ("ARCHIVER_PUT_CLIENTS", "ARCHIVER_PUT_CLIENT"),
        ("ARCHIVER_ZZYZX_QUUX", None),  # close to none: no guess (once: ARCHIVER_CDN_KEY_ID)
        ("AWS_FROBNICATE", None),
    ],
)
def test_typo_hints_cover_every_key_and_guess_only_when_close(key: str, hint: str | None) -> None:
    (line,) = unknown_key_warnings([key], ".env")
    assert line.endswith(
        f"(did you mean {hint}?); it is ignored" if hint else f"{key}; it is ignored"
    )


def test_exported_variables_of_archivers_prefix_are_checked_too() -> None:
    environ = {"ARCHIVER_BUKET": "x", "ARCHIVER_BUCKET": "y", "SUPABASE_DB_ULR": "z", "HOME": "/"}
    assert environment_warnings(environ) == [
        "environment: unknown key ARCHIVER_BUKET (did you mean ARCHIVER_BUCKET?); it is ignored"
    ]


@pytest.mark.parametrize(
    "key", ["DATABASE_URL", "SUPABASE_DB_URL", "ARCHIVER_CDN_DOMAIN", "SUPABASE_URL", "PORT"]
)
def test_env_file_known_and_foreign_keys_pass_silently(key: str) -> None:
    assert unknown_key_warnings([key], ".env") == []


# -- what a watch retries ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "again"),
    [
        (errors.DatabaseUnavailable("down"), True),
        (errors.StorageUnavailable("down"), True),
        (errors.DatabaseError("lost"), True),
        (errors.ConfigError("bad flag"), False),
        (errors.BucketMissing("gone"), False),
        (errors.DatabaseAuthFailed("password"), False),
        (errors.CredentialsRefused("keys"), False),
    ],
)
def test_watch_retries_outages_not_configuration(exc: errors.ArchiverError, again: bool) -> None:
    assert retryable(exc) is again and exc.retryable is again


# -- the command line refuses bad input before any connection ----------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["upload", "--watch", "--dry-run"], "--watch cannot be combined with --dry-run"),
        (["upload", "--watch", "--media-id", "x"], "--watch cannot be combined with --media-id"),
        (["upload", "--concurrency", "0"], "--concurrency"),
        (["upload", "--part-size", "4"], "--part-size"),
        (["upload", "--max-bandwidth", "fast"], "is not a rate"),
        (["upload", "--since", "2025-02-01", "--until", "2025-01-01"], "--since must be before"),
        (["url", "m1", "--expires", "0"], "is not a duration"),
        (["iam-policy", "--kms-key", "alias/x"], "give the key's ARN"),
        (["setup-bucket", "--bucket", "Not_A_Bucket"], "bucket"),
        (["setup-cdn", "--signed"], "--signed needs --cdn-private-key"),
        (["upload", "--interval", "5"], "--interval has no effect without --watch"),
        (["verify", "--limit", "3"], "--limit has no effect without --verify-s3 or --check-local"),
        (["upload", "--max-bandwidth", "100"], "below 1 KiB/s (0 means no limit)"),
        (["setup-bucket", "--http-endpoint-url", "https://x"], "not a plain http:// URL"),
    ],
)
def test_bad_flags_exit_2_in_one_line(args: list[str], says: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": "postgresql://u:s3cret@127.0.0.1:9/db", "ARCHIVER_CDN_PRIVATE_KEY": None}
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=True)
    message = result.output + (str(result.exception) if result.exception else "")
    assert result.exit_code != 0
    assert says in message
    assert "s3cret" not in message


def test_entry_point_turns_errors_into_one_line() -> None:
    """Through `main` (what the installed command runs): exit 2, one line, no traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "archiver", "upload", "--watch", "--force"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "archiver: error: --watch cannot be combined with --force"


# -- the one paging loop and the one retry loop ---------------------------------------------


@pytest.mark.parametrize(
    ("total", "limit", "page_rows", "fetches"),
    [(0, None, 3, 1), (7, None, 3, 3), (6, None, 3, 3), (7, 4, 3, 2), (7, 3, 3, 1)],
)
async def test_pages_reads_keyset_pages_up_to_the_limit(
    total: int, limit: int | None, page_rows: int, fetches: int
) -> None:
    ids = [f"m{i}" for i in range(total)]
    asked: list[tuple[str | None, int]] = []
    seen_pages: list[int] = []

    async def fetch(after: str | None, size: int) -> Page:
        asked.append((after, size))
        start = 0 if after is None else ids.index(after) + 1
        rows = [media(media_id=i) for i in ids[start : start + size]]
        return Page(rows, rows[-1].media_id if len(rows) == size else None)

    got = []
    async for rows in pages(fetch, limit=limit, page_rows=page_rows):
        seen_pages.append(len(rows))
        got.extend(r.media_id for r in rows)
    assert got == ids[: limit if limit is not None else total]
    assert len(asked) == fetches and sum(seen_pages) == len(got)


async def test_retrying_backs_off_until_the_deadline() -> None:
    now = [0.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    async def down() -> int:
        raise errors.DatabaseError("connection lost")

    policy = RetryPolicy(first_delay_s=1, max_delay_s=4, deadline_s=10)
    with pytest.raises(errors.DatabaseError):
        await retrying(policy, down, clock=lambda: now[0], sleep=sleep)
    assert waits == [1, 2, 4]  # a fourth wait (4 s) would pass the 10 s deadline

    calls = iter([errors.DatabaseError("blip"), 7])

    async def flaky() -> int:
        answer = next(calls)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert await retrying(policy, flaky, clock=lambda: now[0], sleep=sleep) == 7


def test_help_says_a_default_holds_unless_its_variable_is_set() -> None:
    result = CliRunner().invoke(cli, ["upload", "--help"], env={"ARCHIVER_BUCKET": "mine"})
    text = " ".join(result.output.split())
    assert "social-tui, unless ARCHIVER_BUCKET is set" in text
    assert "[default: social-tui]" not in text
