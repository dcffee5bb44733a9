"""Rows, per-row outcomes and the run summary (pure)."""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from archiver.errors import INTERRUPTED_EXIT_CODE


@dataclass(frozen=True, slots=True)
class MediaRow:
    """The columns of one `post_media` row that archiving needs."""

    media_id: str
    media_type: str | None  # NOT NULL in the app's schema, but never trusted to be
    local_file_path: str | None
    md5_sum: str | None
    mime_type: str | None
    created_at: datetime | None
    archive_url: str | None = None
    file_size: int | None = None
    # created_at as the database wrote it, when no datetime can hold it (`infinity`, a year
    # BC or past 9999): the row is judged invalid rather than breaking the page it is on.
    created_at_bad: str | None = None


class Outcome(enum.StrEnum):
    """What happened to one row."""

    UPLOADED = "uploaded"
    SKIPPED_EXISTING = "skipped_existing"
    MISSING_LOCAL = "missing_local"
    INVALID = "invalid"
    CORRUPT = "corrupt"
    FAILED = "failed"
    WOULD_UPLOAD = "would_upload"  # dry run only
    # corrupt or invalid in an earlier run, and neither its row nor its file changed since:
    # not tried again (archiver_problems, `archiver problems`)
    KNOWN_PROBLEM = "known_problem"

    @property
    def recordable(self) -> bool:
        """Whether the row's archive_url is written (its object is confirmed stored)."""
        return self in (Outcome.UPLOADED, Outcome.SKIPPED_EXISTING)

    @property
    def is_problem(self) -> bool:
        """Whether this outcome makes the run exit 1."""
        return self in (Outcome.INVALID, Outcome.CORRUPT, Outcome.FAILED)


@dataclass(frozen=True, slots=True)
class ProblemNote:
    """What `archiver_problems` records of a row that ended corrupt, invalid or failed: the
    file it resolved to then (size and mtime; None when none) and the row's fingerprint."""

    media_id: str
    kind: str
    detail: str
    file_size: int | None
    file_mtime: float | None
    fingerprint: str


@dataclass(frozen=True, slots=True)
class KnownProblem(ProblemNote):
    """A recorded problem, with its history."""

    first_seen: datetime | None = None
    last_seen: datetime | None = None
    attempts: int = 1

    def as_json(self) -> dict[str, Any]:
        return {
            "media_id": self.media_id,
            "kind": self.kind,
            "detail": self.detail,
            "attempts": self.attempts,
            "first_seen": self.first_seen.isoformat() if self.first_seen else None,
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
            "file_size": self.file_size,
            "file_mtime": (
                datetime.fromtimestamp(self.file_mtime, UTC).isoformat()
                if self.file_mtime is not None
                else None
            ),
        }


@dataclass(frozen=True, slots=True)
class RowResult:
    """The outcome of one row, with what the summary and the writer need."""

    media_id: str
    outcome: Outcome
    key: str | None = None
    url: str | None = None
    reason: str = ""
    bytes_sent: int = 0  # object bytes this run sent to S3 for this row
    size: int = 0  # size of the local file, when found
    path: str | None = None
    # (size, mtime, ctime) of the file it resolved to
    file_state: tuple[int, float, float] | None = None
    note: ProblemNote | None = None  # for archiver_problems, when the outcome is a problem
    # an object already stored that could not be read back (no s3:GetObject) was sent
    # again, unconditionally, and is recorded on the ETag S3 returned
    resent: bool = False
    # for a stored object (uploaded, skipped_existing): whether the statement writing its
    # archive_url committed; None until then, and for every other outcome
    recorded: bool | None = None


