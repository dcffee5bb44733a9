"""Hostile rows: every column of post_media is untrusted. Each reproduction of the
audit runs here through the real command, against the real PostgreSQL and S3 server."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from archiver.claims import here
from archiver.demo.localpg import free_port
from archiver.demo.sample import SampleRow, file_bytes, insert_rows
from archiver.settings import MIB
from tests.helpers import md5, media_file, run_cli
from tests.proxy import Request, Respond

DEC = datetime(2025, 12, 3, 10, 0)
JOBS = (
    ("upload", "--dry-run"),
    ("upload",),
    ("verify", "--verify-s3", "--check-local"),
    ("prune-local", "--dry-run"),
    ("prune-local",),
    ("restore", "--all-missing"),
)


def rel(env: Any, path: Path) -> str:
    return os.path.relpath(path, env.workdir)


def json_of(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The one JSON object a command printed; it must have ended as a run, not a crash."""
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode in (0, 1), (out.returncode, out.stderr)
    return json.loads(out.stdout)


def every_command(env: Any) -> dict[tuple[str, ...], dict[str, Any]]:
    """Run each command that pages rows; each must finish with its report, exit 0 or 1."""
    return {job: json_of(run_cli(env, *job, "--json")) for job in JOBS}


async def archived_row(
    env: Any, db: Any, media_id: str, rng: random.Random, *, size: int = 3000
) -> tuple[SampleRow, Path, bytes]:
    """A row with a file, archived by a real upload."""
    data = file_bytes(".jpg", size, rng)
    path = media_file(env.cache_root / "images", f"{md5(data)}.jpg", data)
    row = SampleRow(media_id, "image", md5(data), "image/jpeg", rel(env, path), DEC)
    await insert_rows(db, [row])
    out = run_cli(env, "upload", "--json")
    assert out.returncode == 0, out.stderr
    return row, path, data


async def url_of(db: Any, media_id: str) -> str | None:
    return await db.fetchval("SELECT archive_url FROM post_media WHERE media_id = $1", media_id)


# -- 1. prune-local deletes only what it proved ---------------------------------------------


async def test_prune_never_deletes_a_file_whose_own_bytes_it_has_not_proved(env, db, s3) -> None:
    rng = random.Random(1201)
    _m_row, m_path, _ = await archived_row(env, db, "archived-m", rng, size=5000)
    v = file_bytes(".jpg", 5000, rng)  # same size, never archived
    v_path = media_file(env.cache_root / "images", f"{md5(v)}.jpg", v)
    m_url = await url_of(db, "archived-m")
    m_md5 = m_path.name[:32]
    await insert_rows(
        db,
        [
            SampleRow("v-own", "image", md5(v), "image/jpeg", rel(env, v_path), DEC),
            # V's path, with M's md5_sum and archive_url: M's object is intact, V is not M.
            SampleRow(
                "evil-prune", "image", m_md5, "image/jpeg", rel(env, v_path), DEC, archive_url=m_url
            ),
        ],
    )

    out = run_cli(env, "prune-local", "--json")
    result = json_of(out)

    assert v_path.read_bytes() == v  # never archived: still there
    assert not m_path.exists()  # proved (its own bytes and its object): deleted
    assert result["deleted"] == 1
    kept = {k["media_id"]: k["detail"] for k in result["kept"]}
    assert "the local file's bytes hash to" in kept["evil-prune"]
    assert out.returncode == 1
    assert await url_of(db, "v-own") is None


async def test_prune_keeps_a_file_that_a_row_not_yet_archived_still_needs(env, db, s3) -> None:
    rng = random.Random(1202)
    row, path, data = await archived_row(env, db, "twin-a", rng)
    await insert_rows(db, [SampleRow("twin-b", "image", row.md5_sum, "image/jpeg", None, DEC)])

    out = run_cli(env, "prune-local", "--json")
    result = json_of(out)
    assert out.returncode == 0  # keeping a file for the next upload is no problem
    assert (result["deleted"], result["kept_needed"]) == (0, 1)
    assert path.read_bytes() == data

    assert json_of(run_cli(env, "upload", "--json"))["skipped_existing"] == 1
    assert await url_of(db, "twin-b") is not None
    assert json_of(run_cli(env, "prune-local", "--json"))["deleted"] == 1
    assert not path.exists()


