"""What the user sees: per-file lines, warnings, the periodic log line, the summary."""

from __future__ import annotations

import io
import re

from archiver.models import Outcome, RowResult, Summary
from archiver.progress import (
    MAX_WARNINGS,
    Progress,
    Reporter,
    counted,
    describe,
    format_summary,
    human_bytes,
)

WALL = 1764504000.0  # 2025-11-30T12:00:00Z


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reporter(mode: str = "log", **kw: object) -> tuple[Reporter, io.StringIO, io.StringIO, Clock]:
    out, err, clock = io.StringIO(), io.StringIO(), Clock()
    r = Reporter(
        mode=mode,
        verbose=bool(kw.get("verbose")),
        dry_run=bool(kw.get("dry_run")),
        out=out,
        err=err,
        clock=clock,
        wall=lambda: WALL,
    )
    return r, out, err, clock


def ok(i: int) -> RowResult:
    return RowResult(
        f"m{i}",
        Outcome.UPLOADED,
        key=f"cache/2025/12/{i:032x}.jpg",
        url="s3://b/k",
        bytes_sent=1_000_000,
        path=f"/c/images/{i:032x}.jpg",
    )


def test_describe_matches_the_design_notes() -> None:
    line = describe(ok(7))
    assert line == f"  ✓ m7: {7:032x}.jpg → cache/2025/12/{7:032x}.jpg"
    bad = RowResult("m8", Outcome.CORRUPT, reason="content MD5 x differs")
    assert describe(bad) == "  ✗ m8: corrupt: content MD5 x differs"


def test_log_mode_prints_a_progress_line_every_interval() -> None:
    r, out, err, clock = reporter()
    r.start(100)
    for i in range(10):
        clock.now += 1.5
        r.result(ok(i))
    r.close()
    lines = err.getvalue().splitlines()
    assert len(lines) == 2  # 15 s of work: one line per 10 s, then the final figures
    assert lines[0] == (
        "2025-11-30T12:00:00Z archiver: upload: 7/100 files (7.0%), 7.0 MB, 0.7 MB/s, "
        "0.7 files/s, ETA 139s"
    )
    assert lines[1] == (
        "2025-11-30T12:00:00Z archiver: upload: 10/100 files done in 15.0 s, 10.0 MB, 0.7 MB/s"
    )
    assert out.getvalue() == ""


def test_the_eta_goes_by_bytes_when_they_are_known() -> None:
    # 10 files of 1 MB done in 15 s, of 100 files totalling 500 MB: by files 135 s are
    # left, by bytes (what --max-bandwidth paces) 490 MB at 0.67 MB/s, 735 s.
    r, _out, _err, clock = reporter()
    r.start(100, total_bytes=500_000_000)
    for i in range(10):
        clock.now += 1.5
        r.result(ok(i))
    assert r.progress.figures(clock.now)["eta_s"] == 735


def test_a_job_that_moves_no_data_shows_no_bytes_and_an_unknown_total_no_percentage() -> None:
    err, clock = io.StringIO(), Clock()
    p = Progress(mode="log", desc="verify --verify-s3", err=err, clock=clock, wall=lambda: WALL)
    p.moves_bytes, p.unit = False, "object"
    p.start(4)
    clock.now += 2
    p.step(0)
    p.step(0)
    assert p.progress_line(clock.now) == (
        "verify --verify-s3: 2/4 objects (50.0%), 1.0 objects/s, ETA 2s"
    )
    assert "bytes" not in p.figures(clock.now)
    restore = Progress(mode="log", desc="restore", err=err, clock=clock, wall=lambda: WALL)
    restore.start(None)
    clock.now += 1
    restore.step(2_000_000)
    assert restore.progress_line(clock.now) == "restore: 1 file, 2.0 MB, 2.0 MB/s, 1.0 files/s"


def test_counts_agree_with_their_nouns() -> None:
    assert [counted(n, "file") for n in (0, 1, 2)] == ["0 files", "1 file", "2 files"]
    assert counted(1, "known problem") == "1 known problem"
    assert counted(3, "known problem") == "3 known problems"
    assert counted(1, "pass") == "1 pass" and counted(2_000, "pass") == "2,000 passes"
    assert [human_bytes(n) for n in (0, 999, 2_056, 417_000_000)] == [
        "0 bytes",
        "999 bytes",
        "2.1 KB",
        "417.0 MB",
    ]


def test_a_dry_run_counts_the_bytes_it_would_send() -> None:
    r, _out, _err, _clock = reporter(dry_run=True)
    r.start(2)
    r.result(RowResult("m1", Outcome.WOULD_UPLOAD, size=3_000_000))
    assert r.progress.bytes == 3_000_000
    summary = Summary(dry_run=True)
    summary.add(RowResult("m1", Outcome.WOULD_UPLOAD, size=3_000_000))
    assert summary.as_json()["bytes_would_upload"] == 3_000_000
    assert re.search(r"Would send: +3.0 MB in", format_summary(summary, bucket="b"))


def test_off_mode_is_silent_but_warnings_are_capped_and_counted() -> None:
    r, out, err, _ = reporter("off")
    r.start(100)
    for i in range(MAX_WARNINGS + 5):
        r.result(RowResult(f"x{i}", Outcome.MISSING_LOCAL, reason="no local file"))
    r.close()
    lines = err.getvalue().splitlines()
    assert len(lines) == MAX_WARNINGS + 1
    assert lines[0] == "warning: x0: missing_local: no local file"
    assert "and 5 more" in lines[-1]
    assert out.getvalue() == ""


def test_verbose_lists_every_row_on_out() -> None:
    r, out, err, _ = reporter("off", verbose=True)
    r.start(3)
    for i in range(3):
        r.result(ok(i))
    r.close()
    assert out.getvalue().count("✓") == 3 and err.getvalue() == ""


def test_bar_mode_draws_on_err_only() -> None:
    r, out, err, _ = reporter("bar")
    r.start(2)
    r.result(ok(1))
    r.result(ok(2))
    r.close()
    assert "2/2" in err.getvalue() and out.getvalue() == ""


def test_summary_table() -> None:
    s = Summary()
    for i in range(3):
        s.add(ok(i))
    s.add(RowResult("m", Outcome.MISSING_LOCAL))
    s.db_updated = 3
    s.elapsed_s = 2.0
    text = format_summary(s, bucket="social-tui")
    assert "Upload Summary" in text and "s3://social-tui" in text
    assert "Uploaded:                 3" in text
    assert "Missing local:            1" in text
    assert "(1.5 files/s)" in text
    assert s.as_json()["selected"] == 4 and s.exit_code == 0
