"""The local cache on disk: the only module that opens, reads, creates or deletes its files.

Rows are written by another program, and the cache may change while archiver works, so:
- every file is reached from a descriptor of the cache root, one directory at a time with
  `O_NOFOLLOW`: a symlink swapped in for a directory (or the file) after the file was found
  is refused, never followed out of the root;
- files are opened with `O_NONBLOCK` and their type is checked on the opened descriptor, so
  a FIFO or a device where a file should be never blocks a read;
- a file is deleted by name, relative to the directory descriptor held since it was proved,
  and only while that name still names the very file (device, inode, size, mtime) whose
  bytes were hashed: no swap between the check and the delete can redirect it;
- a restored file is written unnamed (`O_TMPFILE`) and linked to its name only once its
  bytes are proved, and never over an existing name: a crash at any point, even `kill -9`,
  leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

from archiver.errors import NotARegularFile

Unlinked = Literal["deleted", "gone", "changed"]

READ_CHUNK_BYTES = 1024 * 1024
_OPEN_ROOT = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW_FILE_MODE = 0o666  # as open() makes files: the umask decides
# linkat() of an O_TMPFILE descriptor by its /proc name (AT_EMPTY_PATH would need a capability)
_PROC_FD = Path("/proc/self/fd")


def why(exc: BaseException) -> str:
    """A short reason for a failed file operation, without the (untrusted, maybe long) path."""
    if isinstance(exc, NotARegularFile):
        return str(exc)
    if isinstance(exc, OSError):
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return "a symlink or a file is where a directory should be"
        return exc.strerror or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {exc}"


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symlink"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (
        b.st_dev,
        b.st_ino,
        b.st_size,
        b.st_mtime_ns,
    )


class _Closing:
    """`with thing:` closes the thing at the end of the block."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@dataclass