class ProblemKind(StrEnum):
    """What went wrong with one row in a report (`Problem.kind`; its JSON `kind`)."""

    INVALID = "invalid"  # the row itself is unusable (its md5_sum, key, archive_url)
    FAILED = "failed"
    ERROR = "error"  # S3 answered with an error for this row's object
    MISSING = "missing"  # no object where archive_url says
    MISMATCHED = "mismatched"  # an object that is not the row's file
    UNVERIFIABLE = "unverifiable"  # an object whose ETag cannot prove it (SSE-KMS, ...)
    MISSING_LOCAL = "missing_local"
    NO_SUCH_ROW = "no_such_row"
    ALREADY_ARCHIVED = "already_archived"
    CLAIMED_ELSEWHERE = "claimed_elsewhere"
    NOT_SELECTED = "not_selected"
    NOT_ARCHIVED = "not_archived"
    KEPT_UNVERIFIED = "kept_unverified"
    KEPT_NEEDED = "kept_needed"
    KEPT_SYMLINK = "kept_symlink"


@dataclass(frozen=True, slots=True)
class Problem:
    """One row that verify, prune-local or restore reports: the same shape in every job's
    report and JSON (`kind` says what went wrong, `detail` why)."""

    media_id: str
    kind: ProblemKind
    detail: str
    url: str | None = None

    def as_json(self) -> dict[str, str | None]:
        return {
            "media_id": self.media_id,
            "kind": self.kind,
            "url": self.url,
            "detail": self.detail,
        }


SUMMARY_COUNTS = (
    Outcome.UPLOADED,
    Outcome.SKIPPED_EXISTING,
    Outcome.MISSING_LOCAL,
    Outcome.INVALID,
    Outcome.CORRUPT,
    Outcome.FAILED,
)


@dataclass
class Summary:
    """Counts of one run of `archiver upload`."""

    dry_run: bool = False
    counts: Counter[Outcome] = field(default_factory=Counter)
    db_updated: int = 0
    db_writes: int = 0  # grouped UPDATE statements (write-back round trips)
    unrecorded: int = 0  # confirmed uploads the database did not take
    bytes_uploaded: int = 0
    elapsed_s: float = 0.0
    interrupted: bool = False
    error: str | None = None  # what stopped the run early (database gone, bucket gone)
    error_exit_code: int = 0
    # claims.Holder: the other processes still holding selected rows at the end
    holders: list[Holder] = field(default_factory=list)
    not_selected: list[Problem] = field(default_factory=list)  # --media-id rows not handled
    resent: int = 0  # objects already stored, sent again because they could not be read back
    bytes_would_upload: int = 0  # a dry run: the size of the files it would send
    notes: list[str] = field(default_factory=list)  # what the credentials did not allow

    def add(self, result: RowResult) -> None:
        """Count one row's outcome."""
        self.counts[result.outcome] += 1
        self.bytes_uploaded += result.bytes_sent
        self.resent += result.resent
        if result.outcome is Outcome.WOULD_UPLOAD:
            self.bytes_would_upload += result.size

    @property
    def selected(self) -> int:
        """Rows this run tried (every outcome, `would_upload` included, but the known
        problems it set aside untried)."""
        return sum(self.counts.values()) - self.counts[Outcome.KNOWN_PROBLEM]

    @property
    def worked(self) -> int:
        """Rows this run worked on, which `--limit` counts: the rows it tried but those whose
        file was missing (found missing, nothing else was done for them)."""
        return self.selected - self.counts[Outcome.MISSING_LOCAL]

    @property
    def claimed_elsewhere(self) -> int:
        """Selected rows this run could not take: other processes held them."""
        return sum(int(h.rows) for h in self.holders)

    @property
    def files_per_s(self) -> float:
        done = self.counts[Outcome.UPLOADED] + self.counts[Outcome.SKIPPED_EXISTING]
        if self.dry_run:
            done = self.counts[Outcome.WOULD_UPLOAD]
        return done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0; 1 when this run met a problem (a row failed, was corrupt or invalid, went
        unrecorded, or a --media-id names no row); 130 if interrupted. Known problems, set
        aside untried, do not fail a run."""
        if self.interrupted:
            return INTERRUPTED_EXIT_CODE
        if self.error:
            return self.error_exit_code or 1
        problems = sum(self.counts[o] for o in Outcome if o.is_problem)
        no_row = any(p.kind is ProblemKind.NO_SUCH_ROW for p in self.not_selected)
        return 1 if problems or self.unrecorded or no_row else 0

    def as_json(self) -> dict[str, Any]:
        """The object `archiver upload --json` prints."""
        data: dict[str, Any] = {"selected": self.selected}
        for outcome in SUMMARY_COUNTS:
            data[outcome.value] = self.counts[outcome]
        data.update(
            db_updated=self.db_updated,
            db_writes=self.db_writes,
            bytes_uploaded=self.bytes_uploaded,
            elapsed_s=round(self.elapsed_s, 3),
            files_per_s=round(self.files_per_s, 2),
            dry_run=self.dry_run,
            known_problem=self.counts[Outcome.KNOWN_PROBLEM],
            claimed_elsewhere=self.claimed_elsewhere,
            resent=self.resent,
        )
        if self.notes:
            data["notes"] = list(self.notes)
        if self.holders:
            data["claimed_by"] = [h.as_json() for h in self.holders]
        if self.not_selected:
            data["not_selected"] = [p.as_json() for p in self.not_selected]
        if self.dry_run:
            data["would_upload"] = self.counts[Outcome.WOULD_UPLOAD]
            data["bytes_would_upload"] = self.bytes_would_upload
        if self.unrecorded:
            data["unrecorded"] = self.unrecorded
        if self.interrupted:
            data["interrupted"] = True
        if self.error:
            data["error"] = self.error
        return data


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a HEAD tells about an object."""

    size: int
    etag: str  # without quotes
    metadata: Mapping[str, str]
    # The server-side encryption whose ETags are not an MD5 of the content (`aws:kms`,
    # `aws:kms:dsse`, `SSE-C`), or None (none, or SSE-S3, whose ETags are MD5s).
    encryption: str | None = None

    @property
    def is_multipart(self) -> bool:
        return "-" in self.etag

    @property
    def encrypted(self) -> bool:
        """Whether the ETag is not an MD5 because of the object's encryption."""
        return self.encryption is not None


