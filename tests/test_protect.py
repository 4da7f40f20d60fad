"""``walrecover protect``: recovery points on the real server.

A recovery point is only worth something if its baseline is exactly the table at the slot's
consistent point: every row committed before it in the baseline, every row committed after it in
the slot, none in both. These tests prove that with writes racing the snapshot, rotate points
with short intervals, and check that the user's own slots (and a slot merely named like
protect's) never move.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest
from helpers import Database, cli, differences, snapshot, stderr_lines
from psycopg import sql
from psycopg.conninfo import make_conninfo

from walrecover.db import connect
from walrecover.errors import ProtectError
from walrecover.ready import points as pts
from walrecover.ready.points import load_recovery_points, parse_duration
from walrecover.ready.protect import ProtectResult, protect, run_forever
from walrecover.ready.snapshot import (
    create_slot,
    import_snapshot,
    replication_connection,
    table_facts,
    write_baseline,
)
from walrecover.stream.model import TableName
from walrecover.stream.sources import wait_for_flush

T = TableName("public", "t")

TABLE_SQL = (
    "CREATE TABLE t (id int PRIMARY KEY, amount numeric(16,2) NOT NULL, note text,"
    " code char(5), ip inet, raw bytea, at timestamptz, price float8)"
)
ROWS_SQL = (
    "INSERT INTO t SELECT g, 12345678901234.01 + g, CASE WHEN g %% 7 = 0 THEN NULL"
    " ELSE 'note ' || g || E'\\ttab \\\\ back' END, 'ab', ('10.0.0.' || (g %% 250))::inet,"
    " decode('00ff' || lpad(to_hex(g), 4, '0'), 'hex'), '2024-05-01 10:00:00+00'::timestamptz"
    " + g * interval '1 second', 0.1 + g FROM generate_series(%s::int, %s::int) g"
)


def _protect_slots(db: Database) -> list[str]:
    return [
        r[0]
        for r in db.execute(
            "SELECT slot_name::text FROM pg_replication_slots"
            " WHERE slot_name LIKE 'walrecover\\_protect\\_%' ORDER BY 1"
        )
    ]


def _slot_ids(db: Database, slot: str) -> set[int]:
    """The ids inserted into t as the slot holds them (peeked: the slot does not move)."""
    with db.connect() as conn:
        wait_for_flush(conn)  # decoding reads flushed WAL only
    rows = db.execute(
        "SELECT data FROM pg_logical_slot_peek_changes(%s, NULL, NULL)"
        " WHERE data LIKE 'table public.t: INSERT:%%'",
        (slot,),
    )
    return {int(r[0].split("id[integer]:")[1].split(" ")[0]) for r in rows}


def _restore(db: Database, baseline: pts.TableBaseline, name: str) -> None:
    """Load a baseline into a new table ``name`` through its own DDL and PostgreSQL's input
    functions: what a recovery from it would start with."""
    ddl = baseline.ddl.replace(f"CREATE TABLE {baseline.table} (", f"CREATE TABLE {name} (", 1)
    db.execute(ddl)
    table = pq.read_table(baseline.path)
    with db.connect() as conn, conn.cursor() as cur:
        query = sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(name))
        with cur.copy(query) as copy:
            for row in table.to_pylist():
                copy.write_row([row[c.name] for c in baseline.columns])


def test_the_baseline_is_the_table_at_the_slots_consistent_point(
    db: Database, tmp_path: Path
) -> None:
    """Rows committed after the slot was created are in the slot and not in the baseline, even
    when the baseline is read later; the baseline loads back equal to the table as it was."""
    db.execute(TABLE_SQL)
    db.execute(ROWS_SQL, (1, 500))
    snapshot(db, "t", "truth")
    repl = replication_connection(db.dsn)
    try:
        _, exported = create_slot(repl, "walrecover_protect_test", "test_decoding")
        db.execute(ROWS_SQL, (501, 520))  # committed after the consistent point
        db.execute("UPDATE t SET amount = amount + 1 WHERE id <= 10")
        with connect(db.dsn, autocommit=True) as conn:
            import_snapshot(conn, exported)
            facts = table_facts(conn, T)
            path = tmp_path / "baseline.parquet"
            baseline = write_baseline(conn, facts, path, {"slot": "walrecover_protect_test"})
            conn.execute("COMMIT")
    finally:
        repl.close()
    assert baseline.rows == 500
    _restore(db, baseline, "restored")
    assert differences(db, "truth", "restored") == (0, 0)
    assert _slot_ids(db, "walrecover_protect_test") == set(range(501, 521))
    metadata = json.loads(pq.read_schema(path).metadata[pts.PARQUET_KEY])
    assert metadata["key"] == ["id"]
    assert {"name": "amount", "type": "numeric(16,2)"} in metadata["columns"]
    assert pq.read_table(path).column("amount")[0].as_py() == "12345678901235.01"


def test_a_recovery_point_taken_under_concurrent_writes_splits_them_exactly(
    db: Database, tmp_path: Path
) -> None:
    """Single-row commits race protect: each id is in exactly one of baseline and slot, and
    together they are every row of the table."""
    db.execute(TABLE_SQL)
    db.execute(ROWS_SQL, (1, 200))
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            next_id = 201
            while not stop.is_set() or next_id < 260:
                conn.execute(ROWS_SQL, (next_id, next_id))
                written.append(next_id)
                next_id += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.05)
        result = protect(
            db.dsn,
            [T],
            tmp_path / "points",
            retain=timedelta(hours=1),
            every=timedelta(hours=1),
            plugin="test_decoding",
        )
    finally:
        stop.set()
        thread.join()
    assert result.created is not None
    baseline = result.created.tables[0]
    in_baseline = {int(v) for v in pq.read_table(baseline.path).column("id").to_pylist()}
    in_slot = _slot_ids(db, result.created.slot)
    everything = {int(r[0]) for r in db.execute("SELECT id FROM t")}
    assert in_baseline.isdisjoint(in_slot)
    assert in_baseline | in_slot == everything
    assert in_slot, "no write landed after the consistent point"
    assert baseline.rows == len(in_baseline)


def test_rotation_keeps_the_window_and_drops_only_its_own_slots(
    db: Database, tmp_path: Path
) -> None:
    """--every 0s --retain 2s: each run makes a point; a point is dropped once a newer one is
    itself older than the retention. The user's slots do not move, and a slot that is only
    *named* like protect's (not in the manifest) is never dropped."""
    db.execute(TABLE_SQL)
    db.execute(ROWS_SQL, (1, 50))
    db.execute("CREATE PUBLICATION pub FOR TABLE t")
    db.create_slot("cdc", "test_decoding")
    db.create_slot("walrecover_protect_mine", "test_decoding")
    db.execute(ROWS_SQL, (51, 60))
    before = (db.slot_position("cdc"), db.slot_position("walrecover_protect_mine"))
    folder = tmp_path / "points"
    args = ["protect", "-d", db.dsn, "--table", "t", "--every", "0s", "--retain", "2s"]
    args += ["--dir", str(folder), "--json"]

    runs = []
    for _ in range(3):
        result = cli(*args)
        assert result.exit_code == 0, result.output
        runs.append(json.loads(result.stdout))
        db.execute(ROWS_SQL, (1000 + len(runs), 1000 + len(runs)))
        time.sleep(2.5)

    first, second, third = (run["created"]["slot"] for run in runs)
    assert runs[1]["dropped"] == []  # the first point still covers the window's far edge
    assert runs[2]["dropped"] == [first]
    assert _protect_slots(db) == sorted([second, third, "walrecover_protect_mine"])
    assert not (folder / first).exists()
    kept = load_recovery_points(folder)
    assert [p.slot for p in kept] == [second, third]
    assert all(p.tables[0].path.is_file() for p in kept)
    assert (db.slot_position("cdc"), db.slot_position("walrecover_protect_mine")) == before
    assert runs[2]["disk_bytes"] > 0
    assert {s["slot"] for s in runs[2]["slots"]} == {second, third}
    assert all(s["retained_wal_bytes"] is not None for s in runs[2]["slots"])
    assert all(s["catalog_xmin_age"] is not None for s in runs[2]["slots"])
    assert kept[-1].tables[0].publications == ("pub",)

    # Not due yet: no new slot, nothing dropped, the cost still shown.
    quiet = cli("protect", "-d", db.dsn, "--table", "t", "--every", "1h", "--retain", "1h",
                "--dir", str(folder))  # fmt: skip
    assert quiet.exit_code == 0, quiet.output
    assert "No new recovery point needed" in quiet.stdout
    assert "of WAL retained" in quiet.stdout
    assert len(load_recovery_points(folder)) == 2


