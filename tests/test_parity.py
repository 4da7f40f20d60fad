"""Parity: one workload, every plugin, slot and capture file: the same transactions and tables.

``fixtures/parity/`` (recorded by ``scripts/record_parity.py``) holds ONE workload read through
every way walrecover reads a stream: peeks of wal2json (format 2 and 1), test_decoding and
pgoutput (protocol 1; 2 with streaming; 3 with streaming and two-phase) slots with the options
``SlotSource`` sends, and ``pg_recvlogical -f`` captures of each, plus the ground truth.

- (a) Decoded, every source yields the same canonical transactions (xid, op, schema, table,
  new and old images, unchanged TOAST) as the reference, pgoutput protocol 1. The only
  differences allowed are what a plugin genuinely cannot carry; each is normalised by a named
  function below, and each test asserts the difference is really there (so a normalisation
  can never hide a bug in a plugin that *does* carry the data).
- (b) The same workload is run on a live throwaway database, and ``recover`` (through a copy of
  each slot) and ``recover_capture`` (each capture file) rebuild every table; each rebuilt
  table is compared with the ground truth by EXCEPT ALL both ways, again allowing only the
  plugin's documented limits, asserted explicitly.
- (c) Every slot recovery leaves the user's slot where it was and no copy behind.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import FIXTURES, Database
from psycopg import sql

from walrecover.db import Connection, connect, one
from walrecover.drill.cluster import Cluster
from walrecover.errors import ReplayError, WalrecoverError
from walrecover.rebuild.recover import RecoveryResult, recover, recover_capture
from walrecover.stream.decoders import decode_all, make_decoder
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import (
    NO_STOP,
    Change,
    Event,
    RawMessage,
    Relation,
    StopPoint,
    TableName,
    transactions,
)
from walrecover.stream.sources import CaptureSource

PARITY = FIXTURES / "parity"
REFERENCE = ("slot", "pgoutput_v1")
#: Values wal2json prints as JSON null (numeric NaN, float NaN and +-Infinity).
NOT_JSON_NUMBERS = frozenset({"NaN", "Infinity", "-Infinity"})


# -- the fixture ---------------------------------------------------------------------------------


@cache
def expected() -> dict[str, Any]:
    result: dict[str, Any] = json.loads((PARITY / "expected.json").read_text(encoding="utf-8"))
    return result


@cache
def workload() -> dict[str, Any]:
    result: dict[str, Any] = json.loads((PARITY / "workload.json").read_text(encoding="utf-8"))
    return result


def group(kind: str) -> dict[str, Any]:
    """The fixture's description of the slot reads (``slot``) or captures (``capture``)."""
    described: dict[str, Any] = expected()["reads" if kind == "slot" else "captures"]
    return described


SOURCES = [("slot", name) for name in group("slot")] + [
    ("capture", name) for name in group("capture")
]
SOURCE_IDS = [f"{kind}-{name}" for kind, name in SOURCES]


def plugin_of(kind: str, name: str) -> str:
    return str(group(kind)[name]["plugin"])


def user_options(kind: str, name: str) -> dict[str, str]:
    return dict(group(kind)[name]["user_options"])


def table(name: str) -> dict[str, Any]:
    contents: dict[str, Any] = expected()["tables"][f"public.{name}"]
    return contents


def column_names(name: str) -> list[str]:
    return [str(column[0]) for column in table(name)["columns"]]


def generated_columns(name: str) -> set[str]:
    return {str(column[0]) for column in table(name)["columns"] if column[2]}


def float_like_columns(name: str) -> set[str]:
    """Columns whose type wal2json prints as a bare JSON number that can be NaN/Infinity."""
    return {
        str(column[0])
        for column in table(name)["columns"]
        if str(column[1]).startswith(("numeric", "real", "double precision"))
    }


def step(label_start: str) -> dict[str, Any]:
    (found,) = [s for s in expected()["steps"] if s["label"].startswith(label_start)]
    return dict(found)


