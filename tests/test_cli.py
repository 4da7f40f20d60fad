"""The ``walrecover`` command, in-process with click's CliRunner and once as a real subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import Result
from helpers import (
    PASSWORD,
    ROOT,
    SLOT,
    Database,
    cli,
    differences,
    drop_with_truth,
    run_script,
    source_untouched,
    stderr_lines,
    stop_workload,
    table_exists,
)
from psycopg.conninfo import make_conninfo

from walrecover.audit.reader import read_metadata
from walrecover.drill.cluster import find_installation
from walrecover.stream.lsn import Lsn

LEDGER = "SELECT id, balance FROM accounts"
LEDGER_ARGS = ("--key", "account_id", "--amount", "amount", "--ledger-query", LEDGER)
#: Off by one in the last of 8 decimals for account 2: a float could not even see it.
WRONG_LEDGER = "SELECT id, balance + CASE WHEN id = 2 THEN 0.00000001 ELSE 0 END FROM accounts"


def bank(db: Database) -> int:
    """Accounts and a ledger ``t`` written after the slot, then dropped; returns its rows."""
    db.execute(
        "CREATE TABLE accounts (id integer PRIMARY KEY, balance numeric(20,8) NOT NULL DEFAULT 0);"
        " CREATE TABLE t (id bigserial PRIMARY KEY, account_id integer NOT NULL,"
        " amount numeric(20,8) NOT NULL)"
    )
    db.execute("INSERT INTO accounts (id) SELECT g FROM generate_series(1, 3) g")
    db.create_slot()
    run_script(
        db,
        [
            "INSERT INTO t (account_id, amount) VALUES (1, 12345678.12345678), (2, 0.00000001)",
            "INSERT INTO t (account_id, amount) VALUES (3, 123456789012.12345678), (1, -0.5)",
            "UPDATE t SET amount = amount + 0.00000001 WHERE id = 2",
            "DELETE FROM t WHERE id = 4",
            "UPDATE accounts a SET balance ="
            " coalesce((SELECT sum(amount) FROM t WHERE account_id = a.id), 0)",
        ],
    )
    return drop_with_truth(db)


def recover_args(dsn: str, *extra: str) -> list[str]:
    return ["recover", "-d", dsn, "--slot", SLOT, "--table", "public.t", *extra]


REQUIRED_KEYS = {
    "table",
    "into",
    "plugin",
    "slot",
    "transactions",
    "changes",
    "rows",
    "first_lsn",
    "last_lsn",
    "seconds",
    "reconciliation",
    "audit",
}


def test_recover_json(db: Database, tmp_path: Path) -> None:
    rows = bank(db)
    path = tmp_path / "audit.parquet"

    with source_untouched(db):
        result = cli(*recover_args(db.dsn, "--json", "--audit", str(path), *LEDGER_ARGS))

    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    out = json.loads(result.stdout)
    assert out.keys() >= REQUIRED_KEYS
    assert (out["table"], out["into"], out["plugin"], out["slot"]) == (
        "public.t",
        "public.t_recovered",
        "wal2json",
        SLOT,
    )
    assert (out["transactions"], out["changes"], out["rows"]) == (4, 6, rows)
    assert Lsn.parse(out["first_lsn"]) < Lsn.parse(out["last_lsn"])
    assert out["seconds"]["total"] >= 0
    assert out["reconciliation"]["matched"] is True
    assert out["reconciliation"]["keys"] == 3
    assert out["audit"]["path"] == str(path)
    assert out["audit"]["rows"] == 6
    assert out["audit"]["chain_head"] and out["audit"]["manifest"]
    assert sum(out["audit"]["outcomes"].values()) == 6
    assert pq.read_metadata(path).num_rows == 6
    assert differences(db, "truth", "t_recovered") == (0, 0)


def test_recover_human_summary(db: Database, tmp_path: Path) -> None:
    rows = bank(db)
    path = tmp_path / "audit.parquet"

    result = cli(*recover_args(db.dsn, "--audit", str(path), *LEDGER_ARGS))

    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert "Rebuilt public.t as public.t_recovered from slot cdc (wal2json)." in text
    assert f"4 transactions, 6 row changes applied, {rows} rows in public.t_recovered." in text
    assert "stop point: end of stream." in text
    assert "reconciled: all 3 keys match the ledger exactly." in text
    assert f"audit: 6 rows in {path}." in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "human"])
def test_reconciliation_differences_exit_3(db: Database, as_json: bool) -> None:
    bank(db)
    args = ["--key", "account_id", "--amount", "amount", "--ledger-query", WRONG_LEDGER]
    if as_json:
        args.append("--json")

    result = cli(*recover_args(db.dsn, *args))

    assert result.exit_code == 3
    assert differences(db, "truth", "t_recovered") == (0, 0)  # the table is rebuilt anyway
    if as_json:
        rec = json.loads(result.stdout)["reconciliation"]
        assert rec["matched"] is False
        assert rec["mismatched"] == 1
        assert Decimal(rec["total_difference"]) == Decimal("-0.00000001")
        (diff,) = rec["differences"]
        assert (diff["key"], diff["status"]) == ("2", "mismatched")
        assert Decimal(diff["recovered"]) == Decimal("0.00000002")
        assert Decimal(diff["ledger"]) == Decimal("0.00000003")
    else:
        assert "NOT reconciled: 1 keys differ" in result.stdout
        # money in plain decimal notation, as the ledger prints it (not 2E-8)
        assert "2: recovered 0.00000002, ledger 0.00000003, delta -0.00000001" in result.stdout
        assert stderr_lines(result) == [
            "walrecover: the rebuilt table does not reconcile with the ledger"
        ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--stop-before-lsn", "0/1", "--stop-before-xid", "5"], "at most one"),
        (
            ["--stop-before-xid", "5", "--stop-before-time", "2024-05-01T10:00:00+00:00"],
            "at most one",
        ),
        (["--key", "account_id"], "needs all of --key, --amount and --ledger-query"),
        (["--key", "account_id", "--amount", "amount"], "needs all of"),
        (["--ledger-query", LEDGER], "needs all of"),
        (["--stop-before-lsn", "nonsense"], "not an LSN"),
        (["--stop-before-lsn", "16/B374D848X"], "not an LSN"),
        (["--stop-before-lsn", "1/2/3"], "not an LSN"),
        (["--stop-before-time", "2024-05-01 10:00"], "no time zone"),
        (["--stop-before-time", "yesterday"], "not an ISO time"),
        (["--stop-before-xid", "0"], "positive"),
        (["--stop-before-xid", "abc"], "not a valid integer"),
        (["--into", "a.b.c"], "not a table name"),
    ],
    ids=[
        "lsn-and-xid",
        "xid-and-time",
        "key-only",
        "key-and-amount",
        "query-only",
        "lsn-word",
        "lsn-trailing",
        "lsn-two-slashes",
        "time-no-zone",
        "time-word",
        "xid-zero",
        "xid-word",
        "into-three-parts",
    ],
)
def test_usage_errors_exit_2_before_touching_anything(
    db: Database, extra: list[str], message: str
) -> None:
    bank(db)

    with source_untouched(db):
        result = cli(*recover_args(db.dsn, *extra))

    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""
    assert not table_exists(db, "t_recovered")


def test_missing_required_option_is_a_usage_error() -> None:
    result = cli("recover", "--table", "public.t")
    assert result.exit_code == 2
    assert "--slot" in result.stderr


def _pre_existing_target(db: Database) -> list[str]:
    db.execute("CREATE TABLE t_recovered (x integer)")
    return []


def _physical_slot(db: Database) -> list[str]:
    db.execute("SELECT pg_create_physical_replication_slot('phys_slot')")
    return ["--slot", "phys_slot"]


def _wal_end_stop(db: Database) -> list[str]:
    return ["--stop-before-lsn", str(Lsn(Lsn.parse(db.lsn()) + (1 << 32)))]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda db: ["--slot", "nope"], "replication slot 'nope' does not exist"),
        (_physical_slot, "is a physical slot"),
        (_pre_existing_target, "already exists: choose another --into, or pass --force"),
        (lambda db: ["--table", "public.never"], "has no change in the stream"),
        (_wal_end_stop, "after the end of the WAL"),
        (lambda db: ["--into", "public.t"], "the table being recovered"),
    ],
    ids=[
        "missing-slot",
        "physical-slot",
        "target-exists",
        "table-not-in-stream",
        "lsn-past-end",
        "into-is-table",
    ],
)
def test_errors_exit_1_with_one_line(
    db: Database, setup: Callable[[Database], list[str]], message: str
) -> None:
    bank(db)
    extra = setup(db)

    with source_untouched(db):
        result = cli(*recover_args(db.dsn, *extra))

    assert result.exit_code == 1
    assert result.stdout == ""
    (line,) = stderr_lines(result)
    assert line.startswith("walrecover: error: ")
    assert message in line


def test_missing_slot_names_the_slots_that_exist(db: Database) -> None:
    bank(db)
    result = cli(*recover_args(db.dsn, "--slot", "nope"))
    (line,) = stderr_lines(result)
    assert "'nope'" in line
    assert "logical slots here: cdc" in line


def test_force_rebuilds_an_existing_target(db: Database) -> None:
    bank(db)
    db.execute("CREATE TABLE t_recovered (x integer); INSERT INTO t_recovered VALUES (1)")

    with source_untouched(db):
        result = cli(*recover_args(db.dsn, "--force", "--json"))

    assert result.exit_code == 0, result.stderr
    assert differences(db, "truth", "t_recovered") == (0, 0)


@pytest.mark.parametrize("kind", ["lsn", "xid", "time"])
def test_stop_options(db: Database, kind: str) -> None:
    work = stop_workload(db)
    value = {"lsn": str(work.lsn), "xid": str(work.stop_xid), "time": work.time.isoformat()}[kind]

    with source_untouched(db):
        result = cli(*recover_args(db.dsn, f"--stop-before-{kind}", value, "--json"))

    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["transactions"] == 2
    assert out["stopped_before"]["xid"] == work.stop_xid
    assert differences(db, "expected", "t_recovered") == (0, 0)


@pytest.mark.parametrize(
    ("args", "example"),
    [
        (["--help"], "walrecover recover -d"),
        (["recover", "--help"], "walrecover recover -d"),
        (["recover", "-h"], "--stop-before-lsn 16/B374D848"),
        (["rehearse", "--help"], "walrecover rehearse --transactions"),
        (["swap", "--help"], "walrecover swap -d"),
        (["--help"], "walrecover swap -d"),
    ],
)
def test_help_shows_an_example(args: list[str], example: str) -> None:
    result = cli(*args)
    assert result.exit_code == 0
    assert example in result.stdout


def test_installed_command_end_to_end(db: Database, tmp_path: Path) -> None:
    executable = shutil.which("walrecover", path=str(Path(sys.executable).parent))
    assert executable is not None, "walrecover is not installed in the venv"
    rows = bank(db)
    path = tmp_path / "audit.parquet"

    with source_untouched(db):
        done = subprocess.run(
            [executable, *recover_args(db.dsn, "--json", "--audit", str(path), *LEDGER_ARGS)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = json.loads(done.stdout)
    assert out["rows"] == rows
    assert out["reconciliation"]["matched"] is True
    assert out["audit"]["rows"] == pq.read_metadata(path).num_rows == 6
    assert differences(db, "truth", "t_recovered") == (0, 0)


# -- passwords never show ---------------------------------------------------------------------


def _conninfo(db: Database) -> str:
    return db.cluster.tcp_dsn(db.name, password=PASSWORD)


def _uri(db: Database) -> str:
    return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{db.cluster.port}/{db.name}"


DSNS: dict[str, Callable[[Database], str]] = {
    "conninfo": _conninfo,
    "uri": _uri,
}


def _no_password(result: Result) -> None:
    assert PASSWORD not in result.stdout
    assert PASSWORD not in result.stderr


@pytest.mark.parametrize("form", DSNS)
def test_password_is_not_shown_after_a_recovery(db: Database, tmp_path: Path, form: str) -> None:
    bank(db)
    dsn = DSNS[form](db)
    path = tmp_path / "audit.parquet"

    result = cli(*recover_args(dsn, "--json", "--audit", str(path), *LEDGER_ARGS))
    human = cli(*recover_args(dsn, "--force", "--into", "public.again", *LEDGER_ARGS))

    assert result.exit_code == human.exit_code == 0, result.stderr + human.stderr
    _no_password(result)
    _no_password(human)
    assert PASSWORD.encode() not in path.read_bytes()
    meta = read_metadata(path)
    assert PASSWORD not in json.dumps(meta)
    assert meta["source"]  # the source is named, without its password
    assert PASSWORD not in json.dumps(db.execute("SELECT * FROM walrecover.progress"), default=str)


def test_password_of_the_target_is_not_shown(db: Database, tmp_path: Path) -> None:
    bank(db)
    path = tmp_path / "audit.parquet"

    result = cli(*recover_args(db.dsn, "--target", _conninfo(db), "--json", "--audit", str(path)))

    assert result.exit_code == 0, result.stderr
    _no_password(result)
    assert PASSWORD.encode() not in path.read_bytes()
    assert f"dbname={db.name}" in read_metadata(path)["target"]


@pytest.mark.parametrize(
    ("dsn", "extra"),
    [
        pytest.param(_conninfo, ["--slot", "nope"], id="conninfo-missing-slot"),
        pytest.param(_uri, ["--slot", "nope"], id="uri-missing-slot"),
        pytest.param(
            lambda db: make_conninfo(_conninfo(db), port="1"), [], id="conninfo-unreachable"
        ),
        pytest.param(
            lambda db: f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/{db.name}",
            [],
            id="uri-unreachable",
        ),
        pytest.param(
            lambda db: f"host=127.0.0.1 password={PASSWORD} dbname='unterminated",
            [],
            id="conninfo-malformed",
        ),
        pytest.param(
            lambda db: f"postgresql://postgres:{PASSWORD}@127.0.0.1:{db.cluster.port}/x?bogus=1",
            [],
            id="uri-malformed",
        ),
    ],
)
def test_password_is_not_shown_in_errors(
    db: Database, dsn: Callable[[Database], str], extra: list[str]
) -> None:
    bank(db)

    result = cli(*recover_args(dsn(db), *extra))

    assert result.exit_code == 1
    _no_password(result)
    (line,) = stderr_lines(result)
    assert line.startswith("walrecover: error: ")
    assert db.leftover_copies() == []


# -- rehearse --------------------------------------------------------------------------------


def test_rehearse_small() -> None:
    result = cli("rehearse", "--transactions", "300", "--accounts", "10", "--json")

    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["identical"] is True
    assert out["reconciled"] is True
    # pgoutput by default: built into PostgreSQL, so the first command needs nothing else.
    assert (out["transactions"], out["accounts"], out["plugin"]) == (300, 10, "pgoutput")
    assert out["rows"] > 0
    assert out["audit_rows"] == out["changes"] > out["rows"]


def test_rehearse_with_wal2json_missing_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An installation without wal2json: the server's binaries, an empty plugin directory.
    real = find_installation()
    bindir = tmp_path / "15" / "bin"
    bindir.mkdir(parents=True)
    (tmp_path / "15" / "lib").mkdir()
    for name in ("initdb", "pg_ctl", "postgres"):
        (bindir / name).symlink_to(real.bindir / name)
    monkeypatch.setenv("WALRECOVER_PG_BINDIR", str(bindir))

    result = cli("rehearse", "--transactions", "10", "--plugin", "wal2json")

    assert result.exit_code == 1
    package = f"postgresql-{real.major}-wal2json"
    assert stderr_lines(result) == [
        f"walrecover: error: output plugin wal2json is not installed for PostgreSQL "
        f"{real.major} (no wal2json.so in {tmp_path / '15' / 'lib'}): install the package "
        f"{package} (sudo apt-get install {package}), or use pgoutput, which is built in"
    ]


def test_every_exit_code_is_mapped_in_one_place() -> None:
    """A command prints its result and raises a verdict (``errors.Differences``, ...) or an
    error; only the group maps them to exit codes, so no command exits by itself."""
    source = (ROOT / "walrecover" / "cli.py").read_text()
    assert "sys.exit(" not in source
