"""Which local file a row means, confined to the cache root.

Lookup order (the first that exists wins), from the contract:
1. `local_file_path` (relative to the working directory);
2. `{cache_root}/{media_type}s/{md5}{ext from mime_type}`;
3. any `{cache_root}/{media_type}s/{md5}.*`, preferring a suffix other than `.bin`, in
   name order.

A candidate that resolves (symlinks followed) outside the cache root is never read: the row
is invalid and no other lookup is tried.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from archiver.content_types import FALLBACK_EXT, ext_for_mime
from archiver.errors import ConfigError
from archiver.models import MediaRow
from archiver.settings import Settings

_MEDIA_TYPE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclass(frozen=True, slots=True)
class Found:
    """The row's file: `path` is the real (symlink-free) path inside the cache root."""

    path: Path
    via: str  # which lookup found it: "local_file_path", "mime_type" or "glob"
    size: int = 0
    mtime: float = 0.0
    through_link: bool = False  # a symlink on the way (prune never deletes through one)


@dataclass(frozen=True, slots=True)
class NotFound:
    reason: str


@dataclass(frozen=True, slots=True)
class Refused:
    """The row must not be read (outside the cache root, not a regular file, bad type)."""

    reason: str


Resolution = Found | NotFound | Refused


def media_dir(cache_root: Path, media_type: str) -> Path | None:
    """`{cache_root}/{media_type}s`, or None when media_type is not a plain word."""
    if not _MEDIA_TYPE_RE.match(media_type):
        return None
    return cache_root / f"{media_type}s"


def _confine(candidate: Path, root: Path, via: str) -> Found | Refused:
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # vanished, loop, permission
        return Refused(f"cannot resolve {candidate}: {exc.__class__.__name__}")
    if not real.is_relative_to(root):
        return Refused(f"{candidate} resolves outside the cache root")
    try:
        st = real.stat()  # the one stat of the file: its size and mtime travel with it
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        return Refused(f"{candidate} is not a regular file")
    linked = Path(os.path.abspath(candidate)) != real
    return Found(real, via, st.st_size, st.st_mtime, through_link=linked)


def _glob_candidates(directory: Path, md5: str) -> list[Path]:
    prefix = f"{md5}."
    try:
        names = [e.name for e in os.scandir(directory) if e.name.startswith(prefix)]
    except OSError:
        return []
    names.sort(key=lambda n: (n.lower().endswith(FALLBACK_EXT), n))
    return [directory / n for n in names]


def resolve_file(row: MediaRow, md5: str, cache_root: Path, cwd: Path) -> Resolution:
    """Find the row's local file. `cache_root` must already be resolved (absolute, real)."""
    if row.local_file_path:
        given = Path(row.local_file_path)
        candidate = given if given.is_absolute() else cwd / given
        if candidate.exists():
            return _confine(candidate, cache_root, "local_file_path")
    directory = media_dir(cache_root, row.media_type)
    if directory is None:
        return Refused(f"media_type {row.media_type!r} is not a plain word")
    mime_ext = ext_for_mime(row.mime_type)
    if mime_ext:
        candidate = directory / f"{md5}{mime_ext}"
        if candidate.exists():
            return _confine(candidate, cache_root, "mime_type")
    for candidate in _glob_candidates(directory, md5):
        if candidate.exists():
            return _confine(candidate, cache_root, "glob")
    return NotFound(f"no local file for {md5} under {directory}")


def resolve_cache_root(settings: Settings) -> Path:
    """The cache root as a real path, or ConfigError when it is not a directory."""
    root = settings.cache_root.resolve()
    if not root.is_dir():
        raise ConfigError(
            f"cache root {str(settings.cache_root)!r} is not a directory "
            "(set ARCHIVER_CACHE_ROOT or --cache-root)"
        )
    return root