@dataclass(frozen=True, slots=True)
class Put:
    """What S3 answered to a PUT: the ETag, the CRC32 it echoed (when one was sent and the
    server supports S3's additional checksums), and the encryption that makes the ETag no
    MD5 (see `etag_hiding_encryption`)."""

    etag: str
    crc32: str | None = None
    encryption: str | None = None


@dataclass(frozen=True, slots=True)
class StoredPart:
    number: int
    etag: str
    crc32: str | None = None  # base64 CRC32 S3 checked, on uploads with part checksums


@dataclass(frozen=True, slots=True)
class Completed:
    """What CompleteMultipartUpload answered: the ETag (empty from some servers) and, on an
    upload with part checksums, the checksum of the parts' checksums (`...-N`)."""

    etag: str
    crc32: str | None = None


@dataclass(frozen=True, slots=True)
class Prepared:
    """A row whose file was found: where it is, where it goes, and maybe its bytes."""

    row: MediaRow
    md5: str
    path: Path
    size: int
    key: str
    url: str
    content_type: str
    file_state: (
        tuple[int, float, float] | None
    )  # (size, mtime, ctime) when it was found, before any read
    body: bytes | None = None  # read with the lookup when small
    body_md5: str | None = None


class Denied(enum.Enum):
    """S3 refused to say whether an object exists (a 403 on HEAD)."""

    DENIED = "denied"


DENIED = Denied.DENIED


@dataclass
class Sent:
    """Bytes of file data S3 accepted for one row (each accepted PUT or part counts)."""

    bytes: int = 0


@dataclass(frozen=True)
class Holder:
    """Another process holding live claims on rows this run selected."""

    owner: str
    rows: int
    lease_ends: datetime
    running: bool  # False: a process of this host that died (the next run takes over)

    def as_json(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "rows": self.rows,
            "lease_ends": self.lease_ends.isoformat(),
            "running": self.running,
        }
