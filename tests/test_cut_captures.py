"""Captures as pg_recvlogical leaves them during an incident, through the CLI, on a real server.

- Cut short (issue 9, item 3): pg_recvlogical stopped (``--endpos``, killed) while writing a
  transaction. Every transaction that committed in the file is recovered, the cut one is left
  out with a warning naming it and the line (or byte) where the file ends; damage before the
  end stays an error; a stop point the file does not reach is not proven (exit 4).
- wal2json's default format (item 4): ``pg_recvlogical -P wal2json`` without options writes
  format 1, read without ``-o``; a stated format that the content contradicts is refused.
- test_decoding two-phase captures (item 4): prepared transactions apply at COMMIT PREPARED,
  are dropped at ROLLBACK PREPARED, and one still undecided is left out, named by its gid.

Each rebuilt table is compared row for row with the real table, snapshotted before the DROP.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from capture_helpers import CAPTURE_OPTIONS, capture_dir, o_args, pg_recvlogical
from click.testing import Result
from helpers import Database, cli, differences, drop_with_truth, run_script

from walrecover.drill.cluster import find_installation
from walrecover.stream.decoders.pgoutput.capture import split_capture

PLUGINS = ["wal2json", "test_decoding", "pgoutput"]
#: A value only the last transaction writes: the file is cut inside it.
MARK = "LAST-TRANSACTION-" + "x" * 200


def _wal2json_missing(plugin: str) -> bool:
    return plugin == "wal2json" and not find_installation().has_plugin("wal2json")


@pytest.fixture
def workdir(db: Database) -> Iterator[Path]:
    directory = capture_dir(db.cluster)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _workload(db: Database, plugin: str, slot: str = "cap") -> None:
    """Three committed transactions (the truth), then a fourth the capture will be cut in.

    The truth table is created before the slot: a CREATE TABLE between t's changes would be a
    catalog change that a capture without LSNs cannot tell from a re-creation of t (exit 4)."""
    db.execute("CREATE TABLE t (id int PRIMARY KEY, amount numeric(12,2), note text)")
    db.execute("CREATE UNLOGGED TABLE truth (LIKE t)")
    if plugin == "pgoutput":
        db.execute("CREATE PUBLICATION capture_pub FOR TABLE t")
    db.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (slot, plugin))
    run_script(
        db,
        [
            "INSERT INTO t SELECT g, g * 1.25, 'row ' || g FROM generate_series(1, 20) g",
            "UPDATE t SET amount = amount + 0.01 WHERE id % 3 = 0",
            "DELETE FROM t WHERE id IN (4, 5)",
        ],
    )
    db.execute("INSERT INTO truth SELECT * FROM t")
    run_script(
        db,
        [
            "BEGIN; INSERT INTO t VALUES (100, 1.00, 'first of the last');"
            f" UPDATE t SET note = '{MARK}' WHERE id = 1;"
            " INSERT INTO t VALUES (101, 2.00, 'after the mark'); COMMIT",
        ],
    )


def _capture(db: Database, plugin: str, path: Path, slot: str = "cap") -> Path:
    pg_recvlogical(db, slot, plugin, path)
    db.execute("DROP TABLE t")
    return path


def _recover(db: Database, path: Path, plugin_args: list[str], *extra: str) -> Result:
    return cli(
        "recover", "--target", db.dsn, "--from-file", str(path), *plugin_args,
        "--table", "public.t", "--into", "public.rebuilt", *extra,
    )  # fmt: skip


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _cut_at(path: Path, offset: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:offset])


@pytest.mark.parametrize(
    ("where", "plugin"),
    # A binary (pgoutput) capture has no line ends to cut at.
    [("mid-message", plugin) for plugin in PLUGINS]
    + [("line end", plugin) for plugin in PLUGINS if plugin != "pgoutput"],
)
def test_a_capture_cut_inside_a_transaction_recovers_what_committed(
    db: Database, workdir: Path, plugin: str, where: str
) -> None:
    if _wal2json_missing(plugin):
        pytest.skip("wal2json is not installed")
    _workload(db, plugin)
    path = _capture(db, plugin, workdir / "cut.capture")
    data = path.read_bytes()
    mark = data.rfind(MARK.encode())
    # In the middle of the message that carries the mark, or just after the line before it.
    cut = mark + 10 if where == "mid-message" else data.rfind(b"\n", 0, mark) + 1
    _cut_at(path, cut)

    result = _recover(db, path, o_args(plugin), "--json")

    assert result.exit_code == 0, result.stderr
    assert differences(db, "truth", "rebuilt") == (0, 0)
    assert db.scalar("SELECT count(*) FROM rebuilt") == 18
    warnings = [w for w in json.loads(result.stdout)["warnings"] if " ends inside " in w]
    assert len(warnings) == 1, result.stdout
    unit = "byte" if plugin == "pgoutput" else "line"
    assert f"{path} ends inside transaction " in warnings[0]
    assert f" at {unit} " in warnings[0]
    assert "was left out" in warnings[0]
    assert "ends inside transaction" in result.stderr  # also on stderr


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_cut_capture_short_of_the_stop_point_is_not_proven(
    db: Database, workdir: Path, plugin: str
) -> None:
    """The cut transaction committed before the stop point: the table at the stop point holds
    it, the rebuilt one cannot (exit 4); stopping before it is exact."""
    if _wal2json_missing(plugin):
        pytest.skip("wal2json is not installed")
    _workload(db, plugin)
    path = _capture(db, plugin, workdir / "cut.capture")
    data = path.read_bytes()
    _cut_at(path, data.rfind(MARK.encode()) + 10)
    stop = ["--stop-before-time", "2999-01-01T00:00:00+00:00"]
    if plugin == "test_decoding":  # its capture has no commit times: a stop xid
        stop = ["--stop-before-xid", "4000000000"]

    result = _recover(db, path, o_args(plugin), *stop)

    assert result.exit_code == 4, result.stderr
    assert "WARNING: not proven exact: the capture ends inside transaction" in result.stderr
    assert "is not in the file" in result.stderr
    assert differences(db, "truth", "rebuilt") == (0, 0)


def test_a_cut_capture_stopped_before_the_cut_transaction_is_exact(
    db: Database, workdir: Path
) -> None:
    _workload(db, "test_decoding")
    path = _capture(db, "test_decoding", workdir / "cut.capture")
    data = path.read_bytes()
    _cut_at(path, data.rfind(MARK.encode()) + 10)
    last_begin = data.rfind(b"BEGIN ", 0, data.rfind(MARK.encode()))
    xid = data[last_begin + 6 : data.index(b"\n", last_begin)].decode()

    result = _recover(db, path, o_args("test_decoding"), "--stop-before-xid", xid)

    assert result.exit_code == 0, result.stderr
    assert differences(db, "truth", "rebuilt") == (0, 0)


@pytest.mark.parametrize(
    "damage",
    ["commit removed", "garbage line", "cut line followed by more"],
)
def test_damage_before_the_end_is_still_an_error(db: Database, workdir: Path, damage: str) -> None:
    _workload(db, "test_decoding")
    path = _capture(db, "test_decoding", workdir / "damaged.capture")
    lines = path.read_bytes().split(b"\n")
    second_commit = [i for i, line in enumerate(lines) if line.startswith(b"COMMIT")][1]
    if damage == "commit removed":  # a transaction that never ends, followed by others
        del lines[second_commit]
        expected = "inside transaction"
    elif damage == "garbage line":
        lines.insert(second_commit, b"\x7b garbage")
        expected = "which test_decoding never prints"
    else:  # a change line cut in the middle, then the rest of the file
        lines[second_commit - 1] = lines[second_commit - 1][:25]
        expected = "malformed"
    path.write_bytes(b"\n".join(lines))

    result = _recover(db, path, o_args("test_decoding"))

    assert result.exit_code == 1, result.stderr
    assert expected in result.stderr
    assert "ends inside" not in result.stderr


def test_pgoutput_damage_before_the_end_is_still_an_error(db: Database, workdir: Path) -> None:
    _workload(db, "pgoutput")
    path = _capture(db, "pgoutput", workdir / "damaged.capture")
    data = bytearray(path.read_bytes())
    # An unknown message type in the middle: the first Insert's type byte. Found by cutting the
    # capture into its messages, since b"\nI" also occurs inside a message (a commit time, an
    # LSN), where changing it is not damage the capture's structure shows.
    offset = 0
    for message in split_capture(bytes(data)):
        if message[:1] == b"I":
            break
        offset += len(message) + 1
    data[offset] = ord("?")
    path.write_bytes(bytes(data))

    result = _recover(db, path, o_args("pgoutput"))

    assert result.exit_code == 1, result.stderr
    assert "unknown message type byte" in result.stderr


# -- wal2json's default output -------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [False, True])
def test_wal2json_default_capture_is_read_without_options(
    db: Database, workdir: Path, chunks: bool
) -> None:
    """pg_recvlogical -P wal2json with no -o (format 1, no xids), or with write-in-chunks."""
    if _wal2json_missing("wal2json"):
        pytest.skip("wal2json is not installed")
    _workload(db, "wal2json")
    options = {"write-in-chunks": "1"} if chunks else {}
    path = pg_recvlogical(db, "cap", "wal2json", workdir / "w.capture", options=options)
    assert path.read_bytes().startswith(b'{"change":[')
    db.execute("DROP TABLE truth")
    drop_with_truth(db)

    result = _recover(db, path, ["--plugin", "wal2json"])

    assert result.exit_code == 0, result.stderr
    assert "the capture is wal2json format-version 1" in result.stderr
    assert differences(db, "truth", "rebuilt") == (0, 0)
    assert db.scalar("SELECT count(*) FROM rebuilt WHERE id IN (100, 101)") == 2

    stated = _recover(db, path, ["--plugin", "wal2json", "-o", "format-version=2", "--force"])
    assert stated.exit_code == 1
    assert "is format-version 1" in stated.stderr
    assert "not format-version 2 as -o format-version=2 says" in stated.stderr


def test_wal2json_format_2_stated_as_1_is_refused(db: Database, workdir: Path) -> None:
    if _wal2json_missing("wal2json"):
        pytest.skip("wal2json is not installed")
    _workload(db, "wal2json")
    path = _capture(db, "wal2json", workdir / "w2.capture")
    options = {**CAPTURE_OPTIONS["wal2json"], "format-version": "1"}
    args = ["--plugin", "wal2json"] + [a for k, v in options.items() for a in ("-o", f"{k}={v}")]

    result = _recover(db, path, args)

    assert result.exit_code == 1
    assert "is format-version 2" in result.stderr


# -- test_decoding two-phase captures --------------------------------------------------------------


def test_test_decoding_two_phase_capture(db: Database, workdir: Path) -> None:
    """Prepared transactions count at COMMIT PREPARED, never after ROLLBACK PREPARED; the one
    still prepared when the capture ends is left out, named by its gid."""
    db.execute("CREATE TABLE t (id int PRIMARY KEY, amount numeric(12,2), note text)")
    db.execute("SELECT pg_create_logical_replication_slot('tp', 'test_decoding', false, true)")
    db.execute("INSERT INTO t SELECT g, g * 1.5, 'row ' || g FROM generate_series(1, 10) g")

    def prepare(gid: str, *statements: str) -> None:
        with db.connect() as conn:
            conn.autocommit = False
            for statement in statements:
                conn.execute(statement)
            conn.execute("PREPARE TRANSACTION " + _literal(gid))

    try:
        prepare(
            "keep", "UPDATE t SET amount = 99.99 WHERE id = 1", "INSERT INTO t VALUES (50, 5, 'p')"
        )
        prepare("it's gone", "DELETE FROM t WHERE id = 2", "INSERT INTO t VALUES (60, 6, 'r')")
        db.execute("UPDATE t SET note = 'between' WHERE id = 3")
        db.execute("COMMIT PREPARED 'keep'")
        db.execute("ROLLBACK PREPARED 'it''s gone'")
        db.execute("DELETE FROM t WHERE id = 50")  # after the prepared insert committed
        prepare("undecided", "UPDATE t SET amount = 0 WHERE id = 4")
        path = pg_recvlogical(db, "tp", "test_decoding", workdir / "tp.capture", options={})
    finally:
        for (gid,) in db.execute(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
        ):
            db.execute("ROLLBACK PREPARED " + _literal(gid))
    drop_with_truth(db)  # the truth: what committed (not the undecided transaction)
    text = path.read_text()
    assert "PREPARE TRANSACTION 'keep'" in text and "ROLLBACK PREPARED 'it''s gone'" in text

    result = _recover(db, path, ["--plugin", "test_decoding"], "--json")

    assert result.exit_code == 0, result.stderr
    assert differences(db, "truth", "rebuilt") == (0, 0)
    warnings = json.loads(result.stdout)["warnings"]
    assert any("prepared transaction 'undecided'" in w and "left out" in w for w in warnings)

    decoded = cli("decode", "--from-file", str(path), "--plugin", "test_decoding")
    assert decoded.exit_code == 0, decoded.stderr
    assert "'r'" not in decoded.stdout and '"note": "r"' not in decoded.stdout
    assert "prepared transaction 'undecided'" in decoded.stderr
