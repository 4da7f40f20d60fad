"""The audit's files never harm what is around them (issue 8, B12).

``--audit`` used to replace any existing file (a previous audit, a notes file, the capture being
read), a ``PATH.parts`` symlink made walrecover delete the files of the directory it pointed to,
a ``PATH.partial`` symlink made it overwrite its target, a rerun with ``--audit-dir`` deleted
files it did not write, and ``--audit-dir .`` ended in a traceback. Each case here runs the real
command on the real server and checks the exit code, the one-line message, that the victim is
untouched and that nothing was built (the refusal comes before any row). The audit of an
unfinished recovery that a rerun resumes is walrecover's own and must keep working.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from audit_helpers import insert, stream
from click.testing import Result
from helpers import Database, cli, source_untouched, stderr_lines, stop_workload, table_exists

from walrecover.audit import safefiles
from walrecover.audit.format import DATASET_MANIFEST
from walrecover.audit.verify import verify_audit
from walrecover.audit.workspace import RUN_FILE
from walrecover.audit.writer import AuditWriter
from walrecover.errors import AuditError

VICTIM = b"the user's own bytes\n"


@pytest.fixture
def source(db: Database) -> Iterator[Database]:
    """A dropped table ``t`` in a wal2json slot ``cdc``. pg_walinspect proves that the truth's
    snapshot (a CREATE TABLE between t's changes) did not re-create t."""
    db.execute("CREATE EXTENSION pg_walinspect")
    stop_workload(db)
    yield db


def recover(db: Database, *args: str) -> Result:
    with source_untouched(db):
        return cli("recover", "-d", db.dsn, "--slot", "cdc", "--table", "public.t", *args)


def refused(result: Result, *fragments: str) -> str:
    """The run exited 1 with one line holding every fragment; returns the line."""
    assert result.exit_code == 1, (result.exit_code, result.stdout[-300:], result.stderr)
    (line,) = stderr_lines(result)
    assert line.startswith("walrecover: error: ")
    for fragment in fragments:
        assert fragment in line, line
    assert "Traceback" not in result.stderr
    return line


def tree(directory: Path) -> dict[str, bytes | str]:
    """Every entry under ``directory`` (links as their target), to prove it untouched."""
    found: dict[str, bytes | str] = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(root) / name
            key = str(path.relative_to(directory))
            if path.is_symlink():
                found[key] = f"-> {os.readlink(path)}"
            elif path.is_file():
                found[key] = path.read_bytes()
            else:
                found[key] = "dir"
    return found


# -- --audit onto a file that exists ---------------------------------------------------------------


@pytest.mark.parametrize("what", ["notes", "manifest"])
def test_audit_onto_an_existing_file_is_refused_without_force(
    source: Database, tmp_path: Path, what: str
) -> None:
    audit = tmp_path / "audit.parquet"
    victim = audit if what == "notes" else tmp_path / "audit.parquet.manifest.json"
    victim.write_bytes(VICTIM)

    result = recover(source, "--audit", str(audit))

    refused(result, f"--audit {audit}", "pass --force to replace it")
    assert victim.read_bytes() == VICTIM
    assert not table_exists(source, "t_recovered")
    assert sorted(p.name for p in tmp_path.iterdir()) == [victim.name]


def test_a_finished_audit_is_replaced_only_with_force(source: Database, tmp_path: Path) -> None:
    audit = tmp_path / "audit.parquet"
    assert recover(source, "--audit", str(audit)).exit_code == 0
    first = audit.read_bytes()
    rows = source.scalar("SELECT count(*) FROM t_recovered")

    again = recover(source, "--audit", str(audit), "--into", "public.other")
    refused(again, "already exists", "--force")
    assert audit.read_bytes() == first
    assert not table_exists(source, "other")

    forced = recover(source, "--audit", str(audit), "--force")
    assert forced.exit_code == 0, forced.stderr
    assert verify_audit(audit).ok
    assert source.scalar("SELECT count(*) FROM t_recovered") == rows
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "audit.parquet",
        "audit.parquet.manifest.json",
    ]


@pytest.mark.parametrize("force", [False, True])
def test_the_capture_being_read_is_never_the_audit(
    db: Database, tmp_path: Path, force: bool
) -> None:
    capture = tmp_path / "capture.json"
    capture.write_bytes(VICTIM)
    result = cli(
        "recover",
        "--from-file",
        str(capture),
        "--plugin",
        "wal2json",
        "--target",
        db.dsn,
        "--table",
        "public.t",
        "--audit",
        str(capture),
        *(["--force"] if force else []),
    )
    refused(result, "is the capture file being read (--from-file)")
    assert capture.read_bytes() == VICTIM
    assert not table_exists(db, "t_recovered")


# -- work files that are links or someone else's ---------------------------------------------------


