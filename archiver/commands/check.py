"""`archiver check`: before a long run, is everything in place? Database, credentials,
bucket, S3 permissions and cache, each with one verdict line.

It changes nothing: the permissions are found by requests that leave nothing behind (a
listing of one key, a HEAD, a multipart upload started and aborted at once; see
`Storage.probe_permissions`). Each check runs even when another failed, where it can: the
cache is looked at without a database, the credentials without a bucket.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from archiver import __version__, iam
from archiver.errors import ArchiverError, ConfigError
from archiver.keys import NotOurs, row_key
from archiver.models import MediaRow
from archiver.progress import printable
from archiver.resolve import Found, NotFound, resolve_cache_root, resolver_for
from archiver.services import database
from archiver.settings import DEFAULT_CHECK_SAMPLE, Settings, redact_dsn
from archiver.sql import TABLE_PRIVILEGES, RowFilter, grant_statement
from archiver.storage import Storage
from archiver.storage_answers import NO_CREDENTIALS


class CheckState(StrEnum):
    """A check's verdict (its JSON `state` is the lower-case value)."""

    OK = "ok"
    WARN = "warn"  # ready, with something worth knowing
    FAIL = "FAIL"  # not ready: exit 1
    SKIPPED = "skipped"  # not checked, because a check it needs failed


OK, WARN, FAIL, SKIPPED = CheckState.OK, CheckState.WARN, CheckState.FAIL, CheckState.SKIPPED


@dataclass(frozen=True)
class CheckOptions:
    sample: int = DEFAULT_CHECK_SAMPLE
    env_file: str | None = None  # the .env that was read (None: none)
    overrides: tuple[str, ...] = ()  # what of the .env the environment overrides
    sts_endpoint_url: str | None = None  # where STS answers, other than AWS's


@dataclass
class Verdict:
    name: str
    state: CheckState
    detail: str
    facts: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"state": self.state.lower(), "detail": self.detail, **self.facts}


@dataclass
class CheckReport:
    verdicts: list[Verdict] = field(default_factory=list)
    error: str | None = None  # what stopped the command, when something did

    @property
    def exit_code(self) -> int:
        """1 when a check failed (a warning does not fail it)."""
        return 1 if any(v.state is FAIL for v in self.verdicts) else 0

    def add(self, name: str, state: CheckState, detail: str, **facts: Any) -> Verdict:
        verdict = Verdict(name, state, detail, facts)
        self.verdicts.append(verdict)
        return verdict

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.exit_code == 0,
            "checks": {v.name: v.as_json() for v in self.verdicts},
        }


async def run_check(settings: Settings, options: CheckOptions) -> CheckReport:
    report = CheckReport()
    report.add(
        "configuration",
        WARN if options.overrides else OK,
        f"archiver {__version__}; .env: {options.env_file or 'none'}; working directory "
        f"{os.getcwd()}; database from {settings.database_from or 'nowhere'}; "
        f"s3://{settings.bucket}/{settings.key_prefix}/; "
        f"endpoint {settings.endpoint_url or 'AWS'}"
        + "".join(f"; {line}" for line in options.overrides),
        env_file=options.env_file,
        overrides=list(options.overrides),
        database_from=settings.database_from,
        cwd=os.getcwd(),
        bucket=settings.bucket,
        key_prefix=settings.key_prefix,
        endpoint_url=settings.endpoint_url,
        database_url=redact_dsn(settings.database_url),
    )
    sample, archived = await _check_database(settings, report, options.sample)
    known_key = _known_key(settings, archived)
    await _check_s3(settings, options, report, known_key)
    await _check_cache(settings, report, sample)
    return report


async def _check_database(
    settings: Settings, report: CheckReport, sample: int
) -> tuple[list[MediaRow] | None, list[MediaRow]]:
    """The database verdict; the rows whose files the cache check looks for (None when
    the database could not be read), and an archived row or none."""
    try:
        dsn = settings.require_database()
    except ConfigError as exc:
        report.add("database", FAIL, str(exc))
        return None, []
    where = redact_dsn(dsn)
    try:
        async with database(settings) as db:
            await db.check_schema()
            found = await db.access()
            rows = [r async for r in db.rows(RowFilter(archived=False), limit=sample)]
            if not rows:  # nothing left to archive: the archived rows' files, then
                rows = [r async for r in db.rows(RowFilter(archived=None), limit=sample)]
            archived = [r async for r in db.rows(RowFilter(archived=True), limit=1)]
    except ArchiverError as exc:
        report.add("database", FAIL, str(exc), url=where)
        return None, []
    state, notes = _privileges(found)
    report.add(
        "database",
        state,
        f"PostgreSQL {found['version']} at {where} as {found['user']}; post_media: "
        f"{found['total']:,} rows, {found['unarchived']:,} not archived; {notes}",
        url=where,
        user=found["user"],
        rows=found["total"],
        not_archived=found["unarchived"],
        tables=found["tables"],
        can_create=found["can_create"],
    )
    return rows, archived


