"""``walrecover inspect`` and ``recover --stop-before`` on the real server: the DROP, TRUNCATE and
mass DELETE of a table found through pg_walinspect and through pg_waldump, a re-created table's
two relation ids, what a slot alone tells, and recoveries that stop exactly before the DROP
(pgoutput, where the DROP is not in the stream, and wal2json), compared with the truth. Every
read leaves the user's slot where it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import (
    PASSWORD,
    Database,
    cli,
    differences,
    drop_with_truth,
    run_script,
    source_untouched,
    table_exists,
)
from psycopg.conninfo import make_conninfo

from walrecover.errors import EXIT_ERROR, EXIT_UNPROVEN, StopPointError
from walrecover.incident.inspect import Inspection, inspect_table, resolve_stop_before
from walrecover.incident.waldump import PAGE, record_end
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import TableName

T = TableName("public", "t")
PUBLICATION = "inspect_pub"


def _pgoutput_slot(db: Database) -> None:
    db.execute(f"CREATE PUBLICATION {PUBLICATION} FOR ALL TABLES")
    db.create_slot("cdc", "pgoutput")


def _reader(db: Database, how: str) -> Path | None:
    """pg_walinspect installed in the source, or the cluster's pg_wal read with pg_waldump."""
    if how == "walinspect":
        db.execute("CREATE EXTENSION pg_walinspect")
        return None
    return db.cluster.data / "pg_wal"


def _oid(db: Database, table: str = "t") -> int:
    return int(db.scalar("SELECT %s::regclass::oid::bigint", (table,)))


def _workload(db: Database) -> None:
    """3000 rows, a DELETE of 1500 in one transaction, a TRUNCATE, 10 rows, then the DROP."""
    run_script(
        db,
        [
            "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 3000) g",
            "UPDATE t SET v = 'small' WHERE id <= 5",
            "DELETE FROM t WHERE id > 1500",
            "TRUNCATE t",
            "INSERT INTO t SELECT g, 'w' || g FROM generate_series(1, 10) g",
        ],
    )


@pytest.mark.parametrize("how", ["walinspect", "waldump"])
def test_finds_drop_truncate_and_mass_delete(db: Database, how: str) -> None:
    wal_dir = _reader(db, how)
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    _pgoutput_slot(db)
    oid = _oid(db)
    _workload(db)
    db.execute("DROP TABLE t")
    with source_untouched(db):
        found = inspect_table(db.dsn, T, slot="cdc", wal_dir=wal_dir)
    assert found.wal == ("pg_walinspect" if how == "walinspect" else f"pg_waldump on {wal_dir}")
    kinds = [(e.kind, e.rows, e.relation_id) for e in found.events]
    assert kinds == [("mass delete", 1500, oid), ("truncate", None, oid), ("drop", None, oid)]
    assert [e.found_in for e in found.events] == ["slot", "WAL", "WAL"]
    assert found.counts == {"insert": 3010, "update": 5, "delete": 1500, "truncate": 1}
    assert [r.relation_id for r in found.relations] == [oid]
    drop = found.events[-1]
    assert drop.xid is not None and drop.lsn is not None and drop.time is not None
    assert f"--stop-before-lsn {drop.lsn}" in found.command(drop)
    assert found.relations[0].dropped == drop and not found.relations[0].exists


@pytest.mark.parametrize("how", ["walinspect", "waldump"])
def test_without_a_slot_counts_the_current_tables_rows_in_the_wal(db: Database, how: str) -> None:
    wal_dir = _reader(db, how)
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    oid = _oid(db)
    run_script(
        db,
        [
            "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 3000) g",
            "BEGIN; DELETE FROM t WHERE id > 2990; ROLLBACK",
            "DELETE FROM t WHERE id > 1000",
            "UPDATE t SET v = 'x' WHERE id <= 3",
        ],
    )
    found = inspect_table(db.dsn, T, wal_dir=wal_dir, mass=1000)
    assert found.counts == {"insert": 3000, "delete": 2000, "update": 3}
    assert [(e.kind, e.rows, e.relation_id) for e in found.events] == [("mass delete", 2000, oid)]
    assert found.relations[0].exists and found.relations[0].transactions == 3