# -- 2. no row stops a run ---------------------------------------------------------------------


async def add_good_rows(env: Any, db: Any, n: int, rng: random.Random) -> list[SampleRow]:
    rows = []
    for i in range(n):
        data = file_bytes(".png", 2000 + i, rng)
        media_file(env.cache_root / "images", f"{md5(data)}.png", data)
        rows.append(SampleRow(f"good-{i}", "image", md5(data), "image/png", None, DEC))
    await insert_rows(db, rows)
    return rows


async def test_a_path_too_long_to_look_up_is_an_invalid_row_in_every_command(env, db, s3) -> None:
    rng = random.Random(1203)
    await add_good_rows(env, db, 3, rng)
    data = file_bytes(".jpg", 1000, rng)
    digest = md5(data)
    s3.put_object(Bucket=env.bucket, Key=f"cache/2025/12/{digest}.jpg", Body=data)
    await insert_rows(
        db,
        [
            SampleRow("long-new", "image", md5(b"x"), "image/jpeg", "x" * 300, DEC),
            SampleRow(
                "long-archived",
                "image",
                digest,
                "image/jpeg",
                "cache/media/images/" + "y" * 300,
                DEC,
                archive_url=f"s3://{env.bucket}/cache/2025/12/{digest}.jpg",
            ),
        ],
    )

    results = every_command(env)

    assert results[("upload", "--dry-run")]["invalid"] == 1
    assert results[("upload", "--dry-run")]["would_upload"] == 3
    upload = results[("upload",)]
    assert (upload["uploaded"], upload["invalid"]) == (3, 1)
    verify = results[("verify", "--verify-s3", "--check-local")]
    assert verify["local"]["invalid"] == 2
    assert {p["media_id"] for p in verify["problems"] if p["kind"] == "invalid"} >= {"long-new"}
    assert results[("prune-local",)]["invalid"] == 1
    assert results[("prune-local",)]["deleted"] == 3
    restore = results[("restore", "--all-missing")]
    assert restore["restored"] == 3  # the pruned files come back
    assert [f["media_id"] for f in restore["failures"]] == ["long-archived"]
    assert await db.fetchval("SELECT count(archive_url) FROM post_media") == 4


@pytest.mark.parametrize("created_at", ["0044-03-15 BC", "20000-01-01", "infinity"])
async def test_an_out_of_range_created_at_is_an_invalid_row_in_every_command(
    env, db, s3, created_at: str
) -> None:
    rng = random.Random(1204)
    good = await add_good_rows(env, db, 3, rng)
    data = file_bytes(".jpg", 1000, rng)
    path = media_file(env.cache_root / "images", f"{md5(data)}.jpg", data)
    await insert_rows(
        db,
        [
            SampleRow("when-new", "image", md5(data), "image/jpeg", rel(env, path), DEC),
            SampleRow(
                "when-archived",
                "image",
                good[0].md5_sum,
                "image/png",
                None,
                DEC,
                archive_url=f"s3://{env.bucket}/cache/2025/12/{good[0].md5_sum}.png",
            ),
        ],
    )
    await db.execute(
        "UPDATE post_media SET created_at = $1::text::timestamp WHERE media_id LIKE 'when-%'",
        created_at,
    )

    results = every_command(env)

    upload = results[("upload",)]
    assert (upload["uploaded"], upload["invalid"]) == (3, 1)
    verify = results[("verify", "--verify-s3", "--check-local")]
    invalid = {p["media_id"]: p["detail"] for p in verify["problems"] if p["kind"] == "invalid"}
    assert "created_at" in invalid["when-archived"]
    assert results[("prune-local", "--dry-run")]["invalid"] == 1
    restored = results[("restore", "--all-missing")]
    failures = {f["media_id"]: f["detail"] for f in restored["failures"]}
    assert "created_at" in failures.get("when-archived", "created_at")
    good_urls = await db.fetch("SELECT archive_url FROM post_media WHERE media_id LIKE 'good-%'")
    assert all(r["archive_url"] for r in good_urls)