def test_a_point_a_killed_run_left_is_cleaned_by_the_next_run(db: Database, tmp_path: Path) -> None:
    db.execute(TABLE_SQL)
    folder = tmp_path / "points"
    protect(db.dsn, [T], folder, retain=timedelta(hours=1), every=timedelta(hours=1))
    manifest = pts.read_manifest(folder)
    assert manifest is not None
    manifest["points"].append({"slot": "walrecover_protect_killed", "state": "creating"})
    pts.write_manifest(folder, manifest)
    db.create_slot("walrecover_protect_killed", "test_decoding")
    result = protect(db.dsn, [T], folder, retain=timedelta(hours=1), every=timedelta(hours=1))
    assert "walrecover_protect_killed" not in _protect_slots(db)
    assert any("killed run" in w for w in result.warnings)
    assert result.created is None and len(result.points) == 1


def test_protect_refuses_another_databases_directory_and_a_missing_table(
    db: Database, tmp_path: Path
) -> None:
    db.execute(TABLE_SQL)
    folder = tmp_path / "points"
    protect(db.dsn, [T], folder, retain=timedelta(hours=1), every=timedelta(hours=1))
    other = db.cluster.dsn("postgres")
    with pytest.raises(ProtectError, match="keeps recovery points of database"):
        protect(other, [T], folder, retain=timedelta(hours=1), every=timedelta(0))
    result = cli("protect", "-d", db.dsn, "--table", "nope", "--every", "0s", "--retain", "1h")
    assert result.exit_code == 2  # --dir is required
    missing = cli(
        "protect", "-d", db.dsn, "--table", "nope", "--every", "0s", "--retain", "1h",
        "--dir", str(folder),
    )  # fmt: skip
    assert missing.exit_code == 1
    assert stderr_lines(missing) == [
        f"walrecover: error: table public.nope does not exist in database {db.name!r}: check "
        "--table (schema.table, quoted as in SQL)"
    ]
    assert len(_protect_slots(db)) == 1  # the failed run left no slot behind
    bad = cli("protect", "-d", db.dsn, "--table", "t", "--every", "soon", "--retain", "1h",
              "--dir", str(folder))  # fmt: skip
    assert bad.exit_code == 2 and "is not a duration" in bad.stderr


