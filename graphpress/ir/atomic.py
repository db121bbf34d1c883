"""Write files and directories whole or not at all, whatever stops the process.

Every output graphpress writes (models, their data files, reports, packed files, compiled
artifact directories) goes through this module:

* **Files** are written into an *anonymous* file in the destination directory
  (``O_TMPFILE``: it has no name, so a process killed with ``kill -9`` leaves nothing
  behind) and linked under their final name only when complete. Where ``O_TMPFILE`` is
  not available (non-Linux, some filesystems) a hidden temporary name is used instead.
* **Directories** are filled under a hidden temporary name and swapped into place with
  ``renameat2(RENAME_EXCHANGE)``, so an earlier artifact at that path stays usable until
  the new one replaces it in one step.
* **Temporary names** are ``.<dest name>.<pid>.<token>.tmp``. They are removed on every
  exit path Python sees (exceptions, ``SIGINT``, and ``SIGTERM``/``SIGHUP`` once the CLI
  turns them into exceptions); what a ``kill -9`` leaves (a directory being filled, or a
  name held for a few system calls) is removed by the next write to the same destination,
  once the process that made it is gone (:func:`remove_stale_temps`).
* The few system calls that switch names run with ``SIGINT``/``SIGTERM``/``SIGHUP`` held
  back (:func:`deferred_signals`), so Ctrl-C cannot land between two of them.
* **Permissions** follow the umask, as for any file a program creates (an existing
  destination file keeps its mode).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import shutil
import signal
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "AtomicFile",
    "atomic_directory",
    "copy_file",
    "deferred_signals",
    "remove_stale_temps",
    "stale_temps",
    "temp_path",
    "umask",
    "write_all",
    "write_bytes_atomic",
    "write_directory_atomic",
]

#: Signals held back while names are switched (the CLI turns TERM and HUP into exceptions).
_HELD_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)


def umask() -> int:
    """The process's umask, read without changing it where ``/proc`` allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:  # pragma: no cover - no /proc
        pass
    mask = os.umask(0o022)  # pragma: no cover - the classic dance (not thread-safe)
    os.umask(mask)  # pragma: no cover
    return mask  # pragma: no cover


def temp_path(dest: Path, tag: str = "") -> Path:
    """A hidden temporary name beside ``dest`` that :func:`remove_stale_temps` recognizes."""
    return dest.parent / f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}{tag}.tmp"


def _temp_owner(name: str, dest_name: str) -> int | None:
    """The pid in a temporary name made by :func:`temp_path` for ``dest_name``, else None."""
    prefix = f".{dest_name}."
    if not (name.startswith(prefix) and name.endswith(".tmp")):
        return None
    parts = name[len(prefix) : -len(".tmp")].split(".")
    if len(parts) < 2 or not parts[0].isdigit() or len(parts[1]) != 8:
        return None
    return int(parts[0])


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temps(dest: Path) -> list[Path]:
    """Temporary files/directories for ``dest`` whose process no longer runs."""
    try:
        entries = list(os.scandir(dest.parent))
    except OSError:
        return []
    return [Path(e.path) for e in entries if (pid := _temp_owner(e.name, dest.name)) is not None and not _alive(pid)]


def remove_stale_temps(dest: Path, keep: Iterable[Path] = ()) -> list[Path]:
    """Remove :func:`stale_temps` of ``dest``, except those in ``keep`` (still referred to).

    Returns:
        The paths removed.
    """
    keep = {Path(p).name for p in keep}
    removed = []
    for path in stale_temps(dest):
        if path.name in keep:
            continue
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP back for the duration of the block, then deliver them.

    Only the main thread can change signal handlers; elsewhere the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum, frame):
        received.append(signum)

    previous = {}
    try:
        for sig in _HELD_SIGNALS:
            previous[sig] = signal.signal(sig, hold)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(received):
            signal.raise_signal(sig)


def _mode_for(dest: Path) -> int:
    """The mode a new file at ``dest`` gets: an existing file's, else 0o666 less the umask."""
    try:
        return os.stat(dest).st_mode & 0o7777
    except OSError:
        return 0o666 & ~umask()


class AtomicFile:
    """A file that appears at ``dest`` complete, or not at all.

    Use as a context manager; write to :attr:`file`; call :meth:`commit` to link it under
    its final name. Leaving the block without committing discards it.

    Example::

        with AtomicFile(Path("out.onnx")) as f:
            write_all(f.fd, data)
            f.commit()

    Args:
        dest: the final path.
        mode: its permission bits (default: an existing file's, else 0o666 less the umask).
    """

    def __init__(self, dest: Path, mode: int | None = None):
        self.dest = Path(dest)
        self.mode = mode
        self._named: Path | None = None
        parent = self.dest.parent
        try:
            fd = os.open(parent, os.O_TMPFILE | os.O_RDWR, 0o666)
        except (AttributeError, OSError):
            self._named = temp_path(self.dest)
            fd = os.open(self._named, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o666)
        #: the file, unbuffered (write with :func:`write_all` or its ``write``)
        self.file: BinaryIO = os.fdopen(fd, "w+b", buffering=0)
        self.committed = False

    @property
    def fd(self) -> int:
        return self.file.fileno()

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    def link(self, dest: Path | None = None) -> None:
        """Give the finished file the name ``dest`` (default: the destination), replacing what is there.

        Call :meth:`sync` first. With an anonymous file a second call adds another name
        (a hard link); with a named temporary file it moves the name.
        """
        dest = Path(dest) if dest is not None else self.dest
        if self._named is not None:
            os.replace(self._named, dest)
            self._named = dest if dest != self.dest else None
            return
        try:
            self._link_anonymous(dest)
            return
        except FileExistsError:
            pass
        tmp = temp_path(dest)
        self._link_anonymous(tmp)
        try:
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _link_anonymous(self, dest: Path) -> None:
        # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N names an O_TMPFILE file (open(2)).
        # CPython's os.link calls plain link(2) unless a dir fd is given, and link(2) would
        # try to link the /proc symlink itself (EXDEV): hence the directory descriptor.
        dir_fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.link(f"/proc/self/fd/{self.file.fileno()}", dest.name, dst_dir_fd=dir_fd, follow_symlinks=True)
        finally:
            os.close(dir_fd)

    def sync(self) -> None:
        """Flush to disk and set the permissions the final file will have."""
        os.fchmod(self.file.fileno(), self.mode if self.mode is not None else _mode_for(self.dest))
        os.fsync(self.file.fileno())

    def commit(self) -> None:
        """Flush, sync and link the file at its destination (replacing an earlier file)."""
        self.sync()
        with deferred_signals():
            self.link()
            self.committed = True
        self.file.close()

    def discard(self) -> None:
        """Close the file; an uncommitted named temporary file is removed."""
        if not self.file.closed:
            self.file.close()
        if not self.committed and self._named is not None:
            with contextlib.suppress(OSError), deferred_signals():
                os.unlink(self._named)
            self._named = None