async def test_a_file_name_that_is_not_utf8_is_archived_under_a_clean_key(env, db, s3) -> None:
    data = file_bytes(".jpg", 4000, random.Random(1205))
    odd = env.cache_root / "images" / (md5(data) + ".j\udcffg")  # bytes 'j', 0xff, 'g'
    odd.write_bytes(data)
    await insert_rows(db, [SampleRow("odd-name", "image", md5(data), "image/jpeg", None, DEC)])

    out = run_cli(env, "upload", "--json", "-v")
    result = json_of(out)

    assert out.returncode == 0 and result["uploaded"] == 1
    key = f"cache/2025/12/{md5(data)}.jpg"  # the suffix implied by mime_type
    assert s3.get_object(Bucket=env.bucket, Key=key)["Body"].read() == data
    assert "\\udcff" in out.stderr  # the -v line shows the name escaped


async def test_a_file_name_with_a_control_character_is_an_invalid_row(env, db, s3) -> None:
    rng = random.Random(1206)
    rows = []
    for n, (suffix, local) in enumerate([(".jpg\n", False), (".png\r", True), (".gif\x85", False)]):
        data = file_bytes(".jpg", 3000 + n, rng)
        path = env.cache_root / "images" / (md5(data) + suffix)
        path.write_bytes(data)
        rows.append(
            SampleRow(f"ctl-{n}", "image", md5(data), None, rel(env, path) if local else None, DEC)
        )
    await insert_rows(db, rows)

    result = json_of(run_cli(env, "upload", "--json"))

    assert (result["uploaded"], result["invalid"]) == (0, 3)
    listed = s3.list_objects_v2(Bucket=env.bucket).get("Contents", [])
    assert not [o["Key"] for o in listed if not o["Key"].isprintable()]
    assert await db.fetchval("SELECT count(archive_url) FROM post_media") == 0
    verify = json_of(run_cli(env, "verify", "--check-local", "--json"))
    assert verify["local"]["invalid"] == 3


async def test_a_claim_with_an_impossible_owner_does_not_stop_uploads(env, db, s3) -> None:
    rows = await add_good_rows(env, db, 4, random.Random(1206))
    assert run_cli(env, "db", "init").returncode == 0
    host = here()
    await db.executemany(
        "INSERT INTO archiver_claims VALUES ($1, $2, now() + interval '1 hour')",
        [
            (rows[0].media_id, f"{host}:99999999999999999999:x"),
            (rows[1].media_id, f"{host}:\u00b2:x"),  # a digit to str.isdigit, not to int()
            (rows[2].media_id, f"{host}:0:x"),
        ],
    )

    out = run_cli(env, "upload", "--json")

    assert json_of(out)["uploaded"] == 4 and out.returncode == 0


async def test_row_text_reaches_the_terminal_escaped(env, db, s3) -> None:
    evil = "evil\x1b[2J\x1b]0;owned\x07"
    await insert_rows(db, [SampleRow(evil, "image", md5(b"gone"), "image/jpeg", None, DEC)])
    out = run_cli(env, "upload", "-v")
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout + out.stderr
    assert "evil\\x1b[2J" in out.stdout


# -- 3. no swap between check and delete leads outside the root ------------------------------


