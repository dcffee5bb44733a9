"""Problems: rows that could not be archived, remembered in `archiver_problems` so that a
scheduled run does not fail on the same rows forever.

A row that ends corrupt, invalid or failed is recorded with what it looked like: its
columns (a fingerprint) and the file it resolved to (size and mtime, taken before it was
read). A later run tries a failed row again every time; a corrupt or invalid row only when
its row or its file changed since, and otherwise counts it as `known_problem` without
reading the file. A row that archives loses its record in the statement that records it.
`archiver problems` lists them.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

from archiver.db import Database
from archiver.models import KnownProblem, MediaRow, ProblemNote, RowResult
from archiver.policies import RetryPolicy

# Kinds a run sets aside while neither the row nor its file changed. A failed row (a
# network error, a deadline, a permission) may succeed at any time: it is always tried.
SET_ASIDE_KINDS = frozenset({"corrupt", "invalid"})

# (size, mtime, ctime) of the row's file, None: no file
FileState = tuple[int, float, float] | None


def row_fingerprint(row: MediaRow, file_ctime: float | None = None) -> str:
    """A digest of what decides what becomes of a row: its columns (a corrected md5_sum,
    another path, a fixed created_at) and its file's inode change time, which any rewrite of
    the file moves, even one that keeps size and mtime (a corrupt file repaired with
    `rsync -a`). A change to any of them makes the row worth a new try."""
    created = row.created_at.isoformat() if row.created_at is not None else None
    columns: tuple[str | None, ...] = (
        row.media_type,
        row.local_file_path,
        row.md5_sum,
        row.mime_type,
        created,
        row.created_at_bad,
    )
    if file_ctime is not None:
        columns += (f"ctime={file_ctime!r}",)
    text = "\x1f".join("\x00" if c is None else c for c in columns)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def note_for(row: MediaRow, result: RowResult) -> ProblemNote:
    """What `archiver_problems` records of a row whose outcome is a problem."""
    size, mtime, ctime = result.file_state or (None, None, None)
    return ProblemNote(
        media_id=row.media_id,
        kind=result.outcome.value,
        detail=result.reason,
        file_size=size,
        file_mtime=mtime,
        fingerprint=row_fingerprint(row, ctime),
    )


def set_aside(known: KnownProblem, row: MediaRow, file: FileState) -> bool:
    """Whether a row with this recorded problem is not tried again: it was corrupt or
    invalid, and neither its row nor its file changed since (size, mtime, and the inode's
    change time, kept in the fingerprint)."""
    recorded = None if known.file_size is None else (known.file_size, known.file_mtime)
    current = None if file is None else (file[0], file[1])
    return (
        known.kind in SET_ASIDE_KINDS
        and known.fingerprint == row_fingerprint(row, file[2] if file is not None else None)
        and recorded == current
    )


@dataclass
class Ledger:
    """The recorded problems of the rows a run has paged and not yet handled. `active`
    only when the table exists and holds any: otherwise a page costs no query."""

    db: Database
    active: bool
    retry: RetryPolicy
    _known: dict[str, KnownProblem] = field(default_factory=dict)

    @classmethod
    async def open(cls, db: Database, retry: RetryPolicy) -> Ledger:
        await db.require_privileges(("archiver_problems",), ("SELECT",))
        return cls(db, await db.has_problems(), retry)

    async def load(self, rows: list[MediaRow]) -> None:
        """Read the problems of a page of rows (the pager's `on_page`)."""
        if not self.active:
            return
        ids = [r.media_id for r in rows]
        found = await self.db.retrying(self.retry, functools.partial(self.db.known_problems, ids))
        for problem in found:
            if problem.kind in SET_ASIDE_KINDS:
                self._known[problem.media_id] = problem

    def take(self, media_id: str) -> KnownProblem | None:
        """The row's recorded problem that may set it aside, if any (asked once per row)."""
        return self._known.pop(media_id, None)