def test_a_parts_symlink_to_a_directory_is_refused_and_its_files_kept(
    source: Database, tmp_path: Path
) -> None:
    victims = tmp_path / "precious"
    victims.mkdir()
    (victims / "ledger.csv").write_bytes(VICTIM)
    (victims / "part-000000-0000000001000000.parquet").write_bytes(VICTIM)
    audit = tmp_path / "audit.parquet"
    (tmp_path / "audit.parquet.parts").symlink_to(victims, target_is_directory=True)
    before = tree(tmp_path)

    result = recover(source, "--audit", str(audit))

    refused(result, "audit.parquet.parts", "symbolic link", "move it away")
    assert tree(tmp_path) == before
    assert not table_exists(source, "t_recovered")


def test_a_parts_directory_with_files_walrecover_did_not_write_is_refused(
    source: Database, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.parquet"
    parts = tmp_path / "audit.parquet.parts"
    parts.mkdir()
    (parts / "notes.txt").write_bytes(VICTIM)
    before = tree(tmp_path)

    refused(recover(source, "--audit", str(audit), "--force"), "notes.txt", "did not write")
    assert tree(tmp_path) == before
    assert not table_exists(source, "t_recovered")


def test_a_run_killed_while_writing_its_first_record_does_not_block_the_rerun(
    source: Database, tmp_path: Path
) -> None:
    """A SIGKILL between writing the run record's temporary file and renaming it leaves
    ``PATH.parts`` holding only that file. The fault injection found the rerun refusing it as
    files walrecover did not write (exit 1, the recovery never finished); it is the killed run's
    and the rerun replaces it. The test failed before the fix."""
    audit = tmp_path / "audit.parquet"
    parts = tmp_path / "audit.parquet.parts"
    parts.mkdir()
    (parts / (RUN_FILE + ".tmp")).write_bytes(b'{"format": 1, "aud')

    result = recover(source, "--audit", str(audit))

    assert result.exit_code == 0, result.stderr
    assert verify_audit(audit).ok
    assert not parts.exists()


@pytest.mark.parametrize("layout", ["file", "dir"])
def test_a_partial_symlink_never_overwrites_its_target(
    source: Database, tmp_path: Path, layout: str
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    audit = tmp_path / "audit"
    (tmp_path / "audit.partial").symlink_to(victim)
    before = tree(tmp_path)
    option = "--audit" if layout == "file" else "--audit-dir"

    refused(recover(source, option, str(audit), "--force"), "audit.partial", "move it away")
    assert tree(tmp_path) == before
    assert not table_exists(source, "t_recovered")


def test_a_link_planted_among_the_parts_is_refused(tmp_path: Path) -> None:
    """A part file name inside walrecover's own parts directory, as a link: refused, kept."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    path = tmp_path / "audit.parquet"
    applied = stream([insert(1, "1.00")])
    writer = AuditWriter(path, {"tool": "test"})
    writer.start(None, resuming=False)
    writer.write(applied)
    writer.commit(applied[-1].commit_lsn)
    writer.abort()  # killed: the parts stay for a resume
    (tmp_path / "audit.parquet.parts" / "open-000001.tmp").symlink_to(victim)

    with pytest.raises(AuditError, match="did not write"):
        AuditWriter(path, {"tool": "test"})
    assert victim.read_bytes() == VICTIM


# -- --audit-dir -----------------------------------------------------------------------------------


def test_a_rerun_with_audit_dir_keeps_files_walrecover_did_not_write(
    source: Database, tmp_path: Path
) -> None:
    directory = tmp_path / "audit"
    assert recover(source, "--audit-dir", str(directory)).exit_code == 0
    (directory / "notes.txt").write_bytes(VICTIM)
    partition = next(directory.glob("commit_date=*"))
    (partition / "mine.parquet").write_bytes(VICTIM)
    before = tree(tmp_path)
    rows = source.scalar("SELECT count(*) FROM t_recovered")

    result = recover(source, "--audit-dir", str(directory), "--force")

    line = refused(result, "which walrecover did not write", "move it away")
    assert "notes.txt" in line and "mine.parquet" in line
    assert tree(tmp_path) == before
    # Refused before anything: --force did not get to drop the rebuilt table.
    assert source.scalar("SELECT count(*) FROM t_recovered") == rows

    (directory / "notes.txt").unlink()
    (partition / "mine.parquet").unlink()
    # The same command again: the recovery and its audit are complete, nothing is touched.
    kept = tree(tmp_path)
    again = recover(source, "--audit-dir", str(directory))
    assert again.exit_code == 0, again.stderr
    assert again.stdout.startswith("Already complete")
    assert tree(tmp_path) == kept
    forced = recover(source, "--audit-dir", str(directory), "--force")
    assert forced.exit_code == 0, forced.stderr
    assert verify_audit(directory).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit"]


def test_audit_dir_into_a_directory_that_is_not_an_audit_is_refused(
    source: Database, tmp_path: Path
) -> None:
    directory = tmp_path / "work"
    directory.mkdir()
    (directory / "notes.txt").write_bytes(VICTIM)
    (directory / DATASET_MANIFEST).write_bytes(VICTIM)  # not walrecover's
    before = tree(tmp_path)

    refused(recover(source, "--audit-dir", str(directory), "--force"), "did not write")
    assert tree(tmp_path) == before
    assert not table_exists(source, "t_recovered")


@pytest.mark.parametrize("where", [".", ".."])
def test_audit_dir_dot_is_a_one_line_error(
    source: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    cwd = tmp_path / "here"
    cwd.mkdir()
    (cwd / "notes.txt").write_bytes(VICTIM)
    monkeypatch.chdir(cwd)
    before = tree(tmp_path)

    refused(recover(source, "--audit-dir", where), "is the current directory", "./audit")
    assert tree(tmp_path) == before
    assert not table_exists(source, "t_recovered")


# -- walrecover's own unfinished audit keeps working -----------------------------------------------


def _killed_while_publishing(path: Path, *, partitioned: bool = False) -> AuditWriter:
    """A run that sealed its parts and had begun publishing (PATH.partial written) when it
    was killed."""
    applied = stream([insert(1, "1.00"), insert(2, "2.00")])
    writer = AuditWriter(path, {"tool": "test", "into": "public.x"}, partitioned=partitioned)
    writer.start(None, resuming=False)
    writer.write(applied)
    writer.commit(applied[-1].commit_lsn)
    writer.dest.write_run(publishing=True)
    if partitioned:
        (path.with_name(path.name + ".partial") / "commit_date=2024-05-01").mkdir(parents=True)
        (
            path.with_name(path.name + ".partial")
            / "commit_date=2024-05-01"
            / "part-000000.parquet"
        ).write_bytes(b"half")
    else:
        path.with_name(path.name + ".partial").write_bytes(b"half written")
    writer.abort()
    return writer


@pytest.mark.parametrize("partitioned", [False, True])
def test_a_rerun_publishes_what_a_run_killed_while_publishing_left(
    tmp_path: Path, partitioned: bool
) -> None:
    path = tmp_path / "audit"
    first = _killed_while_publishing(path, partitioned=partitioned)
    lsn = first.unpublished()
    assert lsn is not None

    rerun = AuditWriter(path, {"tool": "test", "into": "public.x"}, partitioned=partitioned)
    rerun.start(lsn, resuming=True)
    assert rerun.close() == 2
    assert verify_audit(path).ok
    expected = ["audit"] if partitioned else ["audit", "audit.manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == expected


def test_another_recoverys_unfinished_audit_is_not_discarded_without_force(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit"
    _killed_while_publishing(path)
    before = tree(tmp_path)

    with pytest.raises(AuditError, match=r"unfinished audit of the recovery into public\.x"):
        AuditWriter(path, {"tool": "test", "into": "public.y"})
    assert tree(tmp_path) == before

    # With --force it is discarded: walrecover's own work files, and nothing else.
    (tmp_path / "notes.txt").write_bytes(VICTIM)
    writer = AuditWriter(path, {"tool": "test", "into": "public.y"}, force=True)
    writer.start(None, resuming=False)
    writer.write(stream([insert(7, "7.00")]))
    writer.commit(stream([insert(7, "7.00")])[-1].commit_lsn)
    assert writer.close() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "audit",
        "audit.manifest.json",
        "notes.txt",
    ]
    assert (tmp_path / "notes.txt").read_bytes() == VICTIM
    assert not (tmp_path / "audit.parts" / RUN_FILE).exists()


def test_rehearse_refuses_an_existing_audit_before_starting(tmp_path: Path) -> None:
    audit = tmp_path / "notes.txt"
    audit.write_bytes(VICTIM)
    result = cli("rehearse", "--transactions", "10", "--audit", str(audit))
    refused(result, f"--audit {audit} already exists")
    assert audit.read_bytes() == VICTIM


def test_a_run_killed_while_deleting_its_parts_keeps_the_whole_audit(
    source: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after publishing, while deleting PATH.parts: the rerun published the parts that
    were left again, replacing the whole audit with part of it (seen once in the SIGKILL fault
    test: 1,973 of 5,648 rows). The test failed before the fix."""
    reference = tmp_path / "reference.parquet"
    args = ("--batch-size", "1")
    assert recover(source, "--audit", str(reference), "--into", "public.ref", *args).exit_code == 0
    audit = tmp_path / "audit.parquet"
    remove = safefiles.remove_own_files

    def killed(directory: Path, patterns: object) -> list[str]:
        if directory.name == "audit.parquet.parts":
            next(p for p in sorted(directory.iterdir()) if p.name.startswith("part-")).unlink()
            raise KeyboardInterrupt
        return remove(directory, patterns)  # type: ignore[arg-type]

    monkeypatch.setattr(safefiles, "remove_own_files", killed)
    assert recover(source, "--audit", str(audit), *args).exit_code != 0
    monkeypatch.undo()

    again = recover(source, "--audit", str(audit), *args)

    assert again.exit_code == 0, again.stderr
    assert not (tmp_path / "audit.parquet.parts").exists()
    assert verify_audit(audit).ok
    assert pq.read_metadata(audit).num_rows == pq.read_metadata(reference).num_rows > 1
