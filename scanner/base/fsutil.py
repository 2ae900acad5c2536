"""Files written so that a crash leaves the old or the new content, and paths below a directory the
caller trusts opened without ever following a symlink (a USB stick must not redirect a write or a
read). The one atomic write of the project. Imports nothing from the project but scanner.base.errors.

Rules (docs/sync-protocol.md#offline-export):

- A path the caller names (a state directory, the directory a technician names) is opened as
  given, symlinks in it included: that is the caller's choice.
- Below it, every directory is entered and every file read with O_NOFOLLOW through directory
  file descriptors (openat), so nothing can be swapped in between the check and the use.
- A file is written to a new temporary name (random, O_CREAT|O_EXCL|O_NOFOLLOW) in the target
  directory, fsynced, renamed over the target (a rename replaces a symlink, never writes
  through it) and the directory fsynced. No O_TRUNC on an existing path.
"""
from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path
from typing import IO, Self

from scanner.base.errors import CheckpointError
from scanner.base.i18n import text

SYMLINK = "symlink_refused"
NOT_A_DIRECTORY = "not_a_directory"
NOT_REGULAR = "not_a_regular_file"
HARD_LINK = "hard_link_refused"
TOO_LARGE = "file_too_large"
BAD_NAME = "bad_file_name"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_TMP_TRIES = 16


class UnsafePathError(CheckpointError, OSError):
    """A path refused because following or using it could reach a file it must not (a symlink, a
    FIFO, a hard link, an oversize file). Also an OSError, so every handler of file-system
    failures handles it; ``code`` says which refusal it was."""

    code = "unsafe_path"


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UnsafePathError(f"{name!r} is not a plain file name", code=BAD_NAME,
                              text=text("unsafe_path.bad_file_name", name=repr(name)))


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


class Dir:
    """An open directory: its file descriptor and the path it was reached by (for messages).
    Close it (or use it in a with block)."""

    __slots__ = ("fd", "path")

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def open(cls, path: str | os.PathLike, *, create_mode: int | None = None) -> Dir:
        """The directory ``path`` as the caller names it (symlinks in it followed); made with its
        parents if missing and ``create_mode`` is given."""
        if create_mode is not None:
            Path(path).mkdir(mode=create_mode, parents=True, exist_ok=True)
        return cls(os.open(path, _DIR_FLAGS), os.fspath(path))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def shown(self, name: str) -> str:
        return os.path.join(self.path, name)

    def lstat(self, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def names(self) -> list[str]:
        """The names in this directory, sorted."""
        with os.scandir(self.fd) as it:
            return sorted(e.name for e in it)

    def subdir(self, name: str, *, create_mode: int | None = None) -> Dir:
        """The directory ``name`` in this one, never through a symlink; made (and this directory
        fsynced) if missing and ``create_mode`` is given."""
        _check_name(name)
        try:
            return Dir(os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=self.fd), self.shown(name))
        except FileNotFoundError:
            if create_mode is None:
                raise
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise self._refusal(name, "a directory") from None
            raise
        try:
            os.mkdir(name, create_mode, dir_fd=self.fd)
        except FileExistsError:
            pass  # made meanwhile: the open below decides what it is
        else:
            os.fsync(self.fd)
        return self.subdir(name)

    def _refusal(self, name: str, wanted: str) -> UnsafePathError:
        try:
            mode = self.lstat(name).st_mode
        except OSError:
            mode = 0
        if stat.S_ISLNK(mode):
            return UnsafePathError(f"{self.shown(name)} is a symbolic link: not followed", code=SYMLINK,
                                  text=text("unsafe_path.symlink_refused", path=self.shown(name)))
        code = NOT_A_DIRECTORY if wanted == "a directory" else NOT_REGULAR
        return UnsafePathError(f"{self.shown(name)} is {_kind(mode)}, not {wanted}", code=code,
                              text=text(f"unsafe_path.{code}", path=self.shown(name)))

    def read(self, name: str, max_bytes: int) -> bytes:
        """The content of the regular file ``name`` in this directory, at most ``max_bytes``.
        Refused: a symlink, anything but a regular file (FIFO, device: never opened), a file with
        more than one hard link, a larger file (the read stops after max_bytes + 1)."""
        _check_name(name)
        if not stat.S_ISREG(self.lstat(name).st_mode):
            raise self._refusal(name, "a regular file")
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._refusal(name, "a regular file") from None
            raise
        with open(fd, "rb", buffering=0, closefd=True) as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # swapped after the lstat above
                raise UnsafePathError(f"{self.shown(name)} is {_kind(st.st_mode)}, not a regular file",
                                      code=NOT_REGULAR, text=text("unsafe_path.not_a_regular_file",
                                                                  path=self.shown(name)))
            if st.st_nlink > 1:
                raise UnsafePathError(f"{self.shown(name)} has {st.st_nlink} hard links: refused",
                                      code=HARD_LINK, text=text("unsafe_path.hard_link_refused",
                                                                path=self.shown(name), n=st.st_nlink))
            if st.st_size > max_bytes:
                raise UnsafePathError(f"{self.shown(name)} is larger than {max_bytes} bytes", code=TOO_LARGE,
                                      text=text("unsafe_path.file_too_large", path=self.shown(name), max=max_bytes))
            data = _read_at_most(fh, max_bytes + 1)
        if len(data) > max_bytes:
            raise UnsafePathError(f"{self.shown(name)} is larger than {max_bytes} bytes", code=TOO_LARGE,
                                  text=text("unsafe_path.file_too_large", path=self.shown(name), max=max_bytes))
        return data

    def write(self, name: str, data: bytes, mode: int = 0o644, *, replace: bool = True) -> bool:
        """Atomically make ``name`` in this directory hold ``data`` (see atomic_write)."""
        out = AtomicFile(self, name, mode, replace=replace)
        with out as fh:
            fh.write(data)
        return out.written


