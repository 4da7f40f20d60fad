"""recover --baseline: a table older than the slot, rebuilt from an older copy plus the stream.

The workload writes rows *before* the slot exists (only a baseline holds them), then changes in
the slot before the baseline was taken (the baseline holds them too: skipped with a known point,
replayed idempotently without one), then changes after it, including updates that leave a
TOASTed value unchanged (it must come from the baseline row) and key changes. The rebuilt table
is compared row for row with the real table snapshotted before the DROP.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from every_way import capture_of, create_source, user_options
from fault_helpers import peek_capture, run, start, wait_for_progress
from helpers import Database, cli, differences, drop_with_truth, run_script, source_untouched

from walrecover.audit.reader import read_metadata
from walrecover.drill.cluster import find_installation
from walrecover.errors import BaselineError
from walrecover.rebuild.baseline import BaselineOptions
from walrecover.rebuild.recover import recover_capture
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import TableName

PLUGINS = ("wal2json", "pgoutput", "test_decoding")
#: No auto-analyze: its catalog update between the table's changes is a doubt test_decoding cannot
#: settle without pg_walinspect (exit 4), which made these tests depend on the autovacuum's timing.
DDL = (
    "CREATE TABLE t (id integer PRIMARY KEY, amount numeric(12,2), note text)"
    " WITH (autovacuum_enabled = off)"
)
#: test_decoding carries neither the key nor type modifiers: the engineer gives the definition.
RECOVERED_DDL = (
    "CREATE TABLE public.t_recovered (id integer PRIMARY KEY, amount numeric(12,2), note text)"
)
LONG = "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 160))"


def _tool(name: str) -> str:
    return str(find_installation().bindir / name)


def workload(db: Database, plugin: str, take: Callable[[Lsn], None]) -> str:
    """Rows before the slot, changes in the slot before ``take(point)`` (the baseline is taken
    there, with no write in between), changes after it, then the truth and the DROP."""
    db.execute(DDL)
    db.execute("INSERT INTO t SELECT g, g * 1.25, 'row ' || g FROM generate_series(1, 200) g")
    db.execute(f"UPDATE t SET note = {LONG} WHERE id IN (1, 2, 3, 9)")
    slot = create_source(db, plugin, "t")
    run_script(
        db,
        [
            "INSERT INTO t VALUES (201, 1.00, 'in the slot, before the baseline')",
            "UPDATE t SET amount = amount + 0.01 WHERE id = 5",
            "DELETE FROM t WHERE id = 6",
            "UPDATE t SET id = 1000 WHERE id = 7",
            "UPDATE t SET amount = 9.99 WHERE id = 1",
            "UPDATE t SET id = 1009 WHERE id = 9",
        ],
    )
    take(Lsn.parse(db.lsn()))
    run_script(
        db,
        [
            "INSERT INTO t VALUES (202, 2.00, 'after the baseline')",
            "UPDATE t SET amount = 1.50 WHERE id = 2",
            "DELETE FROM t WHERE id = 8",
            "UPDATE t SET id = 2000 WHERE id = 3",
            "UPDATE t SET amount = 7.77 WHERE id = 201",
            "BEGIN; DELETE FROM t WHERE id = 202; INSERT INTO t VALUES (202, 2.02, 'again');"
            " COMMIT",
        ],
    )
    drop_with_truth(db)
    return slot


def recover_args(db: Database, plugin: str, slot: str, *extra: str) -> list[str]:
    args = ["recover", "-d", db.dsn, "--slot", slot, "--table", "public.t", "--json", *extra]
    for name, value in user_options(plugin).items():
        args += ["-o", f"{name}={value}"]
    return args


def ddl_args(plugin: str, tmp_path: Path) -> list[str]:
    if plugin != "test_decoding":
        return []
    path = tmp_path / "t.sql"
    path.write_text(RECOVERED_DDL)
    return ["--ddl", str(path)]


# -- exporting a baseline ----------------------------------------------------------------------


def export_csv(db: Database, path: Path) -> None:
    with (
        db.connect() as conn,
        path.open("wb") as out,
        conn.cursor().copy("COPY t TO STDOUT (FORMAT csv, HEADER)") as copy,
    ):
        for block in copy:
            out.write(block)


def export_parquet(db: Database, path: Path, lsn: Lsn | None) -> None:
    """Typed columns (integer, decimal, string), as an export tool would write them."""
    rows = db.execute("SELECT id, amount::text, note FROM t")
    table = pa.table(
        {
            "id": pa.array([r[0] for r in rows], pa.int32()),
            "amount": pa.array([Decimal(r[1]) for r in rows], pa.decimal128(12, 2)),
            "note": pa.array([r[2] for r in rows], pa.string()),
        }
    )
    if lsn is not None:
        table = table.replace_schema_metadata({b"walrecover.lsn": str(lsn).encode()})
    pq.write_table(table, path)


def pg_dump(db: Database, path: Path, fmt: str) -> None:
    subprocess.run(
        [_tool("pg_dump"), f"-F{fmt}", "-t", "t", "-f", str(path), "-d", db.dsn],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def other_db(db: Database) -> Iterator[Database]:
    """A second database on the cluster: the scratch server a backup was restored to."""
    name = f"{db.name}_base"
    with psycopg.connect(db.cluster.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield Database(db.cluster, name)
    with psycopg.connect(db.cluster.dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def copy_to(db: Database, other: Database) -> None:
    other.execute(DDL.replace("TABLE t", "TABLE copied"))
    with (
        db.connect() as src,
        other.connect() as dst,
        src.cursor().copy("COPY t TO STDOUT") as out,
        dst.cursor().copy("COPY copied FROM STDIN") as into,
    ):
        for block in out:
            into.write(block)


def assert_identical(db: Database, result: dict[str, object]) -> None:
    assert differences(db, "truth", "t_recovered") == (0, 0)
    baseline = result["baseline"]
    assert isinstance(baseline, dict)
    assert baseline["rows"] > 0 and len(baseline["rows_sha256"]) == 64


# -- known point ---------------------------------------------------------------------------------


@pytest.mark.parametrize("plugin", PLUGINS)
def test_csv_baseline_at_a_known_point(db: Database, tmp_path: Path, plugin: str) -> None:
    path = tmp_path / "t.csv"
    points: list[Lsn] = []

    def take(lsn: Lsn) -> None:
        export_csv(db, path)
        points.append(lsn)

    slot = workload(db, plugin, take)
    audit = tmp_path / "audit.parquet"
    args = recover_args(db, plugin, slot, "--baseline", str(path))
    args += ["--baseline-lsn", str(points[0]), "--audit", str(audit), *ddl_args(plugin, tmp_path)]
    with source_untouched(db, slot):
        result = cli(*args)
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert_identical(db, out)
    assert out["baseline"]["mode"] == "after point"
    assert out["baseline"]["lsn"] == str(points[0])
    # Only the six transactions after the point were replayed.
    assert out["transactions"] == 6
    metadata = read_metadata(audit)
    assert metadata["baseline"]["rows_sha256"] == out["baseline"]["rows_sha256"]
    assert metadata["baseline"]["source"] == str(path)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_parquet_baseline_records_its_point(db: Database, tmp_path: Path, plugin: str) -> None:
    path = tmp_path / "t.parquet"
    slot = workload(db, plugin, lambda lsn: export_parquet(db, path, lsn))
    args = recover_args(db, plugin, slot, "--baseline", str(path), *ddl_args(plugin, tmp_path))
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert_identical(db, out)
    assert out["baseline"]["kind"] == "parquet" and out["baseline"]["lsn"] is not None


def test_baseline_from_another_database(db: Database, other_db: Database) -> None:
    points: list[Lsn] = []

    def take(lsn: Lsn) -> None:
        copy_to(db, other_db)
        points.append(lsn)

    slot = workload(db, "pgoutput", take)
    args = recover_args(db, "pgoutput", slot, "--baseline-dsn", other_db.dsn)
    args += ["--baseline-table", "copied", "--baseline-lsn", str(points[0])]
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert_identical(db, out)
    assert out["baseline"]["kind"] == "dsn"
    assert "password" not in out["baseline"]["source"]


@pytest.mark.parametrize("fmt", ["c", "p"])
def test_pg_dump_baseline(db: Database, tmp_path: Path, fmt: str) -> None:
    path = tmp_path / ("t.dump" if fmt == "c" else "t.sql")
    points: list[Lsn] = []

    def take(lsn: Lsn) -> None:
        pg_dump(db, path, fmt)
        points.append(lsn)

    slot = workload(db, "wal2json", take)
    if fmt == "p":  # SQL around the data is never run: a trap proves it
        text = path.read_text()
        path.write_text("CREATE TABLE trap (x int);\n" + text)
    args = recover_args(db, "wal2json", slot, "--baseline", str(path))
    result = cli(*args, "--baseline-lsn", str(points[0]))
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert_identical(db, out)
    assert out["baseline"]["kind"] == ("pg_dump custom" if fmt == "c" else "pg_dump plain")
    assert db.scalar("SELECT to_regclass('trap')") is None


# -- unknown point: idempotent ------------------------------------------------------------------


@pytest.mark.parametrize("plugin", PLUGINS)
def test_unknown_point_replays_idempotently(db: Database, tmp_path: Path, plugin: str) -> None:
    """A custom archive without an LSN: the whole slot is replayed over it idempotently; its
    creation time, after the slot's first commit, proves the slot covers it."""
    path = tmp_path / "t.dump"

    def take(lsn: Lsn) -> None:
        time.sleep(1.1)  # the archive's time has whole seconds
        pg_dump(db, path, "c")

    slot = workload(db, plugin, take)
    args = recover_args(db, plugin, slot, "--baseline", str(path), *ddl_args(plugin, tmp_path))
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert_identical(db, out)
    assert out["baseline"]["mode"] == "idempotent"
    assert out["transactions"] == 12
    assert out["unproven"] == []