async def test_prune_never_deletes_outside_the_root_when_a_directory_is_swapped_mid_check(
    penv, db, s3, proxy
) -> None:
    data = file_bytes(".jpg", 5000, random.Random(1207))
    sub = penv.cache_root / "images" / "sub"
    path = media_file(sub, f"{md5(data)}.jpg", data)
    await insert_rows(
        db, [SampleRow("swap", "image", md5(data), "image/jpeg", rel(penv, path), DEC)]
    )
    assert json_of(run_cli(penv, "upload", "--json"))["uploaded"] == 1
    elsewhere = penv.workdir / "elsewhere"
    important = media_file(elsewhere, path.name, b"important, outside the cache")
    swapped = threading.Event()

    def swap_during_head(request: Request) -> None:
        if request.method == "HEAD" and request.path.endswith(".jpg") and not swapped.is_set():
            sub.rename(sub.with_name("sub.orig"))
            sub.symlink_to(elsewhere, target_is_directory=True)
            swapped.set()

    proxy.rule = swap_during_head
    out = run_cli(penv, "prune-local", "--json")
    result = json_of(out)

    assert swapped.is_set()
    assert important.read_bytes() == b"important, outside the cache"
    # The proved file was deleted where it really is, inside the root.
    assert result["deleted"] == 1
    assert not (penv.cache_root / "images" / "sub.orig" / path.name).exists()


# -- 4. only the configured bucket, only keys under the prefix --------------------------------


async def test_restore_verify_and_prune_never_read_another_bucket(penv, db, s3, proxy) -> None:
    other = f"other-{penv.bucket}"
    s3.create_bucket(Bucket=other)
    payroll = b"name,salary\nalice,100\nbob,200\n"
    s3.put_object(Bucket=other, Key="private/payroll.csv", Body=payroll)
    s3.put_object(Bucket=penv.bucket, Key="private/payroll.csv", Body=payroll)
    secret = md5(payroll)
    await insert_rows(
        db,
        [
            SampleRow(
                "leak-zeros",
                "document",
                "0" * 32,
                None,
                None,
                DEC,
                archive_url=f"s3://{other}/private/payroll.csv",
            ),
            SampleRow(
                "leak-md5",
                "document",
                secret,
                None,
                None,
                DEC,
                archive_url=f"s3://{other}/private/payroll.csv",
            ),
            SampleRow(
                "leak-own-bucket",
                "document",
                secret,
                None,
                None,
                DEC,
                archive_url=f"s3://{penv.bucket}/private/payroll.csv",
            ),
        ],
    )
    ids = [arg for m in ("leak-zeros", "leak-md5", "leak-own-bucket") for arg in ("--media-id", m)]

    restore = run_cli(penv, "restore", *ids, "--json")
    verify = run_cli(penv, "verify", "--verify-s3", "--json")
    prune = run_cli(penv, "prune-local", "--json")

    assert json_of(restore)["failed"] == 3 and restore.returncode == 1
    assert secret not in restore.stdout + restore.stderr  # no hash of what it read
    assert list(penv.cache_root.rglob("*.csv")) == []
    assert {p["kind"] for p in json_of(verify)["problems"]} == {"invalid"}
    assert json_of(verify)["s3"]["invalid"] == 3
    assert json_of(prune)["invalid"] == 3
    touched = [r.path for r, _ in proxy.requests if other in r.path or "private" in r.path]
    assert touched == []  # not one request for another bucket or outside the prefix


async def test_one_denied_object_does_not_stop_prune_or_restore(penv, db, s3, proxy) -> None:
    rng = random.Random(1208)
    rows = []
    for i in range(3):
        data = file_bytes(".jpg", 3000 + i, rng)
        media_file(penv.cache_root / "images", f"{md5(data)}.jpg", data)
        rows.append(SampleRow(f"p{i}", "image", md5(data), "image/jpeg", None, DEC))
    await insert_rows(db, rows)
    assert run_cli(penv, "upload").returncode == 0
    denied_key = f"cache/2025/12/{rows[0].md5_sum}.jpg"

    def deny(request: Request) -> Respond | None:
        if request.path.endswith(denied_key):
            return Respond(403, "AccessDenied", "Access Denied")
        return None

    proxy.rule = deny
    prune = run_cli(penv, "prune-local", "--json")
    result = json_of(prune)
    assert prune.returncode == 1 and result["deleted"] == 2
    assert "s3:GetObject" in {k["media_id"]: k["detail"] for k in result["kept"]}["p0"]

    (penv.cache_root / "images" / f"{rows[0].md5_sum}.jpg").unlink()
    restore = run_cli(penv, "restore", "--all-missing", "--json")
    result = json_of(restore)
    assert restore.returncode == 1 and result["restored"] == 2
    (failure,) = result["failures"]
    assert failure["media_id"] == "p0"
    assert "s3:GetObject" in failure["detail"] and f"s3://{penv.bucket}/" in failure["detail"]


