"""``walrecover audit verify``: a fresh audit passes; any edit, deletion or move fails, naming
the first bad row.

The pristine audit comes from a real recovery; each test copies it (with its manifest) and
tampers with the copy the way someone with pyarrow would: rewriting the file with the same
schema and metadata.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from audit_helpers import ledger_stream, write_audit
from helpers import Database, cli, drop_with_truth, recover_table, run_script, stderr_lines

import walrecover.audit.format
import walrecover.audit.outputs
import walrecover.audit.verify
from walrecover.audit.format import DATASET_MANIFEST, hash_rows, manifest_path
from walrecover.audit.reader import read_metadata
from walrecover.audit.verify import verify_audit
from walrecover.drill.cluster import Cluster
from walrecover.errors import AuditError

VERIFY_SLOT = "audit_verify_cdc"
ROWS = 12


@pytest.fixture(scope="module")
def pristine(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real audit of 12 row changes (inserts, corrections, a void) and its manifest."""
    name = "audit_verify"
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = Database(cluster, name)
    try:
        db.execute("CREATE TABLE t (id integer PRIMARY KEY, amount numeric(12,2), note text)")
        db.create_slot(VERIFY_SLOT)
        steps = [f"INSERT INTO t VALUES ({i}, {i}.25, 'payment {i}')" for i in range(1, 10)]
        steps += ["UPDATE t SET amount = 99.99 WHERE id = 2", "DELETE FROM t WHERE id = 3"]
        steps += ["UPDATE t SET note = 'x' WHERE id = 4"]
        run_script(db, steps)
        drop_with_truth(db)
        path = tmp_path_factory.mktemp("pristine") / "audit.parquet"
        recover_table(db, slot=VERIFY_SLOT, audit_path=path)
        assert pq.read_metadata(path).num_rows == ROWS
        yield path
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE database = %s AND NOT active",
                (name,),
            )
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def copy(pristine: Path, tmp_path: Path) -> Path:
    path = tmp_path / "audit.parquet"
    shutil.copy(pristine, path)
    shutil.copy(manifest_path(pristine), manifest_path(path))
    return path


def file_metadata(path: Path) -> dict[bytes, bytes]:
    """The file's key-value metadata (walrecover.*), to write it back unchanged."""
    raw = pq.ParquetFile(path).metadata.metadata or {}
    return {k: v for k, v in raw.items() if k != b"ARROW:schema"}