def read_messages(name: str) -> list[RawMessage]:
    """The recorded rows of one slot read, as SlotSource would yield them."""
    messages = []
    with gzip.open(PARITY / group("slot")[name]["file"], "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            data: str | bytes = bytes.fromhex(row["hex"]) if "hex" in row else row["data"]
            messages.append(RawMessage(data, Lsn.parse(row["lsn"]), int(row["xid"])))
    return messages


def unpack_captures(directory: Path) -> dict[str, Path]:
    """Write each recorded capture, as pg_recvlogical wrote it, into ``directory``."""
    paths = {}
    for name, described in group("capture").items():
        path = directory / f"{name}.capture"
        with gzip.open(PARITY / described["file"], "rb") as fh:
            path.write_bytes(fh.read())
        paths[name] = path
    return paths


@pytest.fixture(scope="session")
def capture_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return unpack_captures(tmp_path_factory.mktemp("parity-captures"))


_decoded: dict[tuple[str, str], list[Event]] = {}


def decoded(kind: str, name: str, captures: dict[str, Path]) -> list[Event]:
    """Every event of one source, through the decoder and (for captures) CaptureSource."""
    key = (kind, name)
    if key not in _decoded:
        if kind == "slot":
            options = dict(group(kind)[name]["options"])
            decoder = make_decoder(plugin_of(kind, name), options)
            _decoded[key] = list(decode_all(decoder, read_messages(name)))
        else:
            source = CaptureSource(
                captures[name], plugin_of(kind, name), options=user_options(kind, name)
            )
            with source:
                decoder = make_decoder(source.plugin, dict(source.options))
                _decoded[key] = list(decode_all(decoder, source.messages()))
    return _decoded[key]


# -- canonical transactions ----------------------------------------------------------------------

Image = dict[str, str | None]


@dataclass(frozen=True)
class CanonChange:
    """What every plugin must agree on about a row change."""

    op: str
    schema: str
    table: str
    new: Image | None
    old: Image | None
    unchanged_toast: tuple[str, ...]


@dataclass(frozen=True)
class CanonTxn:
    xid: int | None
    changes: tuple[CanonChange, ...]


def canonical(events: Sequence[Event]) -> list[CanonTxn]:
    """Committed transactions with row changes, in commit order.

    Transactions without row changes are left out: whether a plugin sends them at all differs
    (test_decoding with skip-empty-xacts off and wal2json send a DDL-only transaction, pgoutput
    does not), and they carry nothing to compare. A transaction one plugin lost entirely would
    still show: the others have it with changes.
    """
    result = []
    for txn in transactions(events):
        if not txn.changes:
            continue
        result.append(
            CanonTxn(
                txn.xid,
                tuple(
                    CanonChange(
                        change.op.value,
                        change.relation.schema,
                        change.relation.name,
                        dict(change.new) if change.new is not None else None,
                        dict(change.old) if change.old is not None else None,
                        tuple(sorted(change.unchanged_toast)),
                    )
                    for change in txn.changes
                ),
            )
        )
    return result


def _map_images(
    txns: list[CanonTxn], edit: Callable[[CanonChange, Image], Image]
) -> list[CanonTxn]:
    def one(change: CanonChange) -> CanonChange:
        return replace(
            change,
            new=None if change.new is None else edit(change, dict(change.new)),
            old=None if change.old is None else edit(change, dict(change.old)),
        )

    return [replace(txn, changes=tuple(one(c) for c in txn.changes)) for txn in txns]


def without_generated_columns(txns: list[CanonTxn]) -> list[CanonTxn]:
    """pgoutput on PostgreSQL 15 does not publish generated columns (``g`` of kinds); wal2json
    and test_decoding print them. Drop them from those plugins' images to compare."""

    def edit(change: CanonChange, image: Image) -> Image:
        return {k: v for k, v in image.items() if k not in generated_columns(change.table)}

    return _map_images(txns, edit)


def as_wal2json_prints(txns: list[CanonTxn]) -> list[CanonTxn]:
    """wal2json prints numeric NaN and float NaN/+-Infinity as JSON null: indistinguishable
    from NULL, so the reference's values become None where wal2json cannot say more."""

    def edit(change: CanonChange, image: Image) -> Image:
        floats = float_like_columns(change.table)
        return {k: None if k in floats and v in NOT_JSON_NUMBERS else v for k, v in image.items()}

    return _map_images(txns, edit)


def without_unchanged_identity(txns: list[CanonTxn]) -> list[CanonTxn]:
    """wal2json sends the replica identity of every UPDATE ("identity" in format 2, "oldkeys"
    in format 1), also when the key did not change; pgoutput and test_decoding send an old key
    only when it changed. An old image that is exactly the new image's unchanged key is the
    same information: drop it."""

    def one(change: CanonChange) -> CanonChange:
        if change.op != "update" or change.old is None or change.new is None:
            return change
        if table(change.table)["replica_identity"] != "default":
            return change
        key = table(change.table)["key"]
        if set(change.old) == set(key) and all(change.new.get(k) == change.old[k] for k in key):
            return replace(change, old=None)
        return change

    return [replace(txn, changes=tuple(one(c) for c in txn.changes)) for txn in txns]


def without_truncates(txns: list[CanonTxn]) -> list[CanonTxn]:
    """wal2json format 1 cannot carry TRUNCATE (the plugin drops it without a trace)."""
    kept = [
        replace(txn, changes=tuple(c for c in txn.changes if c.op != "truncate")) for txn in txns
    ]
    return [txn for txn in kept if txn.changes]


def count_values(txns: list[CanonTxn], test: Callable[[CanonChange, str, str | None], bool]) -> int:
    return sum(
        1
        for txn in txns
        for change in txn.changes
        for image in (change.new, change.old)
        if image is not None
        for column, value in image.items()
        if test(change, column, value)
    )


def _is_not_json_number(change: CanonChange, column: str, value: str | None) -> bool:
    return column in float_like_columns(change.table) and value in NOT_JSON_NUMBERS


def _is_generated(change: CanonChange, column: str, value: str | None) -> bool:
    return column in generated_columns(change.table)


def changes_of(txns: list[CanonTxn], table_name: str, *ops: str) -> list[CanonChange]:
    return [c for t in txns for c in t.changes if c.table == table_name and c.op in ops]


# -- (a) the decoded streams agree -------------------------------------------------------------


def test_fixture_is_small_and_records_every_source() -> None:
    size = sum(path.stat().st_size for path in PARITY.rglob("*") if path.is_file())
    assert size < 1_000_000
    plugins = {plugin_of(kind, name) for kind, name in SOURCES}
    assert plugins == {"wal2json", "pgoutput", "test_decoding"}
    assert set(group("slot")) == set(group("capture"))
    outcomes = {s["outcome"] for s in expected()["steps"]}
    assert outcomes == {"commit", "rollback", "prepare-commit", "prepare-rollback"}


def test_the_reference_holds_exactly_the_committed_work(capture_files: dict[str, Path]) -> None:
    ref = canonical(decoded(*REFERENCE, capture_files))
    committed = [
        s["xid"]
        for s in expected()["steps"]
        if s["outcome"] in ("commit", "prepare-commit")
        and not s["label"].startswith("recreated: dropped")
    ]
    assert [t.xid for t in ref] == committed
    values = {
        v
        for t in ref
        for c in t.changes
        for image in (c.new, c.old)
        if image
        for v in image.values()
        if v is not None
    }
    for rolled_back in ("rolled back", "aborted", "prepared then rolled back", "667", "666"):
        assert rolled_back not in values
    notes = {v for v in values if v.startswith(("rolled back sub", "aborted big"))}
    assert notes == set()
    # The streamed big transaction is whole: 500 + 400 rows inserted (the 400 of the rolled
    # back subtransaction are not), 9 updated, 9 deleted.
    big = step("big: streamed, with")["xid"]
    (txn,) = [t for t in ref if t.xid == big]
    assert [c.op for c in txn.changes].count("insert") == 900
    assert [c.op for c in txn.changes].count("update") == 9
    assert [c.op for c in txn.changes].count("delete") == 9


@pytest.mark.parametrize(("kind", "name"), SOURCES, ids=SOURCE_IDS)
def test_every_source_yields_the_reference_transactions(
    kind: str, name: str, capture_files: dict[str, Path]
) -> None:
    ref = canonical(decoded(*REFERENCE, capture_files))
    got = canonical(decoded(kind, name, capture_files))
    plugin = plugin_of(kind, name)
    if plugin == "pgoutput":
        assert count_values(got, _is_generated) == 0, "PostgreSQL 15 does not publish g"
    else:
        # Every kinds insert and update carries g; the reference never does.
        kinds = changes_of(got, "kinds", "insert", "update")
        assert kinds and all(c.new is not None and "g" in c.new for c in kinds)
        assert count_values(ref, _is_generated) == 0
        got = without_generated_columns(got)
    if plugin == "wal2json":
        assert count_values(ref, _is_not_json_number) >= 5
        assert count_values(got, _is_not_json_number) == 0
        ref = as_wal2json_prints(ref)
        normalised = without_unchanged_identity(got)
        assert normalised != got, "wal2json sends the identity of every update"
        got = normalised
    if name == "wal2json_v1":
        assert changes_of(ref, "staging", "truncate"), "the workload truncates"
        assert not [c for t in got for c in t.changes if c.op == "truncate"]
        ref = without_truncates(ref)
    assert [t.xid for t in got] == [t.xid for t in ref]
    for mine, reference in zip(got, ref, strict=True):
        for index, (a, b) in enumerate(zip(mine.changes, reference.changes, strict=False)):
            assert a == b, f"xid {mine.xid}, change {index}"
        assert len(mine.changes) == len(reference.changes), f"xid {mine.xid}"


def test_the_plugins_that_print_generated_columns_agree_on_them(
    capture_files: dict[str, Path],
) -> None:
    seen: dict[str, list[str | None]] = {}
    for kind, name in SOURCES:
        if plugin_of(kind, name) == "pgoutput":
            continue
        txns = canonical(decoded(kind, name, capture_files))
        seen[f"{kind}-{name}"] = [
            c.new["g"] for c in changes_of(txns, "kinds", "insert", "update") if c.new is not None
        ]
    values = list(seen.values())
    assert values[0] == [
        "24691356.24691356",
        None,
        "-0.00000002",
        "199999999999.99999998",
        "24691356.24691358",
        "-0.00000002",
        None,
        "199999999999.99999998",
    ]
    assert all(v == values[0] for v in values), seen


#: Which transaction positions each source provides (the rest are None):
#: - wal2json format 2 prints the commit record's start (B "lsn") and end ("nextlsn"), and each
#:   change's LSN, in a capture too;
#: - wal2json format 1 has only "nextlsn" (the end); its changes have LSNs only through the SQL
#:   interface (each write-in-chunks row has one);
#: - test_decoding prints no LSN: through SQL the COMMIT row's position is the commit record's
#:   end, a capture has none;
#: - pgoutput's Begin carries the commit LSN and its Commit the end; changes have LSNs only
#:   through the SQL interface.
#: Every plugin gives the commit time (include-timestamp for the text plugins).
POSITIONS: dict[tuple[str, str], set[str]] = {
    ("slot", "wal2json_v2"): {"commit_lsn", "end_lsn", "change_lsn"},
    ("capture", "wal2json_v2"): {"commit_lsn", "end_lsn", "change_lsn"},
    ("slot", "wal2json_v1"): {"end_lsn", "change_lsn"},
    ("capture", "wal2json_v1"): {"end_lsn"},
    ("slot", "test_decoding"): {"end_lsn", "change_lsn"},
    ("capture", "test_decoding"): set(),
    **{("capture", f"pgoutput_v{v}"): {"commit_lsn", "end_lsn"} for v in (1, 2, 3)},
    **{("slot", f"pgoutput_v{v}"): {"commit_lsn", "end_lsn", "change_lsn"} for v in (1, 2, 3)},
}


@pytest.mark.parametrize(("kind", "name"), SOURCES, ids=SOURCE_IDS)
def test_positions_and_times_agree_where_a_plugin_has_them(
    kind: str, name: str, capture_files: dict[str, Path]
) -> None:
    available = POSITIONS[(kind, name)]
    steps = {s["xid"]: s for s in expected()["steps"]}
    txns = [t for t in transactions(decoded(kind, name, capture_files)) if t.changes]
    assert txns
    for txn in txns:
        recorded = steps[txn.xid]
        for field in ("commit_lsn", "end_lsn"):
            value = getattr(txn, field)
            if field in available:
                assert str(value) == recorded[field], (txn.xid, field)
            else:
                assert value is None, (txn.xid, field)
        assert txn.commit_time is not None
        assert txn.commit_time == datetime.fromisoformat(recorded["commit_time"])
        lsns = [c.lsn for c in txn.changes]
        if "change_lsn" in available:
            assert all(lsn is not None for lsn in lsns)
            assert lsns == sorted(lsns, key=int), "changes come in WAL order"  # type: ignore[arg-type]
        else:
            assert all(lsn is None for lsn in lsns)


@pytest.mark.parametrize(("kind", "name"), SOURCES, ids=SOURCE_IDS)
def test_relation_metadata_each_plugin_carries(
    kind: str, name: str, capture_files: dict[str, Path]
) -> None:
    relations: dict[str, Relation] = {}
    ids: dict[str, set[int | None]] = {}
    for event in decoded(kind, name, capture_files):
        if isinstance(event, Change):
            relations.setdefault(event.relation.name, event.relation)
            ids.setdefault(event.relation.name, set()).add(event.relation.relation_id)
    kinds = relations["kinds"]
    types = {c.name: c.type_name for c in kinds.columns}
    plugin = plugin_of(kind, name)
    if plugin == "pgoutput":
        # Relation ids tell the dropped table from the re-created one; typmods are sent.
        recreated = {
            expected()["dropped_relation_ids"]["public.recreated"],
            table("recreated")["relation_id"],
        }
        assert ids["recreated"] == recreated
        assert all(len(found) == 1 for t, found in ids.items() if t != "recreated")
        assert {c.name: c.typmod for c in kinds.columns}["n_c"] == (20 << 16 | 8) + 4
        assert kinds.key_columns == ("id",)
    else:
        # No relation ids: a dropped and re-created table cannot be told from an altered one.
        assert all(found == {None} for found in ids.values())
        assert all(c.typmod is None for c in kinds.columns)
    if plugin == "test_decoding":
        # format_type_be: no type modifiers, and the key is unknown until an old key is printed.
        assert (types["n_c"], types["vc"], types["ch"]) == (
            "numeric",
            "character varying",
            "character",
        )
        assert kinds.key_columns == ()
    else:
        assert (types["n_c"], types["vc"], types["ch"]) == (
            "numeric(20,8)",
            "character varying(20)",
            "character(5)",
        )
    if plugin != "pgoutput":
        assert kinds.key_columns == (("id",) if plugin == "wal2json" else ())
        # pg_recvlogical's session has an empty search_path: user types come schema-qualified.
        assert types["m"] == ("public.mood" if kind == "capture" else "mood")


# -- (b) and (c): recover through every plugin on a live database -------------------------------

#: The tables every plugin must rebuild identically (``recreated`` has a test of its own).
REBUILT = ("kinds", "documents", "fullrows", "staging", "big")


@dataclass
class Live:
    """The workload run on a live database (``source``), tables dropped, and a ``target``
    database holding the ground truth in schema ``truth`` and receiving the rebuilt tables."""

    source: Database
    target: Database
    #: The xid of each workload step on the live database, by label.
    xids: dict[str, int]

    def read(
        self, query: sql.Composed | sql.SQL | str, params: Any = None
    ) -> list[tuple[Any, ...]]:
        with connect(self.target.dsn, autocommit=True) as conn:
            return list(conn.execute(query, params).fetchall())


def run_workload(conn: Connection) -> dict[str, int]:
    """Run ``workload.json`` exactly as the recorder did; return each step's xid by label."""
    xids = {}
    for number, item in enumerate(workload()["steps"], 1):
        conn.execute("BEGIN")
        for statement in item["statements"]:
            conn.execute(statement)
        (xid,) = one(conn, "SELECT pg_current_xact_id()::text::bigint")
        xids[item["label"]] = int(xid)
        gid = f"parity_{number}"
        outcome = item["outcome"]
        if outcome == "commit":
            conn.execute("COMMIT")
        elif outcome == "rollback":
            conn.execute("ROLLBACK")
        else:
            conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
            finish = "COMMIT PREPARED" if outcome == "prepare-commit" else "ROLLBACK PREPARED"
            conn.execute(sql.SQL(finish + " {}").format(sql.Literal(gid)))
    return xids


def copy_rows(conn: Connection, query: sql.Composable) -> list[list[str | None]]:
    rows: list[list[str | None]] = []
    with conn.cursor() as cur, cur.copy(sql.SQL("COPY ({}) TO STDOUT").format(query)) as copy:
        for row in copy.rows():
            rows.append([None if value is None else str(value) for value in row])
    return rows


def ordered(name: str, relation: sql.Composable) -> sql.Composable:
    return sql.SQL("SELECT * FROM {} ORDER BY {}").format(
        relation, sql.SQL(", ").join(map(sql.Identifier, table(name)["order_by"]))
    )


@contextmanager
def fast_wal_writer(cluster: Cluster) -> Iterator[None]:
    """SlotSource waits until the WAL it will read is flushed; the throwaway cluster commits
    asynchronously, so every slot read waits for the WAL writer (200 ms rounds). A faster WAL
    writer while a module runs (reset after it) keeps dozens of slot reads quick."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute("ALTER SYSTEM SET wal_writer_delay = '10ms'")
        admin.execute("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
            admin.execute("ALTER SYSTEM RESET wal_writer_delay")
            admin.execute("SELECT pg_reload_conf()")


@pytest.fixture(scope="module")
def live(cluster: Cluster) -> Iterator[Live]:
    with fast_wal_writer(cluster):
        yield from _live(cluster)


def _live(cluster: Cluster) -> Iterator[Live]:
    names = ("parity_source", "parity_target")
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        for name in names:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        # Big transactions are streamed (pgoutput, protocol 2+) or spilled to disk, as in the
        # recording: every session decoding this database gets the low limit.
        admin.execute("ALTER DATABASE parity_source SET logical_decoding_work_mem = '64kB'")
    source, target = (Database(cluster, name) for name in names)
    try:
        with connect(source.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE PUBLICATION {} FOR ALL TABLES").format(
                    sql.Identifier(workload()["publication"])
                )
            )
            for read in {r["slot"]: r for r in group("slot").values()}.values():
                conn.execute(
                    "SELECT pg_create_logical_replication_slot(%s, %s, false, %s)",
                    (read["slot"], read["plugin"], read["two_phase"]),
                )
            conn.execute(workload()["schema"])
            xids = run_workload(conn)
            for name in expected()["tables"]:
                short = name.removeprefix("public.")
                rows = copy_rows(conn, ordered(short, sql.Identifier(short)))
                assert rows == table(short)["rows"], (
                    f"the live run of {name} differs from the fixture"
                )
            # The disaster.
            conn.execute(
                sql.SQL("DROP TABLE {}").format(
                    sql.SQL(", ").join(
                        sql.Identifier(n.removeprefix("public.")) for n in expected()["tables"]
                    )
                )
            )
        with connect(target.dsn, autocommit=True) as conn:
            # The user types of the workload (the rebuilt tables use them), and the ground truth
            # in schema truth, with the tables' final definitions (generated columns plain).
            conn.execute(workload()["schema"])
            conn.execute("CREATE SCHEMA truth")
            for name in expected()["tables"]:
                short = name.removeprefix("public.")
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(short)))
                conn.execute(ddl_for(short, TableName("truth", short)))
                copy_in = sql.SQL("COPY truth.{} FROM STDIN").format(sql.Identifier(short))
                with conn.cursor() as cur, cur.copy(copy_in) as copy:
                    for row in table(short)["rows"]:
                        copy.write_row(row)
        yield Live(source, target, xids)
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE database = ANY(%s) AND NOT active",
                (list(names),),
            )
            for name in names:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


def ddl_for(name: str, into: TableName) -> str:
    """The table's real definition (what a user gives with --ddl): columns, types, key.
    Generated columns become plain ones, since the stream carries their values."""
    columns = [
        sql.SQL("{} {}").format(sql.Identifier(str(c[0])), sql.SQL(str(c[1])))
        for c in table(name)["columns"]
    ]
    if table(name)["key"]:
        columns.append(
            sql.SQL("PRIMARY KEY ({})").format(
                sql.SQL(", ").join(map(sql.Identifier, table(name)["key"]))
            )
        )
    return (
        sql.SQL("CREATE TABLE {} ({})")
        .format(sql.Identifier(into.schema, into.name), sql.SQL(", ").join(columns))
        .as_string(None)
    )


def rebuilt_columns(live: Live, into: TableName) -> list[str]:
    return [
        str(r[0])
        for r in live.read(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = %s::regclass"
            " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (sql.Identifier(into.schema, into.name).as_string(None),),
        )
    ]


def json_columns(name: str) -> set[str]:
    return {str(c[0]) for c in table(name)["columns"] if c[1] == "json"}


def difference(
    live: Live, name: str, into: TableName, columns: Sequence[str], *, as_wal2json: bool = False
) -> tuple[int, int]:
    """(truth rows missing from the rebuilt table, rebuilt rows not in the truth), EXCEPT ALL.

    ``json`` has no equality operator: compared as text (json keeps its input text exactly).
    ``as_wal2json``: the truth's NaN and +-Infinity in number columns read as NULL.
    """

    def column(c: str, truth: bool) -> sql.Composable:
        ident = sql.Identifier(c)
        if c in json_columns(name):
            return sql.SQL("{}::text").format(ident)
        if truth and as_wal2json and c in float_like_columns(name):
            return sql.SQL(
                "CASE WHEN {c}::text IN ('NaN', 'Infinity', '-Infinity') THEN NULL ELSE {c} END"
            ).format(c=ident)
        return ident

    query = sql.SQL(
        "SELECT (SELECT count(*) FROM"
        " (SELECT {t} FROM truth.{n} EXCEPT ALL SELECT {r} FROM {i}) a),"
        " (SELECT count(*) FROM"
        " (SELECT {r} FROM {i} EXCEPT ALL SELECT {t} FROM truth.{n}) b)"
    ).format(
        t=sql.SQL(", ").join(column(c, True) for c in columns),
        r=sql.SQL(", ").join(column(c, False) for c in columns),
        n=sql.Identifier(name),
        i=sql.Identifier(into.schema, into.name),
    )
    (row,) = live.read(query)
    return int(row[0]), int(row[1])


def check_rebuilt(live: Live, name: str, into: TableName, kind: str, source: str) -> None:
    """The rebuilt table equals the ground truth, but for the plugin's documented limits."""
    plugin = plugin_of(kind, source)
    columns = column_names(name)
    if plugin == "pgoutput":
        # Generated columns are not published (PostgreSQL 15): the rebuilt table lacks them.
        columns = [c for c in columns if c not in generated_columns(name)]
    assert rebuilt_columns(live, into) == columns
    if plugin != "wal2json":
        assert difference(live, name, into, columns) == (0, 0)
        return
    # wal2json: numeric NaN and float NaN/+-Infinity come back as NULL; exactly the truth rows
    # holding one differ until the truth is read the same way.
    every = column_names(name)
    special = sum(
        1
        for row in table(name)["rows"]
        if any(row[every.index(c)] in NOT_JSON_NUMBERS for c in float_like_columns(name))
    )
    assert difference(live, name, into, columns)[0] == special
    if source == "wal2json_v1" and name == "staging":
        # Format 1 cannot carry the TRUNCATE: the rows it removed (and that nothing deleted
        # later) come back, and nothing else differs.
        extra = live.read(
            sql.SQL(
                "SELECT id::text, note FROM {} EXCEPT ALL"
                " SELECT id::text, note FROM truth.staging ORDER BY 1"
            ).format(sql.Identifier(into.schema, into.name))
        )
        assert extra == [("1", "gone"), ("2", "gone too")]
        assert difference(live, name, into, columns, as_wal2json=True) == (0, 2)
        return
    assert difference(live, name, into, columns, as_wal2json=True) == (0, 0)


def recover_slot(live: Live, source: str, name: str, **kwargs: Any) -> RecoveryResult:
    """recover() through a copy of the source's slot, proving the slot did not move and no copy
    was left behind, whether the recovery succeeded or failed."""
    slot = group("slot")[source]["slot"]
    before = live.source.slot_position(slot)
    try:
        return recover(
            live.source.dsn,
            slot,
            TableName("public", name),
            target=live.target.dsn,
            options=user_options("slot", source),
            **kwargs,
        )
    finally:
        assert live.source.slot_position(slot) == before, "walrecover moved the user's slot"
        assert live.source.leftover_copies() == [], "walrecover left a copy slot behind"


#: test_decoding never names the key: it is learnt from the first old key printed (an update
#: that changes the key, or a delete). staging's first UPDATE (key unchanged) must be applied
#: before the TRUNCATE, earlier than any old key of staging: the key must come from --ddl.
NEEDS_DDL = {("test_decoding", "staging")}


@pytest.mark.parametrize("source", list(group("slot")))
def test_recover_through_every_slot_read_builds_identical_tables(live: Live, source: str) -> None:
    plugin = plugin_of("slot", source)
    for name in REBUILT:
        into = TableName("public", f"{name}_slot_{source}")
        ddl = ddl_for(name, into) if (plugin, name) in NEEDS_DDL else None
        result = recover_slot(live, source, name, into=into, ddl=ddl)
        assert result.rows == len(table(name)["rows"]) + (
            2 if (source, name) == ("wal2json_v1", "staging") else 0
        )
        check_rebuilt(live, name, into, "slot", source)
    # The pgoutput reads with streaming really streamed the big transaction on this database.
    if plugin == "pgoutput" and source != "pgoutput_v1":
        read = group("slot")[source]
        flat = [item for pair in read["options"] for item in pair]
        with connect(live.source.dsn, autocommit=True) as conn:
            (streamed,) = one(
                conn,
                "SELECT count(*) FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL,"
                " VARIADIC %s::text[]) WHERE get_byte(data, 0) = ascii('S')",
                (read["slot"], flat),
            )
        assert streamed > 0


@pytest.mark.parametrize("source", list(group("capture")))
def test_recover_capture_of_every_plugin_builds_identical_tables(
    live: Live, source: str, capture_files: dict[str, Path]
) -> None:
    plugin = plugin_of("capture", source)
    for name in REBUILT:
        into = TableName("public", f"{name}_capture_{source}")
        ddl = ddl_for(name, into) if (plugin, name) in NEEDS_DDL else None
        recover_capture(
            capture_files[source],
            plugin,
            TableName("public", name),
            target=live.target.dsn,
            into=into,
            options=user_options("capture", source),
            ddl=ddl,
        )
        check_rebuilt(live, name, into, "capture", source)


@pytest.mark.parametrize("kind", ["slot", "capture"])
def test_without_the_key_test_decoding_asks_for_ddl(
    live: Live, kind: str, capture_files: dict[str, Path]
) -> None:
    """staging has a primary key, but test_decoding has not printed it when an UPDATE must be
    applied: the error must say what to do (give --ddl), not that the table has no key."""
    into = TableName("public", f"staging_noddl_{kind}")
    with pytest.raises(ReplayError) as caught:
        if kind == "slot":
            recover_slot(live, "test_decoding", "staging", into=into)
        else:
            recover_capture(
                capture_files["test_decoding"],
                "test_decoding",
                TableName("public", "staging"),
                target=live.target.dsn,
                into=into,
            )
    message = str(caught.value)
    assert "\n" not in message
    assert "--ddl" in message, message


FIRST_INCARNATION = [("1", "old"), ("2", "old too")]
_LSN = re.compile(r"--stop-before-lsn (\S+)")


@pytest.mark.parametrize(("kind", "source"), SOURCES, ids=SOURCE_IDS)
def test_a_table_dropped_and_recreated_is_never_silently_merged(
    live: Live, kind: str, source: str, capture_files: dict[str, Path]
) -> None:
    """``recreated`` was dropped and created again (with one more column) mid-stream.

    pgoutput's relation ids tell the two tables apart: recovery refuses, naming the LSN to stop
    before. wal2json and test_decoding cannot tell a re-created table from an ALTER TABLE ... ADD
    COLUMN (no relation id, the DDL is not in the stream): they may refuse or follow it as an
    ALTER TABLE, but must say so. Stopping before the re-creation rebuilds the first table
    identically through every plugin.
    """
    plugin = plugin_of(kind, source)
    table_name = TableName("public", "recreated")

    def run(into: str, stop: StopPoint = NO_STOP) -> RecoveryResult:
        target = TableName("public", into)
        if kind == "slot":
            return recover_slot(live, source, "recreated", into=target, stop=stop)
        return recover_capture(
            capture_files[source],
            plugin,
            table_name,
            target=live.target.dsn,
            into=target,
            options=user_options(kind, source),
            stop=stop,
        )

    tag = f"{kind}_{source}"
    if plugin == "pgoutput":
        with pytest.raises(ReplayError) as caught:
            run(f"recreated_all_{tag}")
        message = str(caught.value)
        assert "re-created" in message
        ids = (
            expected()["dropped_relation_ids"]["public.recreated"],
            table("recreated")["relation_id"],
        )
        if kind == "slot":  # the live database's ids, not the recording's
            assert re.search(r"relation id \d+, then \d+", message)
        else:
            assert f"relation id {ids[0]}, then {ids[1]}" in message
        found = _LSN.search(message)
        assert found, message
        stop_lsn = Lsn.parse(found.group(1))  # a position the user can pass on, not "None"
    else:
        try:
            result = run(f"recreated_all_{tag}")
        except WalrecoverError as exc:
            assert "\n" not in str(exc)
        else:
            assert any("ALTER TABLE" in warning for warning in result.warnings), result.warnings
    if plugin == "pgoutput":
        stop = StopPoint(lsn=stop_lsn)
    elif (kind, plugin) == ("capture", "test_decoding"):
        # A test_decoding capture has no positions at all: stop at the re-creating DDL's xid.
        stop = StopPoint(xid=step("recreated: dropped")["xid"])
    elif kind == "capture":
        stop = StopPoint(lsn=Lsn.parse(step("recreated: dropped")["commit_lsn"]))
    else:  # the live database's own position of the re-creating DDL's commit
        stop = StopPoint(lsn=_live_commit_lsn(live, "recreated: dropped"))
    into = f"recreated_first_{tag}"
    run(into, stop)
    rows = live.read(sql.SQL("SELECT id::text, v FROM {} ORDER BY id").format(sql.Identifier(into)))
    assert rows == FIRST_INCARNATION


def _live_commit_lsn(live: Live, label_start: str) -> Lsn:
    """The commit LSN of a workload step on the live database (peeked from the wal2json slot)."""
    (xid,) = [x for label, x in live.xids.items() if label.startswith(label_start)]
    with connect(live.source.dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT data FROM pg_logical_slot_peek_changes('parity_wal2json', NULL, NULL,"
            " 'format-version', '2', 'include-transaction', '1', 'include-lsn', '1',"
            " 'include-xids', '1')"
        ).fetchall()
    (begin,) = [
        obj
        for obj in (json.loads(data) for (data,) in rows)
        if obj["action"] == "B" and int(obj["xid"]) == xid
    ]
    return Lsn.parse(begin["lsn"])