def test_unknown_point_without_proof_is_a_gap(db: Database, tmp_path: Path) -> None:
    """A CSV without an LSN proves nothing about the slot's start: refused, or with
    --accept-gap rebuilt (idempotently, here exactly) and exit 4."""
    path = tmp_path / "t.csv"
    slot = workload(db, "wal2json", lambda lsn: export_csv(db, path))
    args = recover_args(db, "wal2json", slot, "--baseline", str(path))
    refused = cli(*args)
    assert refused.exit_code == 1
    assert "cannot prove the stream covers the baseline" in refused.stderr
    assert "--accept-gap" in refused.stderr
    assert db.scalar("SELECT to_regclass('t_recovered')") is None
    accepted = cli(*args, "--accept-gap")
    assert accepted.exit_code == 4, accepted.stderr
    out = json.loads(accepted.stdout)
    assert out["baseline"]["gap"] and any("--accept-gap" in r for r in out["unproven"])
    assert differences(db, "truth", "t_recovered") == (0, 0)


# -- gaps and refusals ---------------------------------------------------------------------------


def test_a_gap_is_refused_and_accept_gap_exits_4(db: Database, tmp_path: Path) -> None:
    """The baseline is older than the slot: the changes in between are in neither."""
    path = tmp_path / "t.csv"
    db.execute(DDL)
    db.execute("INSERT INTO t SELECT g, g, 'row' FROM generate_series(1, 50) g")
    export_csv(db, path)
    point = db.lsn()
    db.execute("UPDATE t SET amount = 0 WHERE id = 1")  # lost: before the slot
    slot = create_source(db, "wal2json", "t")
    db.execute("INSERT INTO t VALUES (51, 51, 'in the slot')")
    drop_with_truth(db)
    audit = tmp_path / "audit.parquet"
    args = recover_args(db, "wal2json", slot, "--baseline", str(path), "--baseline-lsn", point)
    refused = cli(*args)
    assert refused.exit_code == 1
    line = refused.stderr.strip().splitlines()[-1]
    assert "cannot prove the stream covers the baseline" in line
    assert f"after the baseline's point (LSN {point})" in line
    accepted = cli(*args, "--accept-gap", "--audit", str(audit))
    assert accepted.exit_code == 4
    assert "WARNING: not proven exact" in accepted.stderr
    out = json.loads(accepted.stdout)
    assert out["baseline"]["gap"]
    metadata = read_metadata(audit)
    assert metadata["baseline"]["gap"] == out["baseline"]["gap"]
    assert differences(db, "truth", "t_recovered") == (1, 1)  # the lost update