def rewrite(path: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    """Rewrite the file as a forger with pyarrow would: same schema, same metadata."""
    meta = file_metadata(path)
    table = pq.read_table(path)
    pq.write_table(change(table).replace_schema_metadata(meta), path)


def set_cell(table: pa.Table, column: str, row: int, value: object) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    index = table.schema.get_field_index(column)
    return table.set_column(
        index, table.schema.field(index), pa.array(values, table.column(column).type)
    )


def take(table: pa.Table, rows: list[int]) -> pa.Table:
    return table.take(pa.array(rows))


def rehash_row(table: pa.Table, row: int) -> pa.Table:
    """Fix the row's own hash after an edit (the chain still betrays it)."""
    hashes, _, _ = hash_rows(table.slice(row, 1), walrecover.audit.format.CHAIN_SEED)
    return set_cell(table, "row_hash", row, hashes[0])


def edit_text(table: pa.Table) -> pa.Table:
    values = json.loads(table.column("new_values")[3].as_py())
    values["amount"] = "4.26"
    return set_cell(table, "new_values", 3, json.dumps(values))


TAMPERING: dict[str, tuple[Callable[[pa.Table], pa.Table], int, str]] = {
    "edit-exact-text": (edit_text, 3, "row_hash does not match"),
    "edit-typed-value": (
        lambda t: set_cell(t, "new_amount", 3, pc.add(t.column("new_amount")[3], 1).as_py()),
        3,
        "column new_amount holds",
    ),
    "edit-outcome": (lambda t: set_cell(t, "outcome", 1, "applied"), 1, "row_hash does not match"),
    "delete-row": (lambda t: take(t, [r for r in range(ROWS) if r != 4]), 4, "seq 4 was expected"),
    "swap-rows": (lambda t: take(t, [0, 1, 7, 3, 4, 5, 6, 2, *range(8, ROWS)]), 2, "seq 2 was"),
    "edit-and-rehash": (lambda t: rehash_row(edit_text(t), 3), 3, "chain_hash does not follow"),
    "renumber-after-delete": (
        lambda t: set_cell(take(t, [r for r in range(ROWS) if r != 6]), "seq", 6, 6),
        6,
        "row_hash does not match",
    ),
}


def test_a_fresh_audit_verifies(pristine: Path) -> None:
    result = verify_audit(pristine)

    assert result.ok, result.problems
    assert (result.rows, result.files, result.bad_rows, result.first_bad_row) == (ROWS, 1, 0, None)
    assert result.chain_head == read_metadata(pristine)["chain_head"]
    assert "manifest" in result.checked
    command = cli("audit", "verify", str(pristine), "--chain-head", result.chain_head or "")
    assert command.exit_code == 0, command.output
    assert "OK: no row was edited, deleted, added or moved." in command.stdout
    assert json.loads(cli("audit", "verify", str(pristine), "--json").stdout)["ok"] is True


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_tampering_is_found_and_the_first_bad_row_named(
    pristine: Path, tmp_path: Path, kind: str
) -> None:
    change, row, message = TAMPERING[kind]
    path = copy(pristine, tmp_path)
    rewrite(path, change)

    result = verify_audit(path)
    command = cli("audit", "verify", str(path))

    assert not result.ok
    assert result.first_bad_row == row
    assert result.problems[0].startswith(f"row {row} (seq ")
    assert message in result.problems[0]
    assert any("SHA-256 differs from the manifest" in p for p in result.problems)
    assert command.exit_code == 3
    (line,) = stderr_lines(command)
    assert line == f"walrecover: the audit does not verify: {result.problems[0]}"
    assert f"first bad row: {row}" in command.stdout


def test_removing_the_last_rows_is_found_by_the_counts(pristine: Path, tmp_path: Path) -> None:
    path = copy(pristine, tmp_path)
    rewrite(path, lambda t: t.slice(0, ROWS - 2))

    result = verify_audit(path, use_manifest=False)

    assert not result.ok
    assert result.first_bad_row is None
    assert result.problems[0] == (
        f"the audit holds {ROWS - 2} rows but the metadata of audit.parquet says {ROWS}: "
        f"rows {ROWS - 2} to {ROWS - 1} were removed at the end"
    )


def test_a_consistent_forgery_is_caught_by_the_manifest_or_the_recorded_chain_head(
    pristine: Path, tmp_path: Path
) -> None:
    """Edit a value, recompute every hash and the metadata: only what lives outside the file
    (the manifest's checksum, a chain head written down at recovery time) can tell."""
    path = copy(pristine, tmp_path)
    head = verify_audit(pristine).chain_head or ""
    table = edit_text(pq.read_table(path))
    table = set_cell(table, "new_amount", 3, Decimal("4.26"))
    table = table.drop_columns(["row_hash", "chain_hash"])
    row_hashes, chain_hashes, forged = hash_rows(table, walrecover.audit.format.CHAIN_SEED)
    table = table.append_column("row_hash", pa.array(row_hashes))
    table = table.append_column("chain_hash", pa.array(chain_hashes))
    meta = file_metadata(path)
    meta[b"walrecover.chain_head"] = json.dumps(forged).encode()
    pq.write_table(table.replace_schema_metadata(meta), path)

    alone = verify_audit(path, use_manifest=False)
    with_manifest = verify_audit(path)
    with_head = verify_audit(path, use_manifest=False, chain_head=head)

    assert alone.ok  # the file is consistent with itself
    assert not with_manifest.ok
    assert any("SHA-256 differs" in p for p in with_manifest.problems)
    assert not with_head.ok
    assert with_head.problems == (
        f"the chain ends at {forged}, not at the expected chain head {head}: the audit is not "
        "the one recorded",
    )


def test_a_missing_manifest_fails_unless_told(pristine: Path, tmp_path: Path) -> None:
    path = tmp_path / "alone.parquet"
    shutil.copy(pristine, path)

    missing = cli("audit", "verify", str(path))
    alone = cli("audit", "verify", str(path), "--no-manifest")
    elsewhere = cli("audit", "verify", str(path), "--manifest", str(manifest_path(pristine)))

    assert missing.exit_code == 3
    assert "--no-manifest" in missing.stderr
    assert alone.exit_code == 0, alone.output
    assert elsewhere.exit_code == 0, elsewhere.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["nothing-here.parquet"], 2, "does not exist"),
        (["NOT_AN_AUDIT"], 1, "walrecover: error: "),
        (["AUDIT", "--manifest", "MANIFEST", "--no-manifest"], 2, "not both"),
    ],
    ids=["missing", "not-an-audit", "both-manifest-options"],
)
def test_verify_usage_and_errors(
    pristine: Path, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1]}), other)
    names = {"AUDIT": str(pristine), "MANIFEST": str(manifest_path(pristine))}
    names["NOT_AN_AUDIT"] = str(other)
    result = cli("audit", "verify", *[names.get(a, a) for a in args])
    assert result.exit_code == code
    assert message in result.stderr


