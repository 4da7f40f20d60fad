"""recover --from-protect: a table older than every slot, rebuilt from protect's recovery points.

Rows are written before any slot exists (only a protect baseline holds them), a protect run makes
a point, more changes follow, a second point, more changes, then the DROP. Recovering to a stop
point between the two points must start from the first (the second's baseline already holds
later changes); to a stop point after the second, from the second. Each rebuilt table is
compared row for row with the table as it was at its stop point, and the protect slots never
move.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import Database, cli, differences, drop_with_truth, run_script

from walrecover.ready.points import load_recovery_points
from walrecover.ready.protect import protect
from walrecover.rebuild.from_protect import choose_point
from walrecover.stream.model import StopPoint, TableName

T = TableName("public", "t")
LONG = "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 160))"


def _protect(db: Database, folder: Path, plugin: str) -> str:
    """One protect run making a new point; its slot."""
    before = {p.slot for p in load_recovery_points(folder)} if folder.exists() else set()
    protect(db.dsn, [T], folder, retain=timedelta(hours=1), every=timedelta(0), plugin=plugin)
    (made,) = {p.slot for p in load_recovery_points(folder)} - before
    return made


def _positions(db: Database, slots: list[str]) -> dict[str, tuple[str, str]]:
    return {slot: db.slot_position(slot) for slot in slots}


@pytest.fixture
def protected(db: Database, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    """The workload around two protect points; the stop LSNs and the slots."""
    plugin = request.param
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, amount numeric(14,2), note text)")
    db.execute("INSERT INTO t SELECT g, g * 1.25, 'old ' || g FROM generate_series(1, 300) g")
    db.execute(f"UPDATE t SET note = {LONG} WHERE id IN (1, 2, 3)")
    if plugin == "pgoutput":
        db.execute("CREATE PUBLICATION pub FOR TABLE t")
    # Made now: a CREATE TABLE between the points would be a catalog change in the stream.
    db.execute("CREATE UNLOGGED TABLE truth_mid (LIKE t)")
    folder = tmp_path / "protect"
    first = _protect(db, folder, plugin)
    run_script(
        db,
        [
            "INSERT INTO t VALUES (301, 1.00, 'after the first point')",
            "UPDATE t SET amount = amount + 0.01 WHERE id = 5",
            "UPDATE t SET amount = 9.99 WHERE id = 1",  # the TOASTed note is unchanged
            "DELETE FROM t WHERE id = 6",
            "UPDATE t SET id = 1007 WHERE id = 7",
        ],
    )
    db.execute("INSERT INTO truth_mid SELECT * FROM t")  # unlogged: not in any slot
    mid = db.lsn()
    second = _protect(db, folder, plugin)
    run_script(
        db,
        [
            "INSERT INTO t VALUES (302, 2.00, 'after the second point')",
            "UPDATE t SET amount = 1.50 WHERE id = 2",
            "DELETE FROM t WHERE id = 8",
            "UPDATE t SET amount = 7.77 WHERE id = 301",
        ],
    )
    end = db.lsn()
    drop_with_truth(db)
    return {"dir": str(folder), "first": first, "second": second, "mid": mid, "end": end}


@pytest.mark.parametrize("protected", ["pgoutput", "wal2json"], indirect=True)
def test_recovers_from_the_newest_point_before_the_stop(
    db: Database, protected: dict[str, str]
) -> None:
    p = protected
    slots = [p["first"], p["second"]]
    before = _positions(db, slots)
    base = ["recover", "-d", db.dsn, "--from-protect", p["dir"], "--table", "public.t", "--json"]

    mid = cli(*base, "--stop-before-lsn", p["mid"], "--into", "public.t_mid")
    assert mid.exit_code == 0, mid.stderr
    result = json.loads(mid.stdout)
    assert result["slot"] == p["first"]
    assert result["baseline"]["recovery_point"]["slot"] == p["first"]
    assert result["baseline"]["mode"] == "after point"
    assert result["baseline"]["rows"] == 300
    assert differences(db, "truth_mid", "t_mid") == (0, 0)

    end = cli(*base, "--stop-before-lsn", p["end"])
    assert end.exit_code == 0, end.stderr
    result = json.loads(end.stdout)
    assert result["slot"] == p["second"]
    assert result["baseline"]["recovery_point"]["slot"] == p["second"]
    assert differences(db, "truth", "t_recovered") == (0, 0)

    text = cli(*base[:-1], "--stop-before-lsn", p["end"], "--into", "public.t_text")
    assert text.exit_code == 0, text.stderr
    assert f"recovery point: {p['second']} of {p['dir']}" in text.stdout
    assert differences(db, "truth", "t_text") == (0, 0)
    assert _positions(db, slots) == before
    assert db.leftover_copies() == []


@pytest.mark.parametrize("protected", ["wal2json"], indirect=True)
def test_no_point_covers_the_stop(db: Database, protected: dict[str, str]) -> None:
    """A stop point before every point, a point whose slot is gone, a table no point protects,
    an xid: one line each, exit 1, nothing built."""
    p = protected
    base = ["recover", "-d", db.dsn, "--from-protect", p["dir"]]
    first_lsn = str(load_recovery_points(p["dir"])[0].consistent_lsn)

    early = cli(*base, "--table", "public.t", "--stop-before-lsn", first_lsn)
    assert early.exit_code == 1, early.stderr
    line = early.stderr.strip()
    assert "\n" not in line
    assert "no recovery point" in line and "covers public.t" in line
    assert p["first"] in line and p["second"] in line and first_lsn in line

    missing = cli(*base, "--table", "public.nope", "--stop-before-lsn", p["end"])
    assert missing.exit_code == 1
    assert "no recovery point" in missing.stderr and "protects public.nope" in missing.stderr
    assert "they protect public.t" in missing.stderr

    xid = cli(*base, "--table", "public.t", "--stop-before-xid", "1234")
    assert xid.exit_code == 1
    assert "--stop-before-lsn" in xid.stderr

    # By time: a stop at a point's snapshot time is reachable from it, not a moment before.
    first, second = load_recovery_points(p["dir"])
    at = choose_point(p["dir"], db.dsn, T, StopPoint(time=second.snapshot_time))
    assert at.slot == second.slot and at.baseline.lsn == second.consistent_lsn
    just_before = second.snapshot_time - timedelta(microseconds=1)
    assert choose_point(p["dir"], db.dsn, T, StopPoint(time=just_before)).slot == first.slot

    db.execute("SELECT pg_drop_replication_slot(%s)", (p["second"],))
    fallback = cli(*base, "--table", "public.t", "--stop-before-lsn", p["end"], "--json")
    # The first point's slot holds every change after it: the table at the end is rebuilt.
    assert fallback.exit_code == 0, fallback.stderr
    assert json.loads(fallback.stdout)["slot"] == p["first"]
    assert differences(db, "truth", "t_recovered") == (0, 0)

    db.execute("SELECT pg_drop_replication_slot(%s)", (p["first"],))
    gone = cli(*base, "--table", "public.t", "--stop-before-lsn", p["end"], "--into", "x.y")
    assert gone.exit_code == 1
    assert "slot is gone" in gone.stderr
    assert not db.scalar("SELECT to_regclass('x.y') IS NOT NULL")


@pytest.mark.parametrize("protected", ["wal2json"], indirect=True)
def test_check_takes_the_baseline(db: Database, protected: dict[str, str], tmp_path: Path) -> None:
    """check (and recover --dry-run) check the baseline: its point and the slot covering it;
    a baseline the slot does not cover is a failed check unless --accept-gap."""
    p = protected
    ok = cli("check", "-d", db.dsn, "--from-protect", p["dir"], "--table", "public.t",
             "--stop-before-lsn", p["end"], "--json")  # fmt: skip
    assert ok.exit_code == 0, ok.stdout + ok.stderr
    plan = json.loads(ok.stdout)
    (check,) = [c for c in plan["checks"] if c["name"] == "baseline"]
    assert check["ok"] and "covers it" in check["detail"], check
    assert plan["slot"] == p["second"]
    assert not db.scalar("SELECT to_regclass('public.t_recovered') IS NOT NULL")

    # The second point's baseline read through the first point's slot... is covered; through
    # a slot created after it, is a gap.
    second = load_recovery_points(p["dir"])[1].tables[0].path
    db.create_slot("late", "wal2json")
    args = ["recover", "--dry-run", "-d", db.dsn, "--slot", "late", "--table", "public.t",
            "--baseline", str(second)]  # fmt: skip
    gap = cli(*args)
    assert gap.exit_code == 1, gap.stdout + gap.stderr
    assert "check failed: baseline: cannot prove the stream covers the baseline" in gap.stderr
    # The point is the one the protect file records in its walrecover.protect metadata.
    point = load_recovery_points(p["dir"])[1].consistent_lsn
    assert f"after the baseline's point (LSN {point})" in gap.stderr
    accepted = cli(*args, "--accept-gap")
    assert accepted.exit_code == 0, accepted.stdout + accepted.stderr
    assert "NOT proven covered" in accepted.stdout

    unreadable = tmp_path / "bad.parquet"
    unreadable.write_bytes(b"PAR1 not really")
    bad = cli("check", "-d", db.dsn, "--slot", "late", "--table", "public.t",
              "--baseline", str(unreadable))  # fmt: skip
    assert bad.exit_code == 1
    assert "check failed: baseline: cannot read the Parquet baseline" in bad.stderr
    assert not db.scalar("SELECT to_regclass('public.t_recovered') IS NOT NULL")


@pytest.mark.parametrize("protected", ["wal2json"], indirect=True)
def test_reconciling_an_audit_with_a_baseline_is_refused(
    db: Database, protected: dict[str, str], tmp_path: Path
) -> None:
    """The audit of a recovery from a baseline holds the changes replayed on top of it, not
    the baseline's rows: reconciling it alone matched nothing of the 300 older rows (a silent
    mismatch, or a match against a ledger of the changes only). It is refused in one line
    naming the baseline and what to reconcile instead; the table itself reconciles. The test
    failed before the fix."""
    p = protected
    audit = tmp_path / "audit.parquet"
    done = cli("recover", "-d", db.dsn, "--from-protect", p["dir"], "--table", "public.t",
               "--stop-before-lsn", p["end"], "--audit", str(audit))  # fmt: skip
    assert done.exit_code == 0, done.stderr
    ledger = "SELECT id, amount FROM truth"
    args = ["reconcile", "--key", "id", "--amount", "amount", "--ledger-query", ledger]
    alone = cli(*args, "--audit", str(audit), "--ledger-dsn", db.dsn)
    assert alone.exit_code == 1, alone.stdout + alone.stderr
    line = alone.stderr.strip()
    assert "\n" not in line
    assert "starts from a baseline" in line and "300 rows" in line
    assert "--table public.t_recovered" in line
    table = cli(*args, "-d", db.dsn, "--table", "public.t_recovered", "--audit", str(audit))
    assert table.exit_code == 0, table.stdout + table.stderr


def test_changes_a_plugin_left_out_before_the_baseline_are_not_lost(
    db: Database, tmp_path: Path, read_mode: str
) -> None:
    """wal2json leaves the updates of a keyless table out of the stream (and warns). Those
    committed before the baseline's point are in the baseline, so nothing is lost; the run
    refused with "left 10 UPDATEs of public.t out of the stream" because the page of the slot
    read that held them was counted as replayed. The test failed before the fix."""
    db.execute("CREATE TABLE t (id integer, v text)")  # no key: REPLICA IDENTITY DEFAULT
    db.create_slot("cdc", "wal2json")
    run_script(
        db,
        [
            "INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 50) g",
            "UPDATE t SET v = 'changed' WHERE id <= 10",  # left out: the baseline holds it
        ],
    )
    point = db.lsn()
    rows = db.execute("SELECT id::text, v FROM t")
    path = tmp_path / "base.parquet"
    table = pa.table({"id": [r[0] for r in rows], "v": [r[1] for r in rows]})
    pq.write_table(table.replace_schema_metadata({b"walrecover.lsn": point.encode()}), path)
    run_script(db, ["INSERT INTO t SELECT g, 'late ' || g FROM generate_series(51, 60) g"])
    drop_with_truth(db)
    before = db.slot_position("cdc")
    result = cli("recover", "-d", db.dsn, "--slot", "cdc", "--table", "public.t",
                 "--baseline", str(path), "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["baseline"]["lsn"] == point
    assert differences(db, "truth", "t_recovered") == (0, 0)
    assert db.slot_position("cdc") == before


def test_changes_left_out_after_the_baseline_are_still_refused(
    db: Database, tmp_path: Path, read_mode: str
) -> None:
    """The same keyless table with an update after the baseline's point: still refused."""
    db.execute("CREATE TABLE t (id integer, v text)")
    db.create_slot("cdc", "wal2json")
    run_script(db, ["INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 50) g"])
    point = db.lsn()
    rows = db.execute("SELECT id::text, v FROM t")
    path = tmp_path / "base.parquet"
    table = pa.table({"id": [r[0] for r in rows], "v": [r[1] for r in rows]})
    pq.write_table(table.replace_schema_metadata({b"walrecover.lsn": point.encode()}), path)
    run_script(db, ["UPDATE t SET v = 'changed' WHERE id <= 10", "INSERT INTO t VALUES (51)"])
    drop_with_truth(db)
    result = cli("recover", "-d", db.dsn, "--slot", "cdc", "--table", "public.t",
                 "--baseline", str(path))  # fmt: skip
    assert result.exit_code == 1, result.stderr
    assert "left 10 UPDATEs of public.t out of the stream" in result.stderr


