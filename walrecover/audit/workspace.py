"""Where an audit goes, and what of it is walrecover's: PATH, its work files, their checks.

The audit never replaces anything without ``force`` except the audit of the unfinished recovery
it resumes (its bookkeeping, ``PATH.parts/walrecover-run.json``, names the target it belongs to
and whether publishing began), never writes over the capture it reads, creates every work file
exclusively without following a symlink, and deletes only files it wrote
(:mod:`walrecover.audit.safefiles`). :class:`Destination` makes every refusal when the writer is
made, before any row.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from ..errors import AuditError
from ..stream.lsn import Lsn
from . import safefiles
from .format import DATASET_MANIFEST, manifest_path

#: The bookkeeping file in ``PATH.parts``: which recovery the parts belong to, and whether
#: publishing began (then ``PATH.partial`` and the other work files beside PATH are its own).
RUN_FILE: Final = "walrecover-run.json"
RUN_FORMAT: Final = "walrecover-audit-run/1"
#: The names walrecover gives the files in ``PATH.parts``.
PART_FILES: Final = (
    re.compile(r"part-\d{6,}-[0-9A-F]{16}\.parquet"),
    re.compile(r"open-\d{6,}\.tmp"),
    re.compile(r"outcomes\.sqlite"),  # before walrecover worked outcomes out columnar
    re.compile(r"outcomes(-\d{4,}\.arrow|\.bin)"),
    re.compile(re.escape(RUN_FILE) + r"(\.tmp)?"),
)
#: The names walrecover gives the files and directories of a partitioned audit.
PARTITION_DIR: Final = re.compile(r"commit_date=[0-9A-Za-z_-]+")
DATASET_PART: Final = re.compile(r"part-\d{6,}\.parquet")
DATASET_FILES: Final = (re.compile(r"_manifest\.json(\.tmp)?"),)


class Destination:
    """The audit's PATH, the work files beside it, and what an earlier run left there.

    ``PATH.partial`` is built and renamed into place, so what is at PATH is always whole;
    ``PATH.parts`` holds the sealed parts and the run's bookkeeping; a replaced partitioned
    audit waits in ``PATH.old`` while the new one takes its place.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        owner: Mapping[str, Any],
        *,
        partitioned: bool,
        force: bool,
    ) -> None:
        self.partitioned = partitioned
        self.option = "--audit-dir" if partitioned else "--audit"
        self.path = audit_path(path, self.option, partitioned)
        self.force = force
        #: Which recovery the parts belong to (the bookkeeping compares it on a rerun).
        self.owner = dict(owner)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.parts = self.path.with_name(self.path.name + ".parts")
        self.manifest = manifest_path(self.path, partitioned)
        #: Where a replaced partitioned audit is moved while the new one takes its place.
        self.old = self.path.with_name(self.path.name + ".old")
        #: The bookkeeping of an earlier run found in ``PATH.parts`` (None: no earlier run).
        self.run: dict[str, Any] | None = None
        #: Work files beside PATH left by the run this one resumes (removed before publishing).
        self.stale: list[Path] = []
        #: PATH exists and may be replaced only because the run this one resumes replaced it.
        self.replaces_resumed = False

    def check(self, protect: list[Path]) -> None:
        """Refuse, before anything is written, every path the audit must not touch."""
        path, option = self.path, self.option
        if not safefiles.is_dir(safefiles.lstat(path.parent)):
            raise AuditError(
                f"the directory of {option} {path} does not exist: create it first", path=path
            )
        for source in protect:
            if same_file(source, path) or (
                not self.partitioned
                and (same_file(source, self.manifest) or same_file(source, self.partial))
            ):
                raise AuditError(
                    f"{option} {path} is the capture file being read (--from-file): give the "
                    "audit another path",
                    path=path,
                )
            if self.partitioned and inside(source, path):
                raise AuditError(
                    f"{option} {path} holds the capture file being read ({source}): give the "
                    "audit a directory of its own",
                    path=path,
                )
        ours = self._check_parts()
        # Work files beside PATH: the run this one resumes may have left them while publishing;
        # anything else there is not walrecover's to remove or overwrite.
        beside = [(self.partial, self.partitioned)]  # (path, a directory)
        if self.partitioned:
            beside.append((self.old, True))
        else:
            beside.append((self.manifest.with_name(self.manifest.name + ".tmp"), False))
        for work, directory in beside:
            info = safefiles.lstat(work)
            if info is None:
                continue
            kind_ok = safefiles.is_dir(info) if directory else safefiles.is_file(info)
            if not (ours and kind_ok):
                raise AuditError(
                    f"{work} exists and walrecover did not leave it there for this recovery: "
                    "move it away (walrecover works under that name and will not overwrite, "
                    "follow or delete what it did not write)",
                    path=path,
                )
            self.stale.append(work)
        self._check_existing(ours)

    def _check_parts(self) -> bool:
        """Check ``PATH.parts``; True if it is the bookkeeping of an earlier run that had begun
        publishing (its work files beside PATH are then its own), a run of this same recovery
        or one that ``force`` discards."""
        parts = self.parts
        info = safefiles.lstat(parts)
        if info is None:
            return False
        if safefiles.is_symlink(info) or not safefiles.is_dir(info):
            raise AuditError(
                f"{parts} exists and is not a directory walrecover made (a symbolic link or a "
                "file): walrecover keeps the audit's work files there and will not follow or "
                "replace it; move it away",
                path=self.path,
            )
        foreign = safefiles.foreign_entries(parts, PART_FILES)
        if not foreign and clear_published(parts):
            return False
        run = read_run(parts / RUN_FILE)
        if run is None and os.listdir(parts) == [RUN_FILE + ".tmp"]:
            # A run killed while writing its first record: nothing else of it was made (parts
            # come after the record), and writing this run's record replaces the file.
            return False
        if foreign or (run is None and os.listdir(parts)):
            named = ", ".join(foreign[:3]) if foreign else "files without walrecover's record"
            raise AuditError(
                f"{parts} holds files walrecover did not write ({named}): move them away; "
                "walrecover deletes only its own work files",
                path=self.path,
            )
        if run is None:
            return False
        if run.get("owner") != self.owner and not self.force:
            owner = run.get("owner") or {}
            raise AuditError(
                f"{parts} holds the unfinished audit of the recovery into {owner.get('into')} "
                f"on {owner.get('target')}: rerun that recovery to finish it, pass --force to "
                f"discard it, or give another {self.option}",
                path=self.path,
            )
        self.run = run
        return bool(run.get("publishing"))

    def _check_existing(self, ours: bool) -> None:
        """PATH itself: replaced only with ``force``, or when the resumed run replaced it."""
        existing = self._existing_dataset() if self.partitioned else self._existing_file()
        if existing is None:
            return
        if ours:
            self.replaces_resumed = True
            return
        if not self.force:
            raise AuditError(
                f"{self.option} {self.path} {existing}: give another path, or pass --force to "
                "replace it",
                path=self.path,
            )

    def _existing_dataset(self) -> str | None:
        """What is at a partitioned audit's PATH (None: nothing to keep); refuse what is not
        walrecover's to replace."""
        path, option = self.path, self.option
        info = safefiles.lstat(path)
        if info is None:
            return None
        if safefiles.is_symlink(info):
            raise AuditError(
                f"{option} {path} is a symbolic link: give the directory itself", path=path
            )
        if not safefiles.is_dir(info):
            raise AuditError(f"{option} {path} is a file: give a directory", path=path)
        if not os.listdir(path):
            return None  # an empty directory: nothing to keep
        if not safefiles.is_file(safefiles.lstat(path / DATASET_MANIFEST)):
            raise AuditError(
                f"{option} {path} is not empty and holds no walrecover audit: give a new "
                "or empty directory",
                path=path,
            )
        foreign = foreign_in_dataset(path)
        if foreign:
            raise AuditError(
                f"{option} {path} holds {', '.join(foreign[:3])}, which walrecover did not "
                "write: move it away or give another directory (walrecover replaces only "
                "the audit it wrote)",
                path=path,
            )
        return "holds a walrecover audit"

    def _existing_file(self) -> str | None:
        """What is at a single-file audit's PATH or its manifest (None: nothing)."""
        path, option = self.path, self.option
        info = safefiles.lstat(path)
        if safefiles.is_dir(info):
            raise AuditError(f"{option} {path} is a directory: give a file path", path=path)
        manifest = safefiles.lstat(self.manifest)
        if info is None and manifest is None:
            return None
        if safefiles.is_dir(manifest):
            raise AuditError(
                f"{self.manifest} (where the audit's manifest goes) is a directory: "
                f"give another {option}",
                path=path,
            )
        return "already exists" if info is not None else "has a manifest beside it"

    # -- lifecycle driven by replay ----------------------------------------------------------

    def write_run(self, *, publishing: bool, published: bool = False) -> None:
        """Record in ``PATH.parts`` whose parts these are, whether publishing began, and
        whether it ended (the parts left are then only waiting to be deleted)."""
        content = {
            "format": RUN_FORMAT,
            "audit": str(Path(os.path.abspath(self.path))),
            "owner": self.owner,
            "publishing": publishing,
            "published": published,
        }
        run = self.parts / RUN_FILE
        tmp = run.with_name(RUN_FILE + ".tmp")
        safefiles.remove_file(tmp)
        try:
            safefiles.write_new(tmp, (json.dumps(content) + "\n").encode())
            os.replace(tmp, run)
        except OSError as exc:
            raise AuditError(f"cannot write {run}: {exc}", path=self.path) from None
        fsync_dir(self.parts)
        self.run = content