# -- 6. a wrong md5_sum on a large file sends nothing; bytes_uploaded is true ----------------


async def test_a_large_file_whose_bytes_differ_from_md5_sum_sends_no_data(
    penv, db, s3, proxy
) -> None:
    data = file_bytes(".mp4", 12 * MIB, random.Random(1209))
    path = media_file(penv.cache_root / "videos", f"{md5(data)}.mp4", data)
    wrong = [md5(data + bytes([i])) for i in range(3)]
    await insert_rows(
        db,
        [
            SampleRow(f"big-{i}", "video", wrong[i], "video/mp4", rel(penv, path), DEC)
            for i in range(3)
        ],
    )

    out = run_cli(penv, "upload", "--json")
    result = json_of(out)

    assert (result["corrupt"], result["bytes_uploaded"]) == (3, 0)
    sent = sum(r.body_length for r, _ in proxy.requests if r.method in ("PUT", "POST"))
    assert sent == 0  # not one part, not even a multipart upload begun
    assert proxy.count(lambda r: "uploads" in r.query) == 0

    await db.execute("UPDATE post_media SET md5_sum = $1 WHERE media_id = 'big-0'", md5(data))
    proxy.reset()
    result = json_of(run_cli(penv, "upload", "--json"))
    accepted = sum(  # the file's parts (not the run's probe of part checksums: 8 bytes)
        r.body_length
        for r, what in proxy.requests
        if r.method == "PUT" and what == "forwarded 200" and "archiver-probe-" not in r.path
    )
    assert result["uploaded"] == 1
    assert result["bytes_uploaded"] == accepted == len(data)


# -- 7. no DSN prints its password -----------------------------------------------------------


@pytest.mark.parametrize(
    ("userinfo", "secret_parts"),
    [
        # Before the fix, `postgresql://app:Wr#ngP@ss@...` printed `postgresql://app:Wr`.
        ("app:Wr?ngPass", ["Wr?ngPass", "Wr", "ngPass"]),
        ("app:Wr/ngPass", ["Wr/ngPass", "Wr", "ngPass"]),
        ("app:Wr#ngP@ss", ["Wr#ngP@ss", "Wr", "ngP@ss", "ngP"]),
        ("app:P@ssw0rd", ["P@ssw0rd", "ssw0rd"]),
        ("app:Sup3rS3cret", ["Sup3rS3cret"]),
    ],
)
def test_no_dsn_prints_its_password(offline_env, userinfo: str, secret_parts: list[str]) -> None:
    env = offline_env
    dsn = f"postgresql://{userinfo}@127.0.0.1:{free_port()}/db"
    for command in (("upload",), ("verify",), ("db", "init")):
        out = run_cli(env, *command, DATABASE_URL=dsn, timeout=60)
        assert out.returncode == 2, out.stderr
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
        for part in secret_parts:
            assert part not in out.stdout + out.stderr, (part, out.stderr)


@pytest.mark.parametrize("port", ["99999", "0", "54x32", "-1"])
def test_a_bad_dsn_port_is_one_line_and_exit_2(offline_env, port: str) -> None:
    env = offline_env
    out = run_cli(env, "upload", DATABASE_URL=f"postgresql://app:pw1234@127.0.0.1:{port}/db")
    assert out.returncode == 2
    (line,) = [line for line in out.stderr.splitlines() if line.strip()]
    assert "port" in line and "pw1234" not in out.stderr


# -- 8. special files, temporary files, lookups, content types --------------------------------