@pytest.mark.parametrize("protected", ["pgoutput", "wal2json"], indirect=True)
def test_stop_before_drop_from_the_points(db: Database, protected: dict[str, str]) -> None:
    """--from-protect with --stop-before drop: the DROP is found from the relation id the
    newest point recorded (one pass over the WAL, no slot read), the point before it is chosen,
    and the rebuilt table equals the table the DROP removed; later writes to a re-created table
    are left out, and the protect slots do not move. (Refused as a usage error before.)"""
    p = protected
    run_script(
        db,
        [
            "CREATE TABLE t (id integer PRIMARY KEY, amount numeric(14,2), note text)",
            "INSERT INTO t VALUES (1, 0.00, 'after the drop')",
        ],
    )
    slots = [p["first"], p["second"]]
    before = _positions(db, slots)
    base = ["recover", "-d", db.dsn, "--from-protect", p["dir"], "--table", "public.t"]

    result = cli(*base, "--stop-before", "drop", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["slot"] == p["second"]
    assert out["stop_event"]["kind"] == "drop"
    assert out["stop"] == f"before LSN {out['stop_event']['commit_lsn']}"
    assert differences(db, "truth", "t_recovered") == (0, 0)

    text = cli(*base, "--stop-before", "drop", "--into", "public.t_text")
    assert text.exit_code == 0, text.stderr
    assert "walrecover: --stop-before drop: the DROP" in text.stderr
    assert "stopped before the DROP" in text.stdout
    assert differences(db, "truth", "t_text") == (0, 0)

    both = cli(*base, "--stop-before", "drop", "--stop-before-lsn", p["end"])
    assert both.exit_code == 2
    assert "--stop-before finds the event itself" in both.stderr
    assert _positions(db, slots) == before
    assert db.leftover_copies() == []