def part_lsn(part: Path) -> Lsn | None:
    if not (part.name.startswith("part-") and part.suffix == ".parquet"):
        return None
    try:
        return Lsn(int(part.stem.split("-")[2], 16))
    except (IndexError, ValueError):
        return None


def part_number(part: Path) -> int:
    return int(part.stem.split("-")[1])


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def audit_path(path: str | os.PathLike[str], option: str, partitioned: bool) -> Path:
    """The audit's path, refusing ``.``, ``..`` and ``/`` (names of no file of its own)."""
    given = Path(path)
    absolute = Path(os.path.abspath(given))
    if not absolute.name:
        raise AuditError(f"{option} {given} is the root directory: give a path", path=str(given))
    if partitioned:
        cwd = Path(os.path.abspath(Path.cwd()))
        if absolute == cwd or absolute in cwd.parents:
            raise AuditError(
                f"{option} {given} is the current directory (or holds it): walrecover builds "
                f"the audit beside its directory and moves it into place; give a new "
                f"directory, e.g. {option} ./audit",
                path=str(given),
            )
    return absolute if given.name in ("", ".", "..") else given


def same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def inside(path: Path, directory: Path) -> bool:
    resolved, root = Path(os.path.realpath(path)), Path(os.path.realpath(directory))
    return resolved == root or root in resolved.parents


