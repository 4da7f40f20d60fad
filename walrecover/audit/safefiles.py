"""Files walrecover writes beside the user's: created exclusively, never through a symlink.

The audit is built in work files next to its final place (``PATH.parts/``, ``PATH.partial``).
Whoever can write to that directory could have put a symlink, a file or a directory of their
own under one of those names, so every work file is created with ``O_CREAT | O_EXCL |
O_NOFOLLOW`` (it fails if anything, even a dangling link, is there), every check uses ``lstat``,
and removal only ever unlinks regular files whose names walrecover gives its own files and
removes directories only when they are empty: whatever walrecover did not write stays.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def lstat(path: Path) -> os.stat_result | None:
    """``path``'s own status (a symlink is not followed), or None if nothing is there."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def is_symlink(info: os.stat_result | None) -> bool:
    return info is not None and stat.S_ISLNK(info.st_mode)


def is_file(info: os.stat_result | None) -> bool:
    """A regular file itself, not a link to one."""
    return info is not None and stat.S_ISREG(info.st_mode)


def is_dir(info: os.stat_result | None) -> bool:
    """A directory itself, not a link to one."""
    return info is not None and stat.S_ISDIR(info.st_mode)


def create(path: Path) -> BinaryIO:
    """A new file at ``path`` for writing; fails if anything (even a dangling link) is there."""
    fd = os.open(path, _CREATE, 0o644)
    return os.fdopen(fd, "wb")


def write_new(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file at ``path`` (exclusively) and flush it to disk."""
    with create(path) as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def remove_file(path: Path) -> bool:
    """Unlink ``path`` if it is a regular file (never a link's target, never a directory)."""
    if not is_file(lstat(path)):
        return False
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return True


def remove_dir_if_empty(path: Path) -> bool:
    """Remove the directory ``path`` if it is a real, empty directory."""
    if not is_dir(lstat(path)):
        return False
    try:
        path.rmdir()
    except OSError:
        return False
    return True


def remove_own_files(directory: Path, patterns: Iterable[re.Pattern[str]]) -> list[str]:
    """Unlink the regular files directly in ``directory`` whose names match one of
    ``patterns``; return the names of the entries left (anything else is not walrecover's)."""
    compiled = tuple(patterns)
    left: list[str] = []
    if not is_dir(lstat(directory)):
        return left
    for entry in sorted(os.listdir(directory)):
        path = directory / entry
        if any(p.fullmatch(entry) for p in compiled) and remove_file(path):
            continue
        if lstat(path) is not None:
            left.append(entry)
    return left


def foreign_entries(directory: Path, patterns: Iterable[re.Pattern[str]]) -> list[str]:
    """Entries directly in ``directory`` that are not regular files named like ``patterns``."""
    compiled = tuple(patterns)
    return [
        entry
        for entry in sorted(os.listdir(directory))
        if not (any(p.fullmatch(entry) for p in compiled) and is_file(lstat(directory / entry)))
    ]


def fsync(path: Path) -> None:
    """Flush a file walrecover wrote to disk (opened without following a link)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
