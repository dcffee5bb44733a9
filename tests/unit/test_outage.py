"""Database outages in plain words: one line when the database stops answering, one when it
answers again, however many callers retry meanwhile."""

from __future__ import annotations

import asyncio
import logging

import pytest

from archiver.errors import DatabaseError
from archiver.policies import OUTAGE, RetryPolicy, plain_reason, retrying


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)  # lets the other caller run; no real time passes


async def test_two_callers_through_one_outage_give_one_line_each_way(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="archiver.database")
    clock = Clock()
    down_until = 1.2  # the database is away for its first 1.2 s

    def call(name: str):  # type: ignore[no-untyped-def]
        async def once() -> str:
            if clock.now < down_until:
                raise DatabaseError("database error while reading rows: connection was closed")
            return name

        return once

    policy = RetryPolicy(0.5, 5.0, 60.0)
    got = await asyncio.gather(
        retrying(policy, call("a"), clock=clock, sleep=clock.sleep),
        retrying(policy, call("b"), clock=clock, sleep=clock.sleep),
    )
    assert got == ["a", "b"]
    lines = [r.getMessage() for r in caplog.records if r.name == "archiver.database"]
    assert len(lines) == 2, lines
    assert lines[0] == "the database is not answering (connection lost); retrying for up to 60 s"
    assert lines[1].startswith("the database answers again (after ")
    assert OUTAGE.since is None


@pytest.mark.parametrize(
    ("message", "plain"),
    [
        ("ConnectionRefusedError: [Errno 111] Connect call failed", "connection refused"),
        ("CannotConnectNowError: the system is shutting down", "the server is shutting down"),
        ("AdminShutdown: terminating connection", "the server ended the connection"),
        ("TimeoutError", "no answer in time"),
        ("something else", "connection lost"),
    ],
)  # fmt: skip
def test_driver_errors_in_plain_words(message: str, plain: str) -> None:
    assert plain_reason(DatabaseError(message)) == plain