def _known_key(settings: Settings, archived: list[MediaRow]) -> str | None:
    """The key of an object a row says is archived (to read for s3:GetObject), or None."""
    for row in archived:
        ours = row_key(row, bucket=settings.bucket, prefix=settings.key_prefix)
        if not isinstance(ours, NotOurs):
            return ours[1]
    return None


def _privileges(found: dict[str, Any]) -> tuple[CheckState, str]:
    """The verdict on the privileges, and what it says about them."""
    missing = [
        p for p, key in (("SELECT", "can_select"), ("UPDATE", "can_update")) if not found[key]
    ]
    if missing:
        return FAIL, f"missing {' and '.join(missing)} on post_media"
    notes = ["SELECT and UPDATE on post_media"]
    state = OK
    for name, grants in found["tables"].items():
        if grants is None:
            if found["can_create"]:
                notes.append(f"{name} absent (upload creates it)")
            else:
                state = FAIL if state is FAIL else WARN
                notes.append(
                    f"{name} absent and no CREATE on the schema: upload runs without it "
                    "(`archiver db init` as the owner creates it)"
                )
        elif lacking := [p for p in TABLE_PRIVILEGES if p not in grants]:
            # upload stops on it: `check` must not say it is ready
            state = FAIL
            notes.append(
                f"{name}: missing {', '.join(lacking)} (as the table's owner, run "
                f"`{grant_statement(name, found['user'])}`)"
            )
        else:
            notes.append(f"{name} ok")
    return state, "; ".join(notes)


async def _check_s3(
    settings: Settings, options: CheckOptions, report: CheckReport, known_key: str | None
) -> None:
    """The credentials, then the bucket (exists, region), then what the credentials may do."""
    try:
        async with Storage.open(settings, max_connections=2) as store:
            if await _check_credentials(settings, options, store, report):
                if await _check_bucket(settings, store, report):
                    await _check_permissions(settings, store, report, known_key)
                else:
                    report.add("permissions", SKIPPED, "no bucket to ask")
                return
    except ArchiverError as exc:  # a profile that is not there, credentials that cannot be read
        report.add("credentials", FAIL, str(exc))
    report.add("bucket", SKIPPED, "no credentials to ask with")
    report.add("permissions", SKIPPED, "no credentials to ask with")


async def _check_credentials(
    settings: Settings, options: CheckOptions, store: Storage, report: CheckReport
) -> bool:
    """The credentials verdict; whether there are credentials to go on with."""
    found = await store.credentials()
    if found is None:
        report.add("credentials", FAIL, NO_CREDENTIALS)
        return False
    key_id, source = found
    shown = "*" * max(0, len(key_id) - 4) + key_id[-4:]  # as `aws configure list` shows it
    profile = f", profile {settings.profile}" if settings.profile else ""
    detail = f"access key {shown} (from {source}{profile})"
    # STS answers for AWS, or where an STS endpoint is configured; an S3-compatible server
    # has its own users, so its identity is the access key itself.
    identity = None
    if settings.endpoint_url is None or options.sts_endpoint_url:
        try:
            identity = await store.caller_identity(options.sts_endpoint_url)
        except ArchiverError as exc:
            report.add("credentials", FAIL, f"{detail}; STS refused them: {exc}")
            return True
        detail += f"; identity {identity}"
    else:
        detail += "; identity: the access key's user on this S3-compatible server"
    report.add("credentials", OK, detail, access_key=shown, source=source, identity=identity)
    return True


async def _check_bucket(settings: Settings, store: Storage, report: CheckReport) -> bool:
    """The bucket verdict, by what every command does first (a GET under the prefix, which
    needs no bucket-level permission), then its region where the credentials may read it;
    whether there is a bucket to go on with."""
    try:
        await store.check_access(settings.key_prefix)
    except ArchiverError as exc:
        report.add("bucket", FAIL, str(exc))
        return False
    where = f"s3://{settings.bucket}"
    await store.learn_encryption()
    encryption = ""
    if store.encryption:
        key = store.kms_key or "its key's ARN"
        encryption = (
            f"; default encryption {store.encryption} (key {store.kms_key or 'not named'}): "
            "ETags are not MD5s, so uploads are proved by CRC32 checksums the server must "
            f"return, and the credentials need the key (`archiver iam-policy --kms-key {key}`)"
        )
    facts = {"encryption": store.encryption, "kms_key": store.kms_key}
    try:
        region = await store.bucket_region()
    except ArchiverError as exc:  # least privilege: no HeadBucket or GetBucketLocation
        detail = f"{where} answers; its region is not known: {exc}{encryption}"
        report.add("bucket", OK, detail, region=None, **facts)
        return True
    report.add(
        "bucket", OK, f"{where} exists (region {region}){encryption}", region=region, **facts
    )
    return True