@pytest.mark.parametrize("plugin", ["pgoutput", "wal2json"])
def test_a_re_created_table_shows_two_relation_ids(db: Database, plugin: str) -> None:
    db.execute("CREATE EXTENSION pg_walinspect")
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    if plugin == "pgoutput":
        _pgoutput_slot(db)
    else:
        db.create_slot("cdc", "wal2json")
    first = _oid(db)
    run_script(db, ["INSERT INTO t VALUES (1, 'a'), (2, 'b')", "DELETE FROM t WHERE id = 2"])
    db.execute("DROP TABLE t")
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    second = _oid(db)
    run_script(db, ["INSERT INTO t VALUES (7, 'c')"])
    with source_untouched(db):
        found = inspect_table(db.dsn, T, slot="cdc")
    assert [r.relation_id for r in found.relations] == [first, second]
    assert [r.exists for r in found.relations] == [False, True]
    assert [e.kind for e in found.events] == ["drop"]
    assert found.events[0].relation_id == first
    # auto: the newest relation is untouched, so the DROP that ended the one before it.
    assert found.choose("auto") == found.events[0]
    db.execute("DROP TABLE t")
    with source_untouched(db):
        twice = inspect_table(db.dsn, T, slot="cdc")
    assert [(e.kind, e.relation_id) for e in twice.events] == [("drop", first), ("drop", second)]
    with pytest.raises(StopPointError) as raised:
        twice.choose("drop")
    assert "public.t has 2 DROPs in the retained WAL" in str(raised.value)
    assert str(twice.events[1].lsn) in str(raised.value)
    assert twice.choose("auto") == twice.events[1]


def _slot_reader(db: Database) -> str:
    """A role that may read slots (REPLICATION) but neither settings nor pg_walinspect."""
    role = f"oncall_{db.name}"
    db.execute(f"CREATE ROLE {role} LOGIN REPLICATION")
    return make_conninfo(db.dsn, user=role)


def test_a_slot_alone_tells_the_last_change_and_what_came_after(db: Database) -> None:
    """A role that may read the slot but not the server's files or settings, without
    pg_walinspect: the DROP cannot be found; the last change and the transactions after it are
    reported. --stop-before drop stops after the table's last change: the table as the DROP
    found it, with exit 4 saying why that is not proven (a rename could have come first)."""
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    _pgoutput_slot(db)
    run_script(db, ["INSERT INTO t VALUES (1, 'a'), (2, 'b')", "UPDATE t SET v = 'c' WHERE id = 1"])
    drop_with_truth(db)
    db.execute("CREATE TABLE other (id integer)")
    run_script(db, ["INSERT INTO other VALUES (1)", "INSERT INTO other VALUES (2)"])
    dsn = _slot_reader(db)
    with source_untouched(db):
        found = inspect_table(dsn, T, slot="cdc")
    assert found.wal is None and found.wal_problem
    assert "pg_walinspect is not installed" in found.wal_problem
    assert found.events == ()
    last = found.last_change
    assert last is not None and last.counts == {"insert": 2, "update": 1}
    assert found.after_last_change == 2
    assert any("the WAL was not read" in note for note in found.notes)
    with source_untouched(db):
        result = cli(
            "recover", "-d", dsn, "--slot", "cdc", "--table", "public.t", "--target", db.dsn,
            "--into", "public.rebuilt", "--stop-before", "drop", "--json",
        )  # fmt: skip
    assert result.exit_code == EXIT_UNPROVEN, result.stderr
    out = json.loads(result.stdout)
    assert (out["stop_event"]["found_in"], out["stop_event"]["after_lsn"]) == (
        "slot",
        str(last.last_lsn),
    )
    assert "the DROP of public.t was not found in the WAL (pg_walinspect" in result.stderr
    assert differences(db, "truth", "rebuilt") == (0, 0)


