"""archiver: move a social app's cached media into S3 and record where each file went.

The command line is `archiver` (see the README). Programs that download media can archive
what they just stored in the same process::

    import os
    import archiver

    settings = archiver.Settings.from_env(os.environ)
    summary = await archiver.archive(settings, media_ids=["med-1", "med-2"])
    print(summary.as_json())  # the object `archiver upload --json` prints
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from archiver.models import Summary
from archiver.settings import Settings, UploadOptions

__version__ = "0.1.0"
__all__ = ["Settings", "Summary", "UploadOptions", "archive"]


async def archive(
    settings: Settings,
    *,
    media_ids: Sequence[str] = (),
    options: UploadOptions | None = None,
    cwd: Path | None = None,
) -> Summary:
    """Archive rows as `archiver upload` does, in this process, and return its summary
    (`summary.as_json()` is the object `archiver upload --json` prints; `summary.exit_code`
    its exit code). With `media_ids`, only those rows (tried even when known problems);
    without, every unarchived row. `options` as the command's flags (`UploadOptions`);
    `cwd` is where relative `local_file_path` values are read from (default: the working
    directory). Prints nothing and installs no signal handler. Failures that stop the whole
    run (no database, no bucket, bad credentials) raise `archiver.errors.ArchiverError`;
    a failure mid-run (the database gone for good) is in `summary.error`."""
    import io
    from dataclasses import replace

    from archiver.commands.upload import run_upload
    from archiver.progress import Reporter

    options = options or UploadOptions()
    if media_ids:
        options = replace(options, media_ids=tuple(media_ids))
    quiet = io.StringIO()  # per-row warnings: the summary and `archiver problems` have them
    reporter = Reporter(mode="off", verbose=False, dry_run=options.dry_run, out=quiet, err=quiet)
    return await run_upload(settings, options, reporter, cwd=cwd)