def finish_published_cleanup(path: str | os.PathLike[str]) -> bool:
    """Remove what a run killed between publishing the audit at ``path`` and removing its
    work files left in ``PATH.parts`` (only walrecover's own files, only when their record says
    the audit was published); True if there was such a directory. A rerun that then finds the
    recovery complete does not get that far, so this runs first."""
    audit = Path(path)
    if audit.name in ("", ".", ".."):
        return False  # not an audit path: the audit's own checks say so
    parts = audit.with_name(audit.name + ".parts")
    info = safefiles.lstat(parts)
    if info is None or safefiles.is_symlink(info) or not safefiles.is_dir(info):
        return False
    if safefiles.foreign_entries(parts, PART_FILES):
        return False
    return clear_published(parts)


def clear_published(parts: Path) -> bool:
    """Delete what a run killed after publishing its audit left in ``PATH.parts`` (its run
    record says the audit was published); True if that is what the directory held."""
    run = read_run(parts / RUN_FILE)
    if run is None or not run.get("published"):
        return False
    if not safefiles.remove_own_files(parts, PART_FILES):
        safefiles.remove_dir_if_empty(parts)
    return True


def read_run(path: Path) -> dict[str, Any] | None:
    """The bookkeeping of an earlier run, or None if there is none walrecover wrote."""
    if not safefiles.is_file(safefiles.lstat(path)):
        return None
    try:
        with open(path, "rb") as handle:
            content = json.loads(handle.read(1 << 20))
    except (OSError, ValueError):
        return None
    if not isinstance(content, dict) or content.get("format") != RUN_FORMAT:
        return None
    return content


def foreign_in_dataset(root: Path) -> list[str]:
    """Entries of a partitioned audit that its manifest does not list as written by walrecover
    (or that are links, or named unlike anything walrecover writes)."""
    try:
        with open(root / DATASET_MANIFEST, "rb") as handle:
            listed = {str(f["path"]) for f in json.loads(handle.read()).get("files", [])}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return [DATASET_MANIFEST + " (not a walrecover manifest)"]
    foreign: list[str] = []
    for entry in sorted(os.listdir(root)):
        sub = root / entry
        if entry == DATASET_MANIFEST and safefiles.is_file(safefiles.lstat(sub)):
            continue
        if PARTITION_DIR.fullmatch(entry) and safefiles.is_dir(safefiles.lstat(sub)):
            for name in sorted(os.listdir(sub)):
                relative = f"{entry}/{name}"
                if not (
                    relative in listed
                    and DATASET_PART.fullmatch(name)
                    and safefiles.is_file(safefiles.lstat(sub / name))
                ):
                    foreign.append(relative)
            continue
        foreign.append(entry)
    return foreign


def remove_dataset(root: Path) -> None:
    """Remove what walrecover writes in a partitioned audit (part files, manifest), then its
    directories if that left them empty; anything else stays."""
    if not safefiles.is_dir(safefiles.lstat(root)):
        return
    for entry in sorted(os.listdir(root)):
        sub = root / entry
        if PARTITION_DIR.fullmatch(entry) and safefiles.is_dir(safefiles.lstat(sub)):
            safefiles.remove_own_files(sub, (DATASET_PART,))
            safefiles.remove_dir_if_empty(sub)
    safefiles.remove_own_files(root, DATASET_FILES)
    safefiles.remove_dir_if_empty(root)


def remove_work(path: Path) -> None:
    """Remove a work file or partial dataset walrecover left beside the audit."""
    if safefiles.is_dir(safefiles.lstat(path)):
        remove_dataset(path)
    else:
        safefiles.remove_file(path)


# -- reading -------------------------------------------------------------------------------------