def test_a_slot_alone_cannot_place_a_drop_of_a_table_that_exists(db: Database) -> None:
    """Without the WAL, a wal2json stream of a table that exists now cannot tell its changes
    from those of a table dropped before it: --stop-before drop refuses, saying why."""
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    db.create_slot("cdc", "wal2json")
    run_script(db, ["INSERT INTO t VALUES (1, 'a')"])
    dsn = _slot_reader(db)
    with source_untouched(db), pytest.raises(StopPointError) as raised:
        resolve_stop_before(dsn, "cdc", T, "drop")
    assert "cannot find the DROP of public.t: the WAL cannot be read" in str(raised.value)
    assert "public.t exists now, and wal2json changes carry no relation id" in str(raised.value)


@pytest.mark.parametrize("plugin", ["pgoutput", "wal2json", "test_decoding"])
def test_recover_stops_before_the_drop(db: Database, plugin: str) -> None:
    """--stop-before drop: the DROP found in the WAL (pg_waldump on the local pg_wal: no
    extension) is the stop point; later writes to a re-created table are left out; the
    rebuilt table equals the table the DROP removed."""
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text, amount numeric(12, 2))")
    if plugin == "pgoutput":
        _pgoutput_slot(db)
    else:
        db.create_slot("cdc", plugin)
    run_script(
        db,
        [
            "INSERT INTO t SELECT g, 'v' || g, g * 1.25 FROM generate_series(1, 200) g",
            "UPDATE t SET amount = amount + 0.01 WHERE id % 7 = 0",
            "DELETE FROM t WHERE id % 11 = 0",
        ],
    )
    drop_with_truth(db)
    run_script(
        db,
        [
            "CREATE TABLE t (id integer PRIMARY KEY, v text, amount numeric(12, 2))",
            "INSERT INTO t VALUES (1, 'after the drop', 0)",
        ],
    )
    with source_untouched(db):
        result = cli(
            "recover", "-d", db.dsn, "--slot", "cdc", "--table", "public.t",
            "--into", "public.rebuilt", "--stop-before", "drop", "--json",
        )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["stop_event"]["kind"] == "drop"
    assert out["stop"] == f"before LSN {out['stop_event']['commit_lsn']}"
    assert differences(db, "truth", "rebuilt") == (0, 0)
    with source_untouched(db):
        again = cli(
            "recover", "-d", db.dsn, "--slot", "cdc", "--table", "public.t",
            "--into", "public.rebuilt", "--stop-before", "drop",
        )  # fmt: skip
    assert again.exit_code == 0, again.stderr
    assert "stopped before the DROP" in again.stdout


def test_stop_before_truncate_and_auto(db: Database) -> None:
    """--stop-before truncate (wal2json, pg_walinspect) rebuilds the table as the TRUNCATE found
    it; auto picks the first destructive event of the newest relation (a mass DELETE before
    the TRUNCATE); a stop point given twice is a usage error; check --stop-before plans it."""
    db.execute("CREATE EXTENSION pg_walinspect")
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    db.create_slot("cdc", "wal2json")
    run_script(db, ["INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 1500) g"])
    snapshot_before_mass = "CREATE UNLOGGED TABLE before_mass AS SELECT * FROM t"
    run_script(
        db,
        [
            snapshot_before_mass,
            "DELETE FROM t WHERE id > 200",
            "UPDATE t SET v = 'changed' WHERE id <= 10",
            "CREATE UNLOGGED TABLE before_truncate AS SELECT * FROM t",
            "TRUNCATE t",
            "INSERT INTO t VALUES (5000, 'after')",
        ],
    )
    base = ("recover", "-d", db.dsn, "--slot", "cdc", "--table", "public.t")
    with source_untouched(db):
        truncated = cli(*base, "--into", "public.r1", "--stop-before", "truncate", "--json")
        auto = cli(*base, "--into", "public.r2", "--stop-before", "auto", "--json")
        both = cli(*base, "--stop-before", "drop", "--stop-before-lsn", "0/1")
        checked = cli("check", *base[1:], "--into", "public.r3", "--stop-before", "truncate")
    assert truncated.exit_code == 0, truncated.stderr
    assert json.loads(truncated.stdout)["stop_event"]["kind"] == "truncate"
    assert differences(db, "before_truncate", "r1") == (0, 0)
    assert auto.exit_code == 0, auto.stderr
    event = json.loads(auto.stdout)["stop_event"]
    assert (event["kind"], event["rows"]) == ("mass delete", 1300)
    assert differences(db, "before_mass", "r2") == (0, 0)
    assert both.exit_code == 2 and "--stop-before" in both.stderr
    assert checked.exit_code == 0, checked.stderr
    assert "--stop-before truncate: the TRUNCATE" in checked.stderr
    assert not table_exists(db, "r3")