def test_keyless_table_needs_a_known_point(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    db.execute("CREATE TABLE t (account integer, amount numeric(12,2))")
    db.execute("ALTER TABLE t REPLICA IDENTITY FULL")
    db.execute("INSERT INTO t SELECT g, g FROM generate_series(1, 20) g")
    slot = create_source(db, "wal2json", "t")
    db.execute("INSERT INTO t VALUES (21, 21)")
    export_csv(db, path)
    point = db.lsn()
    db.execute("DELETE FROM t WHERE account = 3")
    drop_with_truth(db)
    args = recover_args(db, "wal2json", slot, "--baseline", str(path))
    refused = cli(*args, "--accept-gap")
    assert refused.exit_code == 1
    assert "has no primary key" in refused.stderr and "--baseline-lsn" in refused.stderr
    assert db.scalar("SELECT to_regclass('t_recovered')") is None
    known = cli(*args, "--baseline-lsn", point)
    assert known.exit_code == 0, known.stderr
    assert differences(db, "truth", "t_recovered") == (0, 0)


def test_stop_point_before_the_baseline_is_refused(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    points: list[Lsn] = []

    def take(lsn: Lsn) -> None:
        export_csv(db, path)
        points.append(lsn)

    slot = workload(db, "wal2json", take)
    early = Lsn(points[0] - 8)
    args = recover_args(db, "wal2json", slot, "--baseline", str(path))
    result = cli(*args, "--baseline-lsn", str(points[0]), "--stop-before-lsn", str(early))
    assert result.exit_code == 1
    assert "at or before the baseline's point" in result.stderr


# -- the rehearsal -------------------------------------------------------------------------------


@pytest.mark.parametrize("plugin", PLUGINS)
def test_rehearse_with_a_baseline(plugin: str) -> None:
    result = cli(
        "rehearse", "--baseline", "--transactions", "600", "--accounts", "10", "--plugin", plugin,
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["identical"] and out["reconciled"]
    baseline = out["baseline"]
    assert baseline["lsn"] == baseline["slot_point"] and baseline["mode"] == "after point"
    assert baseline["rows"] == baseline["exported_rows"] > 0
    assert out["rows"] > baseline["rows"]
    assert out["seconds"]["rto"] > 0


# -- reruns ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("plugin", ["wal2json", "pgoutput"])
def test_a_killed_baseline_recovery_resumes_without_loading_it_twice(
    db: Database, tmp_path: Path, plugin: str
) -> None:
    """Keyless, so a baseline loaded twice would show as duplicates: killed after some batches,
    the same command resumes past its own last commit."""
    path = tmp_path / "t.csv"
    db.execute("CREATE TABLE t (n integer, note text)")
    db.execute("ALTER TABLE t REPLICA IDENTITY FULL")
    db.execute("INSERT INTO t SELECT g, 'before the slot' FROM generate_series(1, 5000) g")
    slot = create_source(db, plugin, "t")
    db.execute("INSERT INTO t VALUES (0, 'in the slot, in the baseline')")
    export_csv(db, path)
    point = db.lsn()
    with db.connect() as conn:
        conn.execute(
            "DO $$ BEGIN FOR i IN 1..80 LOOP"
            " INSERT INTO t SELECT g, 'after' FROM generate_series(i * 10000, i * 10000 + 999) g;"
            " DELETE FROM t WHERE n = i; COMMIT; END LOOP; END $$"
        )
    drop_with_truth(db)
    args = recover_args(db, plugin, slot, "--baseline", str(path), "--baseline-lsn", point)
    args += ["--batch-size", "2000"]
    running = start(args)
    kept = wait_for_progress(db.dsn, "public.t_recovered", running, transactions=10)
    assert running.signal(signal.SIGKILL), "the recovery ended before it could be killed"
    running.finish()
    assert not kept.complete
    done = run(args)
    assert done.returncode == 0, done.describe()
    assert done.json()["resumed_from"] is not None
    assert differences(db, "truth", "t_recovered") == (0, 0)


def test_rerun_is_already_complete_and_another_baseline_is_another_command(
    db: Database, tmp_path: Path
) -> None:
    path = tmp_path / "t.csv"
    points: list[Lsn] = []

    def take(lsn: Lsn) -> None:
        export_csv(db, path)
        points.append(lsn)

    slot = workload(db, "wal2json", take)
    args = recover_args(db, "wal2json", slot, "--baseline", str(path))
    first = cli(*args, "--baseline-lsn", str(points[0]))
    assert first.exit_code == 0, first.stderr
    again = cli(*args, "--baseline-lsn", str(points[0]))
    assert again.exit_code == 0, again.stderr
    out = json.loads(again.stdout)
    assert out["already_complete"] and out["baseline"] == json.loads(first.stdout)["baseline"]
    other = cli(*args, "--baseline-lsn", str(Lsn(points[0] - 8)))
    assert other.exit_code == 1
    assert "--baseline differs" in other.stderr


# -- captures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("plugin", ["wal2json", "pgoutput"])
def test_capture_shows_it_covers_the_baseline(db: Database, tmp_path: Path, plugin: str) -> None:
    """A capture's start is unknown: its first transaction, committed before the point, shows
    it began before the baseline."""
    path = tmp_path / "t.csv"
    points: list[Lsn] = []

    def take(lsn: Lsn) -> None:
        export_csv(db, path)
        points.append(lsn)
        db.create_slot("late", plugin)  # a capture started after the baseline

    workload(db, plugin, take)
    capture = capture_of(db, plugin, tmp_path / "t.capture")
    result = recover_capture(
        capture,
        plugin,
        TableName("public", "t"),
        target=db.dsn,
        options=user_options(plugin),
        baseline=BaselineOptions(file=path, lsn=points[0]),
    )
    assert result.exact and result.transactions == 6
    assert differences(db, "truth", "t_recovered") == (0, 0)
    late = tmp_path / "late.capture"
    peek_capture(db.dsn, "late", plugin, late, options=user_options(plugin))
    with pytest.raises(BaselineError, match="first transaction commits at LSN"):
        recover_capture(
            late,
            plugin,
            TableName("public", "t"),
            target=db.dsn,
            into=TableName("public", "t_late"),
            options=user_options(plugin),
            baseline=BaselineOptions(file=path, lsn=points[0]),
        )
    assert db.scalar("SELECT to_regclass('t_late')") is None


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_truncate_first_after_the_baseline_empties_it(
    db: Database, tmp_path: Path, plugin: str
) -> None:
    """Replay skips a TRUNCATE that comes before the table exists in the target: with a
    baseline, the baseline's rows are there and must go."""
    path = tmp_path / "t.csv"
    db.execute(DDL)
    db.execute("INSERT INTO t SELECT g, g, 'old' FROM generate_series(1, 30) g")
    slot = create_source(db, plugin, "t")
    export_csv(db, path)
    point = db.lsn()
    run_script(db, ["TRUNCATE t", "INSERT INTO t VALUES (1, 1.00, 'new'), (31, 31.00, 'new')"])
    drop_with_truth(db)
    args = recover_args(db, plugin, slot, "--baseline", str(path), "--baseline-lsn", point)
    result = cli(*args, *ddl_args(plugin, tmp_path))
    assert result.exit_code == 0, result.stderr
    assert differences(db, "truth", "t_recovered") == (0, 0)
    assert json.loads(result.stdout)["baseline"]["truncated_by_the_stream"] is True
