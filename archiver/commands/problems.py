"""`archiver problems`: the rows upload could not archive, oldest id first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from archiver.models import KnownProblem
from archiver.progress import listed, printable
from archiver.services import database
from archiver.settings import Settings

MAX_LISTED = 1000  # problems listed as text (--json lists them all)


@dataclass
class ProblemsReport:
    problems: list[KnownProblem]
    exit_code: int = 0
    error: str | None = None  # what stopped the command, when something did

    def as_json(self) -> dict[str, Any]:
        return {"count": len(self.problems), "problems": [p.as_json() for p in self.problems]}


async def run_problems(
    settings: Settings, kinds: Sequence[str] = (), limit: int | None = None
) -> ProblemsReport:
    """The recorded problems of rows not yet archived."""
    async with database(settings) as db:
        await db.require_privileges(("archiver_problems",), ("SELECT",))
        return ProblemsReport(await db.problems(kinds, limit))


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if moment else "-"


def format_problems(report: ProblemsReport) -> str:
    """A table: one problem per line, then what to do about them."""
    if not report.problems:
        return "No problems recorded: every row archiver tried was archived (or is missing_local)."
    rows = [
        (printable(p.media_id), p.kind, str(p.attempts), _when(p.first_seen), _when(p.last_seen))
        for p in report.problems
    ]
    heads = ("media_id", "kind", "attempts", "first seen (UTC)", "last seen (UTC)")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]

    def line(cells: Sequence[str], detail: str) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + "  " + detail

    lines = [line(heads, "detail")]
    body = [line(r, printable(p.detail)) for r, p in zip(rows, report.problems, strict=True)]
    lines += listed(body, MAX_LISTED, more="more (--json lists all)")
    n = len(report.problems)
    lines.append(
        f"{n:,} problem{'' if n == 1 else 's'}. A failed row is tried again by every upload; "
        "a corrupt or invalid one when its row or its file changes, or by "
        "`archiver upload --retry-problems` (or `--media-id ID`)."
    )
    return "\n".join(lines)