def test_inspect_command_text_and_json(db: Database) -> None:
    db.execute("CREATE EXTENSION pg_walinspect")
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    _pgoutput_slot(db)
    _workload(db)
    db.execute("DROP TABLE t")
    dsn = make_conninfo(db.dsn, password=PASSWORD)
    with source_untouched(db):
        text = cli("inspect", "-d", dsn, "--slot", "cdc", "--table", "public.t")
        as_json = cli(
            "inspect", "-d", dsn, "--slot", "cdc", "--table", "t", "--json",
            "-o", f"publication_names={PUBLICATION}",
        )  # fmt: skip
    assert text.exit_code == 0, text.stderr
    assert PASSWORD not in text.stdout + as_json.stdout
    assert "DROP" in text.stdout and "TRUNCATE" in text.stdout and "MASS DELETE" in text.stdout
    assert "walrecover recover -d" in text.stdout and "--stop-before-lsn" in text.stdout
    data = json.loads(as_json.stdout)
    assert [e["kind"] for e in data["events"]] == ["mass delete", "truncate", "drop"]
    assert data["first_commit"]["lsn"] == data["relations"][0]["first_commit"]["lsn"]
    assert data["last_commit"]["time"] == data["relations"][0]["last_commit"]["time"]
    assert data["events"][-1]["command"].startswith("walrecover recover")
    assert f"-o publication_names={PUBLICATION}" in data["events"][-1]["command"]
    gone = cli("inspect", "-d", db.dsn, "--table", "public.t")
    assert gone.exit_code == EXIT_ERROR
    assert "give --slot" in gone.stderr


def test_record_end_crosses_page_headers() -> None:
    """pg_waldump prints a record's start and length; its end skips the page headers."""
    assert record_end(0x1509AF0, 46, 16 << 20) == Lsn(0x1509B20)
    assert record_end(PAGE - 16, 40, 16 << 20) == Lsn(PAGE + 24 + 24)


def test_inspection_is_json_ready() -> None:
    empty = Inspection("public.t", None, "x", None, None, None, None, 1000, (), ())
    assert json.loads(json.dumps(empty.to_dict()))["counts"] == {}


def test_walinspect_is_installed_only_when_asked(db: Database) -> None:
    """Without --install-walinspect the source is not written (the local pg_wal is read with
    pg_waldump); with it, CREATE EXTENSION runs and the output says so."""
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    run_script(db, ["INSERT INTO t VALUES (1, 'a')"])
    plain = cli("inspect", "-d", db.dsn, "--table", "public.t", "--json")
    assert plain.exit_code == 0, plain.stderr
    assert json.loads(plain.stdout)["wal"].startswith("pg_waldump on ")
    installed = "SELECT count(*) FROM pg_extension WHERE extname = 'pg_walinspect'"
    assert db.scalar(installed) == 0
    asked = cli("inspect", "-d", db.dsn, "--table", "public.t", "--install-walinspect")
    assert asked.exit_code == 0, asked.stderr
    assert "installed pg_walinspect in the source database" in asked.stdout
    assert "1 insert" in asked.stdout
    assert db.scalar(installed) == 1