def test_durations() -> None:
    assert parse_duration("48h") == timedelta(hours=48)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("0s") == timedelta(0)
    assert parse_duration("2d") == timedelta(days=2)
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("6 hours")


def test_the_loop_sleeps_until_the_next_point_and_stops_on_ctrl_c(
    db: Database, tmp_path: Path
) -> None:
    db.execute(TABLE_SQL)
    reports: list[ProtectResult] = []
    naps: list[float] = []

    def nap(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 2:
            raise KeyboardInterrupt

    def run() -> ProtectResult:
        return protect(
            db.dsn, [T], tmp_path / "p", retain=timedelta(hours=2), every=timedelta(hours=1)
        )

    with pytest.raises(KeyboardInterrupt):
        run_forever(run, reports.append, nap)
    assert [r.created is not None for r in reports] == [True, False]
    assert 3500 < naps[0] <= 3600 and 3500 < naps[1] <= 3600
    assert len(_protect_slots(db)) == 1


def test_a_role_without_replication_is_told_what_it_needs(db: Database, tmp_path: Path) -> None:
    db.execute(TABLE_SQL)
    role = f"norepl_{db.name}"
    db.execute(f"CREATE ROLE {role} LOGIN")
    db.execute(f"GRANT SELECT ON t TO {role}")
    try:
        dsn = make_conninfo(db.dsn, user=role)
        result = cli("protect", "-d", dsn, "--table", "t", "--every", "0s", "--retain", "1h",
                     "--dir", str(tmp_path / "p"))  # fmt: skip
        assert result.exit_code == 1
        (line,) = stderr_lines(result)
        assert line.startswith("walrecover: error: cannot connect to the source database")
        assert "must be superuser or replication role" in line
        assert line.endswith(
            "walrecover protect creates its slots on a replication connection: the role needs "
            "the REPLICATION attribute (ALTER ROLE ... REPLICATION) or superuser"
        )
        assert _protect_slots(db) == []
    finally:
        db.execute(f"DROP OWNED BY {role}")
        db.execute(f"DROP ROLE {role}")