async def _check_permissions(
    settings: Settings, store: Storage, report: CheckReport, known_key: str | None
) -> None:
    """What the credentials may do under the prefix, by requests that change nothing, and
    which commands that lets run."""
    try:
        found = await store.probe_permissions(settings.key_prefix, known_key)
    except ArchiverError as exc:
        report.add("permissions", WARN, f"could not be probed: {exc}")
        return
    words = {True: "granted", False: "denied", None: "cannot tell"}
    listed = "; ".join(f"{action} {words[found[action]]}" for action in PROBED)
    runs = {command: _verdict(found, iam.needs_for(command).objects) for command in iam.DAILY}
    runs["upload"] = found["s3:PutObject"]  # s3:GetObject makes re-runs cheaper only
    can = [c for c, ok in runs.items() if ok]
    cannot = [c for c, ok in runs.items() if ok is False]
    unsure = [c for c, ok in runs.items() if ok is None]
    notes = [f"can run: {', '.join(can) or 'nothing'}"]
    if cannot:
        notes.append(f"cannot: {', '.join(cannot)}")
    if unsure:
        notes.append(f"cannot tell: {', '.join(unsure)}")
    if runs["upload"] and found["s3:GetObject"] is False:
        notes.append("upload is write-only: an object already stored is sent again")
    if found["s3:GetObject"] is None:
        notes.append(
            "s3:GetObject: S3 answered 403 for a key that may not exist (no archived object "
            "to read, and no s3:ListBucket)"
        )
    if found["s3:AbortMultipartUpload"] is False:
        notes.append("failed multipart uploads are left to the bucket's lifecycle rule")
    state = OK
    if not runs["upload"]:
        state = FAIL
    elif cannot or unsure or found["s3:AbortMultipartUpload"] is False:
        state = WARN
    report.add(
        "permissions",
        state,
        f"{listed}; {'; '.join(notes)} (`archiver iam-policy` prints what each needs)",
        actions=dict(found),
        commands=runs,
    )


PROBED = ("s3:PutObject", "s3:AbortMultipartUpload", "s3:GetObject", "s3:ListBucket")


def _verdict(found: dict[str, bool | None], actions: tuple[str, ...]) -> bool | None:
    """Whether every action is granted (None: one cannot be told)."""
    states = [found.get(a) for a in actions]
    if False in states:
        return False
    return None if None in states else True


async def _check_cache(
    settings: Settings, report: CheckReport, sample: list[MediaRow] | None
) -> None:
    try:
        root = resolve_cache_root(settings)
    except ConfigError as exc:
        report.add("cache", FAIL, f"{exc}; working directory {os.getcwd()}")
        return
    resolver = resolver_for(settings, root, Path.cwd())
    shown = printable(str(settings.cache_root))
    if resolver.alias != root:  # the root as configured is (below) a symlink
        shown += f" (-> {printable(str(root))})"
    if sample is None:
        report.add("cache", WARN, f"{shown} is a directory; no rows to look for (no database)")
        return
    found = missing = refused = 0
    for row in sample:
        result = await resolver.locate(row)
        if isinstance(result, Found):
            found += 1
        elif isinstance(result, NotFound):
            missing += 1
        else:
            refused += 1
    facts = {"root": str(root), "sampled": len(sample), "found": found, "missing": missing}
    facts["refused"] = refused
    detail = f"{shown}: the files of {found:,} of {len(sample):,} sampled rows found"
    if missing or refused:
        detail += f" ({missing:,} missing, {refused:,} not usable)"
    if sample and not found:
        hint = "check ARCHIVER_CACHE_ROOT and the working directory (local_file_path is "
        report.add("cache", FAIL, f"{detail}: {hint}relative to it)", **facts)
    elif missing or refused:
        report.add("cache", WARN, detail, **facts)
    else:
        report.add("cache", OK, detail if sample else f"{shown}: no rows to look for", **facts)


def format_check(report: CheckReport) -> str:
    width = max(len(v.name) for v in report.verdicts)
    lines = [f"{v.state:<7} {v.name:<{width}}  {v.detail}" for v in report.verdicts]
    failed = [v.name for v in report.verdicts if v.state == FAIL]
    if failed:
        lines.append(f"Not ready: {', '.join(failed)} failed.")
    else:
        lines.append("Ready: `archiver upload` can run.")
    return "\n".join(lines)