# -- the partitioned dataset -----------------------------------------------------------------


@pytest.fixture
def dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A dataset of 20 changes over four commit dates, at most 3 rows a file."""
    monkeypatch.setattr(walrecover.audit.outputs, "DATASET_FILE_ROWS", 3)
    directory = tmp_path / "audit"
    write_audit(directory, ledger_stream(20), partitioned=True)
    return directory


def files(directory: Path) -> list[str]:
    return [str(entry["path"]) for entry in entries(directory)]


def entries(directory: Path) -> list[dict[str, object]]:
    manifest = json.loads((directory / DATASET_MANIFEST).read_text())
    found: list[dict[str, object]] = manifest["files"]
    return found


def test_a_fresh_dataset_verifies(dataset: Path) -> None:
    result = verify_audit(dataset)
    assert result.ok, result.problems
    assert result.rows == 20
    assert result.files == len(files(dataset)) >= 7
    assert {p.split("/")[0] for p in files(dataset)} == {
        "commit_date=2024-05-01",
        "commit_date=2024-05-02",
        "commit_date=2024-05-03",
        "commit_date=2024-05-04",
        "commit_date=2024-05-05",
    }


def test_a_deleted_file_of_the_dataset_is_found(dataset: Path) -> None:
    entry = entries(dataset)[2]
    gone, first = str(entry["path"]), entry["first_seq"]
    (dataset / gone).unlink()

    result = verify_audit(dataset)

    assert not result.ok
    assert result.first_bad_row == first
    assert f"seq {first} was expected" in result.problems[0]
    assert f"file {gone} of the manifest is missing from {dataset}" in result.problems


def test_an_edited_row_in_the_dataset_is_named_with_its_file(dataset: Path) -> None:
    entry = entries(dataset)[3]
    target, row = str(entry["path"]), int(str(entry["first_seq"])) + 1
    rewrite(dataset / target, lambda t: set_cell(t, "op", 1, "delete"))

    result = verify_audit(dataset)
    command = cli("audit", "verify", str(dataset))

    assert not result.ok
    assert result.first_bad_row == row
    assert result.problems[0].startswith(f"row {row} (seq {row}, ")
    assert f"in {target}: row_hash does not match" in result.problems[0]
    assert command.exit_code == 3


def test_an_extra_file_in_the_dataset_is_found(dataset: Path) -> None:
    first = files(dataset)[0]
    shutil.copy(dataset / first, dataset / first.replace("part-000000", "part-999999"))

    result = verify_audit(dataset)

    assert not result.ok
    assert any("is in" in p and "not in the manifest" in p for p in result.problems)


def test_verify_reads_one_batch_at_a_time(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small batches give the same answer: nothing depends on holding the file whole."""
    monkeypatch.setattr(walrecover.audit.verify, "VERIFY_BATCH_ROWS", 2)
    assert verify_audit(dataset).ok
    entry = entries(dataset)[1]
    rewrite(dataset / str(entry["path"]), lambda t: set_cell(t, "xid", 0, 1))
    assert verify_audit(dataset).first_bad_row == entry["first_seq"]


def test_unreadable_audit_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(AuditError, match="cannot read the audit"):
        verify_audit(path, use_manifest=False)
    assert hashlib.sha256(path.read_bytes()).hexdigest()  # untouched
