"""Known problems and claims, without a database: whether a claim's owner still runs, when
a recorded problem sets a row aside, the fingerprint, and the exit code of known problems."""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import replace
from datetime import datetime

import pytest

from archiver.claims import dead_here, here, new_owner, proc_stat
from archiver.ledger import note_for, row_fingerprint, set_aside
from archiver.models import KnownProblem, MediaRow, Outcome, RowResult, Summary
from tests.helpers import (
    wait_for,
)

# -- liveness ---------------------------------------------------------------------------------


def fake_host(procs: dict[int, tuple[str, int]], *, other_user: frozenset[int] = frozenset()):
    """(stat, signal0) of a host whose processes are `procs` (pid -> (state, start))."""

    def stat(pid: int) -> tuple[str, int]:
        if pid in other_user and pid not in procs:
            raise PermissionError("hidepid")
        if pid not in procs:
            raise FileNotFoundError(pid)
        return procs[pid]

    def signal0(pid: int, _sig: int) -> None:
        if pid in other_user:
            raise PermissionError(pid)
        if pid not in procs:
            raise ProcessLookupError(pid)

    return stat, signal0


@pytest.mark.parametrize(
    ("owner", "procs", "other_user", "dead"),
    [
        ("h1@b.1:100:500:ab12cd34", {100: ("S", 500)}, (), False),  # running, same start
        ("h1@b.1:100:500:ab12cd34", {100: ("Z", 500)}, (), True),  # killed, not yet reaped
        ("h1@b.1:100:500:ab12cd34", {100: ("X", 500)}, (), True),  # exiting
        ("h1@b.1:100:500:ab12cd34", {100: ("R", 900)}, (), True),  # the pid was reused
        ("h1@b.1:100:500:ab12cd34", {}, (), True),  # gone
        ("h1@b.1:100:500:ab12cd34", {}, (100,), False),  # another user's, hidden: alive
        ("h1@b.1:100:500:ab12cd34", {100: ("S", 900)}, (100,), True),  # another user's, reused
        ("h1@b.1:100:ab12cd34", {100: ("S", 900)}, (), False),  # no start recorded: pid only
        ("h1@b.1:100:ab12cd34", {100: ("Z", 900)}, (), True),
        ("h1@b.1:100:-:ab12cd34", {100: ("S", 1)}, (), False),  # start unknown where it ran
        ("h2@b.1:100:500:ab12cd34", {}, (), False),  # another host: only its lease frees it
        # Issue 30, item 12: a container sharing the host name, in another PID namespace
        # (or another boot): its pid 100 is not ours to judge, whatever ours is.
        ("h1@b.2:100:500:ab12cd34", {}, (), False),
        ("h1@c.1:100:500:ab12cd34", {}, (), False),
        ("h1:100:500:ab12cd34", {}, (), False),  # no namespace named: the lease decides
        ("h1@b.1:x1:500:ab12cd34", {}, (), True),  # no pid a process can have
        ("h1@b.1:0:500:ab12cd34", {}, (), True),
        ("h1@b.1:99999999:500:ab12cd34", {}, (), True),
    ],
)
def test_dead_here(owner, procs, other_user, dead) -> None:
    stat, signal0 = fake_host(procs, other_user=frozenset(other_user))
    assert dead_here(owner, host="h1@b.1", stat=stat, signal0=signal0) is dead


def test_liveness_on_this_host_with_a_real_process() -> None:
    me = new_owner()
    assert me.startswith(f"{socket.gethostname()}@")
    pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    assert here().endswith(f".{pidns}")
    assert me.split(":")[2] == str(proc_stat(os.getpid())[1])
    assert not dead_here(me)
    host, pid, start, rand = me.split(":")
    assert dead_here(f"{host}:{pid}:{int(start) + 1}:{rand}")  # same pid, another process

    child = subprocess.Popen(["sleep", "30"])
    try:
        owner = f"{here()}:{child.pid}:{proc_stat(child.pid)[1]}:0000aaaa"
        assert not dead_here(owner)
        child.kill()
        wait_for(lambda: proc_stat(child.pid)[0] == "Z", timeout=10)
        os.kill(child.pid, 0)  # a zombie still takes signal 0 ...
        assert dead_here(owner)  # ... but is dead
    finally:
        child.wait()
    assert dead_here(owner)


# -- what a problem record decides ----------------------------------------------------------

ROW = MediaRow("m1", "image", None, "a" * 32, "image/png", datetime(2025, 3, 1))


def known(kind: str, state: tuple[int, float, float] | None, row: MediaRow = ROW) -> KnownProblem:
    size, mtime, ctime = state or (None, None, None)
    return KnownProblem("m1", kind, "why", size, mtime, row_fingerprint(row, ctime))


@pytest.mark.parametrize(
    ("record", "row", "state", "aside"),
    [
        (known("corrupt", (10, 1.5, 7.0)), ROW, (10, 1.5, 7.0), True),
        (known("corrupt", (10, 1.5, 7.0)), ROW, (10, 2.5, 7.0), False),  # the file was touched
        (known("corrupt", (10, 1.5, 7.0)), ROW, (11, 1.5, 7.0), False),  # ... or grew
        (known("corrupt", (10, 1.5, 7.0)), ROW, None, False),  # ... or is gone
        # ... or was rewritten with its size and mtime kept (`rsync -a`): its ctime moved
        (known("corrupt", (10, 1.5, 7.0)), ROW, (10, 1.5, 9.0), False),
        (known("invalid", None), ROW, None, True),
        (known("invalid", None), ROW, (10, 1.5, 7.0), False),  # a file appeared
        (known("corrupt", (10, 1.5, 7.0)), replace(ROW, md5_sum="b" * 32), (10, 1.5, 7.0), False),
        (known("failed", (10, 1.5, 7.0)), ROW, (10, 1.5, 7.0), False),  # failed: always tried
    ],
)
def test_set_aside(record, row, state, aside) -> None:
    assert set_aside(record, row, state) is aside


def test_the_fingerprint_follows_every_column_that_decides_a_row() -> None:
    base = row_fingerprint(ROW)
    assert row_fingerprint(replace(ROW, archive_url="s3://b/k", file_size=3)) == base
    for changed in (
        replace(ROW, media_type="video"),
        replace(ROW, local_file_path="x.png"),
        replace(ROW, md5_sum="A" * 32),
        replace(ROW, mime_type="image/jpeg"),
        replace(ROW, created_at=None),
        replace(ROW, created_at=None, created_at_bad="infinity"),
    ):
        assert row_fingerprint(changed) != base, changed


def test_a_problem_note_and_the_exit_code_of_known_problems() -> None:
    result = RowResult("m1", Outcome.CORRUPT, reason="differs", file_state=(10, 1.5, 7.0))
    note = note_for(ROW, result)
    assert (note.kind, note.file_size, note.file_mtime) == ("corrupt", 10, 1.5)
    assert note.fingerprint == row_fingerprint(ROW, 7.0) != row_fingerprint(ROW)
    summary = Summary()
    summary.add(RowResult("m2", Outcome.UPLOADED))
    summary.add(RowResult("m1", Outcome.KNOWN_PROBLEM, reason="differs"))
    assert summary.exit_code == 0
    data = summary.as_json()
    assert data["selected"] == 1 and data["known_problem"] == 1  # set aside, not selected
    summary.add(result)
    assert summary.exit_code == 1


# -- a SIGKILLed run, and rows other processes hold -------------------------------------------


# -- the record of problems -------------------------------------------------------------------


# -- repair, and upload pointed at rows --------------------------------------------------------
