"""`--max-bandwidth`: rates written as the AWS CLI and rclone write them, and the throttle
that spaces bodies at that rate."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest


def run(cmd: list[str], cwd: Path, environ: dict[str, str], timeout: float = 120) -> Any:
    return subprocess.run(
        cmd, cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout, check=False
    )


# -- archiver check ------------------------------------------------------------------------


# -- .env ----------------------------------------------------------------------------------


# -- progress, logs ------------------------------------------------------------------------


# -- restore and prune-local ---------------------------------------------------------------


# -- upload: storage class, dates, bandwidth -----------------------------------------------


# -- the small things ----------------------------------------------------------------------


# -- pure parts ----------------------------------------------------------------------------


def test_bandwidth_rates_parse_as_the_aws_cli_and_rclone_write_them() -> None:
    from archiver.settings import parse_bandwidth

    assert parse_bandwidth("50MB") == 50_000_000
    assert parse_bandwidth("10MiB") == 10 * 1024 * 1024
    assert parse_bandwidth("500KB/s") == 500_000
    assert parse_bandwidth("1.5M") == 1_500_000
    assert parse_bandwidth("2000000") == 2_000_000
    assert parse_bandwidth("0") == parse_bandwidth("0MB") == 0  # no limit, as rclone reads it
    for bad in ("fast", "10Mi B", "-1MB", "100", "5 GBs"):
        with pytest.raises(ValueError):
            parse_bandwidth(bad)


def test_the_throttle_spaces_bodies_at_the_rate_without_a_burst() -> None:
    from archiver.budget import Throttle

    now = [100.0]
    throttle = Throttle(1000, clock=lambda: now[0])
    assert throttle.delay(500) == 0.0  # the first body goes at once
    assert throttle.delay(500) == pytest.approx(0.5)  # the next when the first has had its time
    assert throttle.delay(1000) == pytest.approx(1.0)
    now[0] += 10.0  # idle: no credit saved up for a burst
    assert throttle.delay(2000) == 0.0
    assert throttle.delay(1) == pytest.approx(2.0)
