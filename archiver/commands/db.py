"""`archiver db init`: create what makes upload fast and safe at scale (idempotent)."""

from __future__ import annotations

from dataclasses import dataclass, field

from archiver.services import database
from archiver.settings import Settings


@dataclass
class DbInitReport:
    """What `db init` made, and what was there already."""

    made: list[tuple[str, bool]] = field(default_factory=list)  # (what, created?)
    error: str | None = None
    exit_code: int = 0

    def as_json(self) -> dict[str, object]:
        return {"objects": [{"what": what, "created": created} for what, created in self.made]}


async def run_db_init(settings: Settings) -> DbInitReport:
    """The paging index and archiver's own tables, created where absent."""
    async with database(settings) as db:
        await db.check_schema()
        return DbInitReport(await db.init())


def format_db_init(report: DbInitReport) -> str:
    return "\n".join(
        f"{'created' if created else 'already there'}: {what}" for what, created in report.made
    )