def write_bytes_atomic(dest: str | os.PathLike, data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``dest`` whole or not at all (see :class:`AtomicFile`)."""
    dest = Path(dest)
    remove_stale_temps(dest)
    with AtomicFile(dest) as f:
        write_all(f.fd, data)
        f.commit()
    return dest


def write_all(fd: int, data) -> None:
    """Write every byte of ``data`` (any buffer) to the file descriptor ``fd``."""
    view = memoryview(data).cast("B")
    while view.nbytes:
        n = os.write(fd, view[: 1 << 30])
        view = view[n:]


def copy_file(src_fd: int, dst_fd: int) -> None:
    """Copy all of ``src_fd`` (from offset 0) to ``dst_fd`` at its position, in the kernel where it can.

    ``copy_file_range`` shares the blocks on filesystems that support it (XFS, Btrfs) and copies
    without a round trip through user space elsewhere; a plain read/write loop is the fallback.
    """
    size = os.fstat(src_fd).st_size
    offset = 0
    try:
        while offset < size:
            n = os.copy_file_range(src_fd, dst_fd, size - offset, offset_src=offset)
            if n == 0:
                break
            offset += n
    except (AttributeError, OSError) as e:
        if isinstance(e, OSError) and e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while offset < size:
        chunk = os.pread(src_fd, min(16 << 20, size - offset), offset)
        if not chunk:
            break
        write_all(dst_fd, chunk)
        offset += len(chunk)
    if offset != size:
        raise OSError(errno.EIO, f"copied {offset} of {size} bytes")


# ------------------------------------------------------------------------- directories

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def write_directory_atomic(dest: str | os.PathLike, sources: Iterable[Path]) -> Path:
    """Put copies of the files ``sources`` into a new directory that replaces ``dest`` in one step.

    The copies are written first into anonymous files beside ``dest``; the hidden temporary
    directory exists only for the few system calls that link them into it and swap it in, so
    an interruption at any other moment leaves nothing in ``dest``'s directory. Build the
    sources somewhere temporary (e.g. ``tempfile.TemporaryDirectory``).
    """
    dest = Path(dest)
    files = []
    try:
        for source in sources:
            mode = os.stat(source).st_mode & 0o777 & ~umask()
            f = AtomicFile(dest.parent / source.name, mode=mode)
            files.append(f)
            with open(source, "rb") as src:
                shutil.copyfileobj(src, f.file, 16 << 20)
            f.sync()
        with atomic_directory(dest) as tmp:
            for f in files:
                f.link(tmp / f.dest.name)
                f.committed = True
    finally:
        for f in files:
            f.discard()
    return dest


@contextlib.contextmanager
def atomic_directory(dest: str | os.PathLike) -> Iterator[Path]:
    """Fill a temporary directory, then swap it into place at ``dest`` in one step.

    Yields the temporary directory. An existing ``dest`` stays as it is until the swap
    and is removed after it; on any exception the temporary directory is removed and
    ``dest`` is untouched.
    """
    dest = Path(dest)
    remove_stale_temps(dest)
    tmp = temp_path(dest)
    held = []
    try:
        os.mkdir(tmp, 0o777)  # the umask applies, as for any directory a program makes
        yield tmp
        # the earlier directory's files stay open until it is removed: unlinking them then
        # frees no blocks (milliseconds for a large library) while it sits under a temporary name
        held = _open_files(dest)
        with deferred_signals():
            if not dest.exists():
                os.rename(tmp, dest)
            elif _exchange(tmp, dest):
                pass  # tmp now holds the old directory
            else:  # pragma: no cover - kernels/filesystems without RENAME_EXCHANGE
                aside = temp_path(dest, ".old")
                os.rename(dest, aside)
                os.rename(tmp, dest)
                tmp = aside
    finally:  # a signal must not cut the removal short
        with deferred_signals():
            shutil.rmtree(tmp, ignore_errors=True)
        for fd in held:
            os.close(fd)


def _open_files(directory: Path) -> list[int]:
    """Read-only descriptors of the regular files directly in ``directory`` (none if it is absent)."""
    fds = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    fds.append(os.open(entry.path, os.O_RDONLY))
    return fds
