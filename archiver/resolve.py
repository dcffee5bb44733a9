"""Which local file a row means, confined to the cache root.

Lookup order (the first that exists wins), as the README states it:
1. `local_file_path` (relative to the working directory);
2. `{cache_root}/{media_type}s/{md5}{ext from mime_type}`;
3. any `{cache_root}/{media_type}s/{md5}.*`, preferring a suffix other than `.bin`, in
   name order.

A candidate that resolves (symlinks followed) outside the cache root is never read: the row
is invalid and no other lookup is tried. Every column is untrusted: a path that cannot be
looked up (too long, a loop, a NUL byte) makes the row invalid; no lookup raises.

Step 3 costs O(1) per row: each directory is listed once into an index of `{md5}.*` names,
listed again only when the directory changed and the index is a few seconds old.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from archiver.content_types import FALLBACK_EXT, ext_for_mime
from archiver.errors import ConfigError
from archiver.keys import normalize_md5
from archiver.localfs import CacheRoot, why
from archiver.models import MediaRow
from archiver.settings import Settings

_MEDIA_TYPE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
_MD5_NAME_RE = re.compile(r"[0-9a-f]{32}\.")
REAL_DIRS_REMEMBERED = 1024  # directories whose real path a Resolver keeps
INDEX_MAX_AGE_S = 5.0  # a changed directory is listed again at most this often


@dataclass(frozen=True, slots=True)
class Found:
    """The row's file: `path` is the real (symlink-free) path inside the cache root."""

    path: Path
    via: str  # which lookup found it: "local_file_path", "mime_type" or "glob"
    size: int = 0
    mtime: float = 0.0
    through_link: bool = False  # a symlink on the way (prune never deletes through one)
    # The inode's change time: what any write, rename over or restore of the file moves,
    # even one that keeps its size and mtime (`rsync -a`, `cp -p`, `touch -r`).
    ctime: float = 0.0


@dataclass(frozen=True, slots=True)
class NotFound:
    reason: str


@dataclass(frozen=True, slots=True)
class PathRefused:
    """The row must not be read (outside the cache root, not a regular file, bad type)."""

    reason: str


Resolution = Found | NotFound | PathRefused


def media_dir_name(media_type: str | None) -> str | None:
    """`{media_type}s`, or None when media_type is not a plain word (or NULL)."""
    return f"{media_type}s" if media_type and _MEDIA_TYPE_RE.match(media_type) else None


def media_dir(cache_root: Path, media_type: str | None) -> Path | None:
    """`{cache_root}/{media_type}s`, or None when media_type is not a plain word."""
    name = media_dir_name(media_type)
    return cache_root / name if name is not None else None


def _confine(candidate: Path, root: Path, via: str) -> Found | PathRefused:
    """The file at `candidate` with every symlink on the way resolved, when that is a
    regular file inside `root`."""
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError, ValueError) as exc:  # vanished, loop, permission
        return PathRefused(f"cannot resolve {candidate}: {why(exc)}")
    if not real.is_relative_to(root):
        return PathRefused(f"{candidate} resolves outside the cache root")
    try:
        st = real.stat()  # the one stat of the file: its size and mtime travel with it
    except OSError:
        st = None
    return _found(candidate, real, st, via)


def _control_characters(name: str) -> bool:
    """Whether a file name holds a control character (C0, DEL, C1): such a name would carry
    it into an object key and `archive_url` (`{md5}.jpg\\n`)."""
    return any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name)


def _found(candidate: Path, real: Path, st: os.stat_result | None, via: str) -> Found | PathRefused:
    if _control_characters(candidate.name) or _control_characters(real.name):
        return PathRefused(f"the file name {str(real.name)!r} holds control characters")
    if st is None or not stat.S_ISREG(st.st_mode):
        return PathRefused(f"{candidate} is not a regular file")
    linked = Path(os.path.abspath(candidate)) != real
    return Found(real, via, st.st_size, st.st_mtime, through_link=linked, ctime=st.st_ctime)


def _lookup(path: Path) -> os.stat_result | None:
    """What is at `path` itself (lstat), or None when nothing is there, or a symlink that
    leads nowhere. OSError or ValueError for a path that cannot be looked up at all (too
    long, a loop, no permission, a NUL byte)."""
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st


def _rank(name: str) -> tuple[bool, str]:
    return (name.lower().endswith(FALLBACK_EXT), name)


@dataclass
class _Index:
    best: dict[str, str]  # md5 -> the preferred `{md5}.*` name of the directory
    mtime_ns: int
    built_at: float