async def test_no_command_blocks_on_a_fifo_in_the_cache(env, db, s3) -> None:
    rng = random.Random(1210)
    _row, path, _ = await archived_row(env, db, "fifo-archived", rng)
    path.unlink()
    os.mkfifo(path)  # restore's target name is now a FIFO
    new_fifo = env.cache_root / "images" / f"{md5(b'fifo')}.jpg"
    os.mkfifo(new_fifo)
    await insert_rows(db, [SampleRow("fifo-new", "image", md5(b"fifo"), "image/jpeg", None, DEC)])

    restore = run_cli(env, "restore", "--media-id", "fifo-archived", "--json", timeout=60)
    upload = run_cli(env, "upload", "--json", timeout=60)
    prune = run_cli(env, "prune-local", "--json", timeout=60)

    (failure,) = json_of(restore)["failures"]
    assert "not a regular file" in failure["detail"]
    assert json_of(upload)["invalid"] == 1
    assert json_of(prune)["invalid"] == 1
    assert path.exists() and not path.is_file()  # left alone


def kill_when(event: threading.Event, env: Any, *args: str) -> None:
    """Run archiver; SIGKILL its process group as soon as `event` is set (blocking)."""
    child = subprocess.Popen(
        [sys.executable, "-m", "archiver", *args],
        cwd=env.workdir,
        env=env.environ(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert event.wait(60), "the moment to kill never came"
        time.sleep(0.5)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)


async def test_a_restore_killed_mid_download_leaves_no_file_behind(penv, db, s3, proxy) -> None:
    rng = random.Random(1211)
    _row, path, _data = await archived_row(penv, db, "killed", rng, size=2 * MIB)
    path.unlink()
    getting, release = threading.Event(), threading.Event()

    def hold_get(request: Request) -> None:
        if request.method == "GET":  # GetObject: held until the restore has been killed
            getting.set()
            release.wait(30)

    proxy.rule = hold_get
    try:
        await asyncio.to_thread(
            kill_when, getting, penv, "restore", "--all-missing", "--no-progress"
        )
    finally:
        release.set()
    assert list((penv.cache_root / "images").iterdir()) == []  # no temporary name either


async def test_only_media_types_reach_content_type(env, db, s3) -> None:
    rng = random.Random(1212)
    html = b"<html><script>alert(1)</script></html>"
    bin_path = media_file(env.cache_root / "documents", f"{md5(html)}.bin", html)
    jpg = file_bytes(".jpg", 800, rng)
    jpg_path = media_file(env.cache_root / "images", f"{md5(jpg)}.jpg", jpg)
    await insert_rows(
        db,
        [
            SampleRow("html", "document", md5(html), "text/html", rel(env, bin_path), DEC),
            SampleRow("html-jpg", "image", md5(jpg), "text/html", rel(env, jpg_path), DEC),
        ],
    )
    assert json_of(run_cli(env, "upload", "--json"))["uploaded"] == 2
    head = s3.head_object(Bucket=env.bucket, Key=f"cache/2025/12/{md5(html)}.bin")
    assert head["ContentType"] == "application/octet-stream"
    head = s3.head_object(Bucket=env.bucket, Key=f"cache/2025/12/{md5(jpg)}.jpg")
    assert head["ContentType"] == "image/jpeg"


async def test_a_null_media_type_is_an_invalid_row_and_statistics_still_print(env, db, s3) -> None:
    # The app's schema says NOT NULL; a real table need not.
    await db.execute("ALTER TABLE post_media ALTER COLUMN media_type DROP NOT NULL")
    await add_good_rows(env, db, 2, random.Random(1213))
    await insert_rows(db, [SampleRow("no-type", "image", md5(b"t"), None, None, DEC)])
    await db.execute("UPDATE post_media SET media_type = NULL WHERE media_id = 'no-type'")

    results = every_command(env)

    assert (results[("upload",)]["uploaded"], results[("upload",)]["invalid"]) == (2, 1)
    verify = results[("verify", "--verify-s3", "--check-local")]
    assert verify["by_type"]["(null)"] == {"total": 1, "archived": 0, "not_archived": 1}
    text = run_cli(env, "verify")
    assert text.returncode == 0 and "(null)" in text.stdout