class LocalFile(_Closing):
    """A regular file of the cache, open for reading, with the directory that holds it."""

    path: Path  # where it was found (for messages)
    dir_fd: int
    name: str
    fd: int
    stat: os.stat_result

    @property
    def size(self) -> int:
        return self.stat.st_size

    def pread(self, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (fewer only at the end of the file)."""
        chunks: list[bytes] = []
        while length > 0:
            chunk = os.pread(self.fd, min(length, 1 << 30), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return b"".join(chunks)

    def pread_into(self, view: memoryview, offset: int) -> int:
        """Fill `view` from `offset`; the number of bytes read (fewer only at the end)."""
        done = 0
        while done < len(view):
            n = os.preadv(self.fd, [view[done:]], offset + done)
            if not n:
                break
            done += n
        return done

    def read_all(self) -> bytes:
        """The whole content, to the end of the file as it is now."""
        chunks = []
        offset = 0
        while chunk := os.pread(self.fd, max(READ_CHUNK_BYTES, self.size), offset):
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def md5(self) -> str:
        """The MD5 of the content, read a chunk at a time (memory stays bounded)."""
        digest = hashlib.md5()
        offset = 0
        while chunk := os.pread(self.fd, READ_CHUNK_BYTES, offset):
            digest.update(chunk)
            offset += len(chunk)
        return digest.hexdigest()

    def digests(self, *, crc32: bool) -> tuple[str, int | None]:
        """The MD5 (hex) of the file's first `size` bytes, and their CRC32 when asked, in
        one read a chunk at a time (memory stays bounded)."""
        digest = hashlib.md5()
        crc = 0
        offset = 0
        while offset < self.size:
            chunk = os.pread(self.fd, min(READ_CHUNK_BYTES, self.size - offset), offset)
            if not chunk:
                break
            digest.update(chunk)
            if crc32:
                crc = zlib.crc32(chunk, crc)
            offset += len(chunk)
        return digest.hexdigest(), crc if crc32 else None

    def unchanged(self) -> bool:
        """Whether the descriptor's file is as it was when opened (size and mtime), and its
        name in the directory still names it (not replaced, not a symlink now)."""
        try:
            now_fd = os.fstat(self.fd)
            now_name = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except OSError:
            return False
        return _same_file(self.stat, now_fd) and _same_file(self.stat, now_name)

    def unlink_if_unchanged(self) -> Unlinked:
        """Delete the file by its name in the held directory, only if that name still names
        this unchanged file: "deleted", "gone" (nothing has the name any more) or "changed"
        (the file changed, or another file or a symlink has its name: nothing deleted)."""
        # One look at the name: two rows sharing a file are deleted concurrently, and the
        # other one's unlink between two looks would make a "gone" file look "changed".
        try:
            now_name = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
            now_fd = os.fstat(self.fd)
        except FileNotFoundError:
            return "gone"
        except OSError:
            return "changed"
        if not (_same_file(self.stat, now_fd) and _same_file(self.stat, now_name)):
            return "changed"
        try:
            os.unlink(self.name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return "gone"
        return "deleted"

    def close(self) -> None:
        for fd in (self.fd, self.dir_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


# A single PUT's body: bytes read, a view of a reused buffer, or a file streamed from disk.
PutBody = bytes | memoryview | LocalFile


def body_size(body: PutBody) -> int:
    """How many bytes a PUT of `body` sends."""
    return body.size if isinstance(body, LocalFile) else len(body)


class NewFile:
    """A file being written into a cache directory: unnamed until `publish` links it (or,
    where the file system has no O_TMPFILE, under a temporary name removed by `close`)."""

    def __init__(self, dir_fd: int, name: str) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self._temp: str | None = None
        try:
            if not _PROC_FD.is_dir():
                raise OSError(errno.EOPNOTSUPP, "no /proc to link an unnamed file")
            self.fd = os.open(
                ".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, _NEW_FILE_MODE, dir_fd=dir_fd
            )
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise
            self._temp = f".{name}.restore-{uuid.uuid4().hex[:8]}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            self.fd = os.open(self._temp, flags, _NEW_FILE_MODE, dir_fd=dir_fd)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def publish(self) -> bool:
        """Give the file its name, never replacing anything; False when the name is taken."""
        os.fsync(self.fd)
        try:
            if self._temp is None:
                os.link(
                    _PROC_FD / str(self.fd),
                    self.name,
                    dst_dir_fd=self.dir_fd,
                    follow_symlinks=True,
                )
            else:
                os.link(self._temp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except FileExistsError:
            return False
        return True

    def close(self) -> None:
        """Close it; a temporary name, if any, is removed (a published file keeps its name)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
        if self._temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._temp, dir_fd=self.dir_fd)
            self._temp = None


class CacheRoot(_Closing):
    """The cache root, held open for a run; every path below it is walked from here."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, _OPEN_ROOT)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def open_dir(self, parts: Sequence[str], *, create: bool = False) -> int:
        """A descriptor of the directory `parts` below the root, every step taken without
        following a symlink (`create`: make missing directories). The caller closes it."""
        fd = os.open(".", _OPEN_DIR, dir_fd=self._fd)
        try:
            for part in parts:
                if part in ("", ".", "..") or "/" in part:
                    raise NotARegularFile(f"{part!r} is not a plain directory name")
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o777, dir_fd=fd)
                step = os.open(part, _OPEN_DIR, dir_fd=fd)
                os.close(fd)
                fd = step
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_file(self, path: Path) -> LocalFile:
        """Open the regular file at `path` (a real path inside the root) for reading; OSError
        (NotARegularFile for a FIFO, device, directory) when that cannot be done safely."""
        try:
            parts = path.relative_to(self.path).parts
        except ValueError:
            raise NotARegularFile(f"{path} is not inside the cache root") from None
        if not parts:
            raise NotARegularFile("the cache root itself is not a file")
        dir_fd = self.open_dir(parts[:-1])
        try:
            fd = os.open(parts[-1], _OPEN_FILE, dir_fd=dir_fd)
        except BaseException:
            os.close(dir_fd)
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            os.close(dir_fd)
            raise NotARegularFile(f"{path} is {_kind(st.st_mode)}, not a regular file")
        return LocalFile(path, dir_fd, parts[-1], fd, st)  # it owns both descriptors now