def _read_at_most(fh: IO[bytes], limit: int) -> bytes:
    buf = bytearray()
    while len(buf) < limit:
        chunk = fh.read(min(1 << 20, limit - len(buf)))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


class AtomicFile:
    """A new file that becomes ``name`` in ``directory`` only when the with block ends without an
    exception: written under a random temporary name, fsynced, renamed over ``name`` (or linked
    to it when ``replace`` is False: an existing file is then kept and ``written`` is False),
    then the directory fsynced. On an exception or abort() the temporary file is removed.
    The file gets exactly ``mode`` (not reduced by the umask)."""

    def __init__(self, directory: Dir, name: str, mode: int = 0o644, *, replace: bool = True,
                 encoding: str | None = None, owns_dir: bool = False) -> None:
        _check_name(name)
        self.dir, self.name, self.replace, self.owns_dir = directory, name, replace, owns_dir
        self.written = False
        self._tmp: str | None = None
        fd = -1
        for _ in range(_TMP_TRIES):
            tmp = f".{name[:64]}.{secrets.token_hex(8)}.tmp"
            try:
                fd = os.open(tmp, _TMP_FLAGS, 0o600, dir_fd=directory.fd)
                break
            except FileExistsError:
                continue
        if fd < 0:
            raise FileExistsError(errno.EEXIST, "no free temporary name", directory.shown(name))
        self._tmp = tmp
        try:
            os.fchmod(fd, mode)
            # the file lives as long as this AtomicFile, which closes it on commit or abort
            self.file: IO = (open(fd, "w", encoding=encoding, newline="") if encoding is not None  # noqa: SIM115
                             else open(fd, "wb"))  # noqa: SIM115
        except BaseException:
            os.close(fd)
            self._remove_tmp()
            raise

    @classmethod
    def at(cls, path: str | os.PathLike, mode: int = 0o644, *, replace: bool = True,
           encoding: str | None = None) -> AtomicFile:
        """For ``path``: its directory opened as the caller names it, the file name never followed."""
        p = Path(path)
        directory = Dir.open(p.parent)
        try:
            return cls(directory, p.name, mode, replace=replace, encoding=encoding, owns_dir=True)
        except BaseException:
            directory.close()
            raise

    @classmethod
    def output(cls, path: str | os.PathLike, mode: int = 0o600, *, encoding: str | None = None) -> AtomicFile:
        """An output file a person named (``-o FILE``): refused if ``path`` is a symlink or exists
        as anything but a regular file; otherwise replaced atomically, never written through."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISREG(st.st_mode):
                if stat.S_ISLNK(st.st_mode):
                    raise UnsafePathError(f"{os.fspath(path)} is a symbolic link: not followed", code=SYMLINK,
                                          text=text("unsafe_path.symlink_refused", path=os.fspath(path)))
                raise UnsafePathError(f"{os.fspath(path)} is {_kind(st.st_mode)}, not a regular file",
                                      code=NOT_REGULAR, text=text("unsafe_path.not_a_regular_file",
                                                                  path=os.fspath(path)))
        return cls.at(path, mode, encoding=encoding)

    def __enter__(self) -> IO:
        return self.file

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def commit(self) -> bool:
        """Make the file ``name`` (see the class); True if it was written."""
        try:
            tmp = self._tmp
            if tmp is None:
                raise ValueError(f"{self.dir.shown(self.name)}: already committed or aborted")
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            if self.replace:
                os.rename(tmp, self.name, src_dir_fd=self.dir.fd, dst_dir_fd=self.dir.fd)
                self._tmp = None
                self.written = True
            else:
                try:
                    os.link(tmp, self.name, src_dir_fd=self.dir.fd, dst_dir_fd=self.dir.fd,
                            follow_symlinks=False)
                    self.written = True
                except FileExistsError:
                    self.written = False
                self._remove_tmp()
            if self.written:
                os.fsync(self.dir.fd)
        finally:
            self.abort()
        return self.written

    def abort(self) -> None:
        """Drop the temporary file (nothing after a commit); close what this object opened."""
        if not self.file.closed:
            self.file.close()
        self._remove_tmp()
        if self.owns_dir:
            self.dir.close()

    def _remove_tmp(self) -> None:
        if self._tmp is not None:
            try:
                os.unlink(self._tmp, dir_fd=self.dir.fd)
            except FileNotFoundError:
                pass
            self._tmp = None


def atomic_write(path: str | os.PathLike, data: bytes, mode: int = 0o644, *, replace: bool = True) -> bool:
    """Make ``path`` hold ``data`` so that a crash leaves either the old or the new file (never a
    part, never a write through a symlink at ``path``). With ``replace`` False an existing file is
    kept and False returned. The file gets exactly ``mode``."""
    out = AtomicFile.at(path, mode, replace=replace)
    with out as fh:
        fh.write(data)
    return out.written


def open_log(path: str | os.PathLike, mode: int = 0o600) -> IO[str]:
    """A text log file opened for appending (created with ``mode``), never through a symlink at
    ``path``: lines are only ever added, so it needs no atomic replace."""
    # O_NONBLOCK: a FIFO put there is refused at once (ENXIO), not waited on; no effect on a file
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return os.fdopen(fd, "a", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


def write_output(path: str | os.PathLike, data: bytes, mode: int = 0o600) -> None:
    """Write an output file a person named (see AtomicFile.output)."""
    with AtomicFile.output(path, mode) as fh:
        fh.write(data)



def give_to_owner(directory: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give ``path`` (and an SQLite file's -wal and -shm) to the owner of ``directory`` when they
    differ: a file a technician made as root in a service's directory stays writable by the service."""
    st = os.stat(directory)
    for p in (os.fspath(path), f"{os.fspath(path)}-wal", f"{os.fspath(path)}-shm"):
        try:
            mine = os.stat(p, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if (mine.st_uid, mine.st_gid) != (st.st_uid, st.st_gid):
            os.chown(p, st.st_uid, st.st_gid, follow_symlinks=False)
