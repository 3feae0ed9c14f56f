"""Atomic file writes: content appears at the target path whole, or not at all.

Every file writer of the project (exports, reports, images, engines, video outputs) goes
through here, so an interrupted or failing write never leaves a half-written file behind
(folders — a Triton model repository, a web site — are staged next to the target and renamed
whole). A process killed
outright (``kill -9``, power loss) cannot clean up, so temp files carry a findable name,
``.<target name>.bgm-deploy-tmp-<pid>.part``, and the next write of the same target
removes those whose process is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

# Files get the usual 0666 & ~umask permissions (mkstemp's own are 0600).
_UMASK = os.umask(0)
os.umask(_UMASK)
TEMP_MARKER = ".bgm-deploy-tmp-"


def temp_name(target: str | Path, pid: int, suffix: str = ".part") -> str:
    """The file name of ``pid``'s temp file for ``target`` (same directory)."""
    return f".{Path(target).name}{TEMP_MARKER}{pid}{suffix}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# Directories already scanned by this process: {directory: temp-file names seen then}. One
# listing per directory and process keeps writing many images into one folder linear; files
# left by processes that die later are found by the next process.
_SCANNED: dict[str, list[str]] = {}


def _temp_names(directory: Path) -> list[str]:
    key = str(directory.absolute())
    if key not in _SCANNED:
        try:
            _SCANNED[key] = [name for name in os.listdir(directory) if TEMP_MARKER in name]
        except OSError:
            _SCANNED[key] = []
    return _SCANNED[key]


def stale_temp_files(target: str | Path, names: list[str] | None = None) -> list[Path]:
    """Temp files of ``target`` left by processes that no longer run (sorted by name).

    Args:
        names: file names to consider (default: a fresh listing of the target's directory).
    """
    target = Path(target)
    pattern = re.compile(re.escape(f".{target.name}{TEMP_MARKER}") + r"(\d+)(?:-\d+)?((?:\.[A-Za-z0-9]+)+)$")
    if names is None:
        try:
            names = os.listdir(target.parent)
        except OSError:
            return []
    found = []
    for name in names:
        match = pattern.fullmatch(name)
        path = target.parent / name
        if match and not _pid_alive(int(match.group(1))) and path.is_file():
            found.append(path)
    return sorted(found)


def remove_stale_temp_files(target: str | Path) -> list[Path]:
    """Deletes the stale temp files of ``target`` (see :func:`stale_temp_files`); returns them."""
    target = Path(target)
    removed = []
    for path in stale_temp_files(target, _temp_names(target.parent)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def new_temp_file(target: str | Path, suffix: str = ".part") -> Path:
    """Creates an empty, uniquely named temp file next to ``target`` (0666 & ~umask).

    Stale temp files of the same target are removed first. Same directory as the target,
    so the final :func:`os.replace` is atomic.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(target)
    for attempt in range(1000):
        name = temp_name(target, os.getpid(), suffix if attempt == 0 else f"-{attempt}{suffix}")
        path = target.parent / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_UMASK)
        except FileExistsError:
            continue  # another write of the same target in this process
        os.close(fd)
        return path
    raise FileExistsError(f"no free temp file name for {target}")


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file handle whose content appears at ``path`` only if the block succeeds."""
    path = Path(path)
    temp = new_temp_file(path)
    try:
        with open(temp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        # Interrupted or failed: leave no partial file behind, then re-raise.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically; returns the path."""
    with atomic_open(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Writes UTF-8 ``text`` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def replace_folder(staging: str | Path, output: str | Path) -> Path:
    """Puts the finished folder ``staging`` at ``output`` (same file system), replacing what is
    there (a folder or a file, checked by the caller): the old entry is moved aside under a
    findable temp name, the new one renamed into place, then the old one removed; a failure in
    between puts the old one back, so nothing is lost."""
    staging, output = Path(staging), Path(output)
    old = None
    if output.exists() or output.is_symlink():
        old = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}{TEMP_MARKER}{os.getpid()}-old-"))
        os.rmdir(old)
        os.replace(output, old)
    try:
        os.replace(staging, output)
    except BaseException:
        if old is not None:
            os.replace(old, output)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    return output
