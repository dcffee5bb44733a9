"""`archiver demo` as a new user runs it: a subprocess, no configuration."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "DATABASE_URL", "ARCHIVER_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "archiver", "demo", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def summary_count(text: str, label: str) -> int:
    match = re.search(rf"^  {label}:\s+([\d,]+)$", text, re.M)
    assert match, f"no {label!r} line in:\n{text}"
    return int(match.group(1).replace(",", ""))


def test_demo_counts_match_what_it_made() -> None:
    out = run_demo("--files", "50", "--no-progress")
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    made = {m.group(2): int(m.group(1)) for m in re.finditer(r"^\s+(\d+) × (\w+)", text, re.M)}
    assert sum(made.values()) == 50
    assert {
        "renamed_bin",
        "sniffed_png",
        "missing",
        "duplicate",
        "null_created_at",
        "corrupt",
        "large",
    } <= set(made)
    # What the README says upload must make of those rows:
    assert summary_count(text, "Selected") == 50
    assert summary_count(text, "Missing local") == made["missing"]
    assert summary_count(text, "Corrupt") == made["corrupt"]
    assert summary_count(text, "Already stored") == made["duplicate"]
    uploaded = 50 - made["missing"] - made["corrupt"] - made["duplicate"]
    assert summary_count(text, "Uploaded") == uploaded
    assert summary_count(text, "DB updated") == uploaded + made["duplicate"]
    assert summary_count(text, "Failed") == 0
    # verify --verify-s3 checked every archived row and found them all intact
    assert summary_count(text, "Checked") == uploaded + made["duplicate"]
    assert summary_count(text, "OK") == uploaded + made["duplicate"]
    assert "Done: the bucket is set up." in text
    assert re.search(r"s3://social-tui/cache/\d{4}/\d{2}/[0-9a-f]{32}\.\w+", text)
    assert "files/s" in text
    cache = re.search(r"of media in (\S+):", text)
    assert cache and not Path(cache.group(1)).exists()  # it cleaned up after itself