@dataclass
class Resolver:
    """Finds rows' files under one cache root (`root` resolved: absolute, real). Workers call
    it from threads at once; the directory indexes are shared."""

    root: Path
    cwd: Path
    # The cache root as configured (absolute, symlinks kept): a `local_file_path` below it
    # is looked up below `root`, so that a symlinked cache root (`cache -> /elsewhere`)
    # is not taken for a symlink on the file's way.
    alias: Path | None = None
    clock: Callable[[], float] = time.monotonic
    listdir: Callable[[Path], list[str]] = os.listdir
    _indexes: dict[Path, _Index] = field(default_factory=dict)
    _real_dirs: dict[Path, Path] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def locate(self, row: MediaRow) -> Resolution:
        """The row's file, looked up in a worker thread: what every job asks of a row before
        it touches its file. PathRefused when `md5_sum` is not 32 hex digits."""
        md5 = normalize_md5(row.md5_sum)
        if md5 is None:
            return PathRefused(f"md5_sum {row.md5_sum!r} is not 32 hex digits")
        return await asyncio.to_thread(self.resolve, row, md5)

    def resolve(self, row: MediaRow, md5: str) -> Resolution:
        """Find the row's file (never raises for anything a row holds)."""
        if row.local_file_path:
            try:
                given = Path(row.local_file_path)
                candidate = self.below_root(given if given.is_absolute() else self.cwd / given)
                if (st := _lookup(candidate)) is not None:
                    return self._confine(candidate, st, "local_file_path")
            except (OSError, ValueError) as exc:
                return PathRefused(f"local_file_path cannot be looked up: {why(exc)}")
        directory = media_dir(self.root, row.media_type)
        if directory is None:
            return PathRefused(f"media_type {row.media_type!r} is not a plain word")
        try:
            mime_ext = ext_for_mime(row.mime_type)
            if mime_ext:
                candidate = directory / f"{md5}{mime_ext}"
                if (st := _lookup(candidate)) is not None:
                    return self._confine(candidate, st, "mime_type")
            for fresh in (False, True):
                name = self._index(directory, fresh=fresh).get(md5)
                if name is None:
                    break
                candidate = directory / name
                if (st := _lookup(candidate)) is not None:
                    return self._confine(candidate, st, "glob")
        except (OSError, ValueError) as exc:
            return PathRefused(f"cannot look in {directory}: {why(exc)}")
        return NotFound(f"no local file for {md5} under {directory}")

    def below_root(self, path: Path) -> Path:
        """`path` made absolute, and written below the real root when it is below the
        configured one (no symlink is followed but the root's own)."""
        absolute = Path(os.path.abspath(path))
        alias = self.alias
        if alias is not None and alias != self.root and absolute.is_relative_to(alias):
            return self.root / absolute.relative_to(alias)
        return absolute

    def _confine(self, candidate: Path, st: os.stat_result, via: str) -> Found | PathRefused:
        """`_confine`, cheaper for the common case: a regular file (not a symlink) is its
        directory's real path plus its name, and the real path of each directory is looked
        up once per run (a run sees a handful). Reads stay safe if a directory is swapped
        for a symlink later: files are opened from the root, one component at a time,
        refusing symlinks (localfs.CacheRoot.open_file)."""
        if not stat.S_ISREG(st.st_mode):
            return _confine(candidate, self.root, via)
        parent = candidate.parent
        real_parent = self._real_dirs.get(parent)
        if real_parent is None:
            try:
                real_parent = parent.resolve(strict=True)
            except (OSError, RuntimeError, ValueError) as exc:
                return PathRefused(f"cannot resolve {candidate}: {why(exc)}")
            if len(self._real_dirs) >= REAL_DIRS_REMEMBERED:
                self._real_dirs.clear()  # hostile rows naming many directories
            self._real_dirs[parent] = real_parent
        real = real_parent / candidate.name
        if not real.is_relative_to(self.root):
            return PathRefused(f"{candidate} resolves outside the cache root")
        return _found(candidate, real, st, via)

    def _index(self, directory: Path, *, fresh: bool) -> dict[str, str]:
        """The directory's `{md5}.*` index, listed now when `fresh` or when it changed since
        an index that is more than INDEX_MAX_AGE_S old."""
        try:
            mtime_ns = os.stat(directory).st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            return {}
        with self._lock:  # one listing per directory, however many workers ask
            index = self._indexes.get(directory)
            now = self.clock()
            up_to_date = index is not None and (
                index.mtime_ns == mtime_ns or now - index.built_at < INDEX_MAX_AGE_S
            )
            if index is not None and up_to_date and not fresh:
                return index.best
            best: dict[str, str] = {}
            for name in self.listdir(directory):
                if _MD5_NAME_RE.match(name):
                    kept = best.get(name[:32])
                    if kept is None or _rank(name) < _rank(kept):
                        best[name[:32]] = name
            self._indexes[directory] = _Index(best, mtime_ns, now)
            return best


def resolve_file(row: MediaRow, md5: str, cache_root: Path, cwd: Path) -> Resolution:
    """Find one row's file (a Resolver for one lookup; a run keeps one Resolver)."""
    return Resolver(cache_root, cwd).resolve(row, md5)


def resolver_for(settings: Settings, root: Path, cwd: Path) -> Resolver:
    """The run's Resolver: under the real root `root` (`resolve_cache_root`), knowing the
    root as configured (relative to the working directory, as `resolve_cache_root` reads it)."""
    return Resolver(root, cwd, alias=Path(os.path.abspath(settings.cache_root)))


def resolve_cache_root(settings: Settings) -> Path:
    """The cache root as a real path, or ConfigError when it is not a directory."""
    root = settings.cache_root.resolve()
    if not root.is_dir():
        if settings.cache_root_from is None and settings.env_file == "":
            # The default, and no .env: most likely run from another directory than the app's.
            raise ConfigError(
                f"cache root {str(settings.cache_root)!r} is not a directory"
                f"{settings.no_env_file_here()}; or set ARCHIVER_CACHE_ROOT or --cache-root"
            )
        named = f" (from {settings.cache_root_from})" if settings.cache_root_from else ""
        raise ConfigError(
            f"cache root {str(settings.cache_root)!r}{named} is not a directory in "
            f"{os.getcwd()} (set ARCHIVER_CACHE_ROOT or --cache-root)"
        )
    return root


def open_cache_root(settings: Settings) -> CacheRoot:
    """The cache root, held open for a run, or ConfigError when it cannot be."""
    root = resolve_cache_root(settings)
    try:
        return CacheRoot(root)
    except OSError as exc:
        raise ConfigError(
            f"cache root {str(settings.cache_root)!r} cannot be opened: {why(exc)}"
        ) from exc
