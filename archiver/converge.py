"""Converging one setting: read it, write it only when it differs from what is wanted, read
it back. A server may accept a setting it then stores in part, or not at all: what was
written is compared with what is read back, and a difference is reported as a refusal.
setup-bucket and setup-cdn build on it."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from archiver.storage import Storage


class State(StrEnum):
    """What became of one setting."""

    IN_PLACE = "already in place"
    CHANGED = "changed"
    WOULD_CHANGE = "would change"
    LEFT_ALONE = "left alone"
    UNSUPPORTED = "not supported by this server"
    REFUSED = "refused"
    OK = "ok"


@dataclass(frozen=True)
class Setting:
    state: State
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.state}: {self.detail}" if self.detail else str(self.state)

    def as_json(self) -> dict[str, str]:
        return {"state": self.state.name.lower(), "detail": self.detail}


def json_name(name: str) -> str:
    """A setting's key in `--json`: `TLS-only policy` -> `tls_only_policy`."""
    return name.lower().replace(" ", "_").replace("-", "_")


def merge_policy(existing: str | None, wanted: dict[str, Any]) -> str | None:
    """The policy document to put with statement `wanted` in it (added, or replacing the one
    with its Sid; others' statements kept), or None when it is in place already."""
    policy: dict[str, Any] = json.loads(existing) if existing else {"Version": "2012-10-17"}
    statements = policy.get("Statement") or []
    if isinstance(statements, dict):
        statements = [statements]
    if any(_same_statement(s, wanted) for s in statements):
        return None
    policy["Statement"] = [s for s in statements if s.get("Sid") != wanted["Sid"]] + [wanted]
    return json.dumps(policy)


def _same_statement(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def norm(s: dict[str, Any]) -> str:
        s = dict(s)
        for key in ("Resource", "Action"):
            if isinstance(s.get(key), list):
                s[key] = sorted(s[key])
        return json.dumps(s, sort_keys=True)

    return norm(a) == norm(b)


async def converge(
    check_only: bool,
    read: Callable[[], Awaitable[Any]],
    difference: Callable[[Any], str | None],
    write: Callable[[Any], Awaitable[None]],
    what: str | Callable[[Any], str],
    *,
    in_place: Callable[[Any], str] = lambda _current: "",
) -> Setting:
    """Read the setting; if it differs from what is wanted, write it (given what was read)
    and read it back. A server that accepted the write but stores something else is
    reported as refusing it. `what` describes the change (or is made from what was read),
    followed by how the setting differed; `in_place` describes a setting found as wanted."""
    current = await read()
    found = difference(current)
    if found is None:
        return Setting(State.IN_PLACE, in_place(current))
    if callable(what):
        what = what(current)
    what = f"{what} (it was: {found})"  # what a change changes, and why
    if check_only:
        return Setting(State.WOULD_CHANGE, what)
    await write(current)
    problem = difference(await read())
    if problem is not None:
        return Setting(State.REFUSED, f"accepted, but read back: {problem}")
    return Setting(State.CHANGED, what)


async def converge_statement(
    store: Storage,
    check_only: bool,
    wanted: dict[str, Any],
    *,
    missing: str,
    what: str,
    in_place: str = "",
) -> Setting:
    """The bucket policy with statement `wanted` in it (by its Sid; every other statement
    kept), read back: `converge` for one policy statement."""

    async def read() -> str | None:
        current = await store.get_setting("get_bucket_policy", ("NoSuchBucketPolicy",))
        return (current or {}).get("Policy")

    def difference(document: str | None) -> str | None:
        return None if merge_policy(document, wanted) is None else missing

    async def write(current: str | None) -> None:
        await store.put_setting("put_bucket_policy", Policy=merge_policy(current, wanted))

    return await converge(
        check_only, read, difference, write, what, in_place=lambda _current: in_place
    )
