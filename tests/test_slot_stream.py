"""Reading a slot copy through the streaming replication protocol (issue 12), against SQL pages.

The stream must yield exactly the transactions the pages do (whole ones only, up to the end
LSN seen at open), keep the walsender alive through a long read, fall back to pages where the
server refuses a replication connection, and drop its copy however the read ends. Every test
talks to the session cluster; none moves the user's slot.

Each test runs twice: with the stream read in this process, and in the child process a long read
uses (:mod:`walrecover.stream.sources.reader_process`), whose own tests end the module.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from helpers import (
    SLOT,
    Database,
    cli,
    differences,
    drop_with_truth,
    run_script,
    source_untouched,
)

from walrecover.drill.cluster import Cluster
from walrecover.errors import SlotError
from walrecover.stream.decoders import decode_all, make_decoder
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import Begin, Change, Commit, Event, TableName
from walrecover.stream.sources.reader_process import ENVIRONMENT
from walrecover.stream.sources.replication import streamable
from walrecover.stream.sources.slot import SlotSource

T = TableName("public", "t")


@pytest.fixture(autouse=True, params=["here", "process"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where the stream is read: in this process, or in a child process."""
    monkeypatch.setenv(ENVIRONMENT, "never" if request.param == "here" else "always")
    return str(request.param)


def _options(plugin: str) -> dict[str, str]:
    return {"publication_names": "everything"} if plugin == "pgoutput" else {}


def _setup(db: Database, plugin: str) -> None:
    db.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, v text); CREATE TABLE u (n integer);"
        " CREATE PUBLICATION everything FOR ALL TABLES"
    )
    db.create_slot(SLOT, plugin)


def _commits(events: list[Event]) -> list[int | None]:
    return [e.xid for e in events if isinstance(e, Commit)]


@pytest.mark.parametrize("plugin", ["wal2json", "pgoutput"])
def test_the_stream_yields_exactly_the_transactions_of_the_pages(db: Database, plugin: str) -> None:
    """A transaction that began before the read opened but commits after it, and one made
    after it, are in neither read; the last commit before the open is in both; the events are
    the same, through pages ends (a tiny page size) and all."""
    _setup(db, plugin)
    run_script(
        db,
        [
            "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 30) g",
            "INSERT INTO u SELECT generate_series(1, 500)",
            "UPDATE t SET v = 'w' WHERE id <= 10",
            "DELETE FROM t WHERE id > 25",
        ],
    )
    with db.connect() as open_txn:
        open_txn.execute("BEGIN")
        open_txn.execute("INSERT INTO t VALUES (100, 'straddles the end')")
        straddler = int(open_txn.execute("SELECT txid_current()").fetchone()[0])  # type: ignore[index]
        run_script(db, ["INSERT INTO t VALUES (50, 'the last commit before the end')"])
        last = int(db.scalar("SELECT xmin::text::bigint FROM t WHERE id = 50"))
        read: dict[str, list[Event]] = {}
        progress: list[tuple[str, int, int | None]] = []
        with source_untouched(db):
            stream = SlotSource(db.dsn, SLOT, tables=[T], options=_options(plugin),
                                progress=lambda *a: progress.append(a))  # fmt: skip
            pages = SlotSource(db.dsn, SLOT, tables=[T], options=_options(plugin),
                               read="pages", page_size=7)  # fmt: skip
            with stream, pages:
                open_txn.execute("COMMIT")
                run_script(db, ["INSERT INTO t VALUES (60, 'after the end')"])
                for name, source in (("stream", stream), ("pages", pages)):
                    decoder = make_decoder(source.plugin, dict(source.options), tables=[T])
                    read[name] = list(decode_all(decoder, source.messages()))
                assert stream.reading == "stream" and pages.reading == "pages"
                assert stream.end_lsn is not None
                final = [e for e in read["stream"] if isinstance(e, Commit)][-1]
                assert final.xid == last
                assert final.end_lsn is None or final.end_lsn <= stream.end_lsn
    assert read["stream"] == read["pages"]
    xids = _commits(read["stream"])
    assert last in xids and straddler not in xids
    rows = [e for e in read["stream"] if isinstance(e, Change)]
    assert "100" not in [c.new.get("id") if c.new else None for c in rows]
    assert progress and progress[-1][0] == "read" and progress[-1][1] == progress[-1][2]


def test_a_big_transaction_streams_through_a_short_sender_timeout(db: Database) -> None:
    """wal_sender_timeout of one second, a 60,000-row transaction and a consumer that pauses:
    the status updates keep the walsender alive, and every row arrives."""
    _setup(db, "pgoutput")
    db.execute(f"ALTER DATABASE \"{db.name}\" SET wal_sender_timeout = '1s'")
    run_script(
        db,
        [
            "INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 60000) g",
            "INSERT INTO t VALUES (0, 'after')",
        ],
    )
    inserts = 0
    with (
        source_untouched(db),
        SlotSource(db.dsn, SLOT, tables=[T], options=_options("pgoutput")) as src,
    ):
        assert src.reading == "stream"
        started = time.monotonic()
        for event in src.events():
            if isinstance(event, Change):
                inserts += 1
                if inserts % 5000 == 0:
                    time.sleep(0.3)  # longer in all than the timeout, shorter than half of it
        assert time.monotonic() - started > 2.0
    assert inserts == 60001


@pytest.fixture(scope="module")
def no_walsenders() -> Iterator[Cluster]:
    """A cluster that refuses every replication connection (``max_wal_senders = 0``), as a
    server whose walsenders are all taken, or a connection pooler, does; SQL decoding works."""
    with Cluster(settings={"max_wal_senders": "0"}) as running:
        yield running


def test_a_refused_replication_connection_falls_back_to_pages(
    no_walsenders: Cluster, reader: str
) -> None:
    """The server refuses the replication connection: the copy is read in SQL pages, with the
    same events, the copy dropped, the slot unmoved, and the CLI's rebuild exact."""
    with psycopg.connect(no_walsenders.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE refused_{reader}")
    db = Database(no_walsenders, f"refused_{reader}")
    _setup(db, "wal2json")
    run_script(db, ["INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 20) g",
                    "UPDATE t SET v = 'w' WHERE id < 5"])  # fmt: skip
    with source_untouched(db), SlotSource(db.dsn, SLOT, tables=[T]) as src:
        assert src.reading == "pages"
        assert src.stream_refused is not None and "max_wal_senders" in src.stream_refused
        events = list(src.events())
        assert src.warnings == []
    assert len(_commits(events)) == 2
    assert sum(isinstance(e, Change) for e in events) == 24
    drop_with_truth(db)
    with source_untouched(db):
        result = cli("recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t")
    assert result.exit_code == 0, result.stderr
    assert differences(db, "truth", TableName("public", "t_recovered")) == (0, 0)
    db.execute(f"SELECT pg_drop_replication_slot('{SLOT}')")  # slots are the cluster's


def test_the_copy_is_dropped_when_the_read_stops_early(db: Database) -> None:
    _setup(db, "wal2json")
    run_script(db, [f"INSERT INTO t VALUES ({i}, 'x')" for i in range(20)])
    with source_untouched(db), SlotSource(db.dsn, SLOT, tables=[T]) as src:
        for number, event in enumerate(src.events()):
            if isinstance(event, Begin) and number > 10:
                break
    assert db.leftover_copies() == []


def test_a_walsender_that_dies_mid_stream_is_a_lost_connection(db: Database) -> None:
    """The walsender terminated in the middle of a big transaction: the read fails as a lost
    connection (a rerun resumes), and the copy is still dropped."""
    _setup(db, "wal2json")
    run_script(db, ["INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 50000) g"])
    with source_untouched(db), SlotSource(db.dsn, SLOT, tables=[T]) as src:
        messages = src.messages()
        next(messages)
        killed = db.scalar(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
            " WHERE slot_name LIKE 'walrecover\\_%' AND active"
        )
        assert killed
        with pytest.raises(SlotError, match="lost the source connection"):
            for _ in messages:
                pass
    assert db.leftover_copies() == []


def test_reading_twice_streams_on_a_new_connection(db: Database) -> None:
    """A walsender serves one logical START_REPLICATION: a second read of the same source
    (already consumed: nothing more) opens another."""
    _setup(db, "wal2json")
    run_script(db, ["INSERT INTO t VALUES (1, 'a')"])
    with source_untouched(db), SlotSource(db.dsn, SLOT, tables=[T]) as src:
        assert len(list(src.messages())) == 3
        assert list(src.messages()) == []


def test_read_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="read must be one of"):
        SlotSource(None, SLOT, read="fast")


def test_notices_land_in_the_same_pages_as_in_a_paged_read(db: Database) -> None:
    """wal2json's warnings about changes it left out arrive between the stream's messages; the
    stream files them in pages cut where the page reader cuts (the stop point, the page size),
    so the log of notices is the page reader's, page for page."""
    db.execute("CREATE TABLE t (id integer, v text)")  # no key: updates and deletes left out
    db.create_slot(SLOT, "wal2json")
    run_script(db, [f"INSERT INTO t VALUES ({i}, 'a')" for i in range(1, 13)])
    run_script(db, ["UPDATE t SET v = 'b' WHERE id = 1"])
    stop = Lsn.parse(db.lsn())
    run_script(db, [f"INSERT INTO t VALUES ({i}, 'c')" for i in range(20, 26)])
    run_script(db, ["UPDATE t SET v = 'd' WHERE id = 2", "DELETE FROM t WHERE id = 3",
                    "INSERT INTO t VALUES (30, 'e')", "DELETE FROM t WHERE id = 4"])  # fmt: skip
    logs = {}
    with source_untouched(db):
        for mode in ("stream", "pages"):
            with SlotSource(db.dsn, SLOT, tables=[T], stop_lsn=stop, page_size=9, read=mode) as src:
                assert src.reading == mode
                list(src.messages())
                logs[mode] = [(p.after, p.last, dict(p.notices)) for p in src.notices.pages]
    assert logs["stream"] == logs["pages"]
    assert sum(len(notices) > 0 for _, _, notices in logs["stream"]) >= 2


def test_only_what_carries_the_commit_position_is_streamed() -> None:
    """A Begin must say where its commit record starts (pgoutput's final_lsn, wal2json's lsn)
    and the xid must be in the messages; everything else is read in pages."""
    assert streamable("pgoutput", [("proto_version", "1"), ("publication_names", "p")])
    assert not streamable("pgoutput", [("two_phase", "on")])
    w2j = [("format-version", "2"), ("include-xids", "1"), ("include-lsn", "1"),
           ("include-transaction", "1")]  # fmt: skip
    assert streamable("wal2json", w2j)
    assert not streamable("wal2json", [*w2j, ("include-lsn", "0")])
    assert not streamable("wal2json", [*w2j, ("format-version", "1")])
    assert not streamable("test_decoding", [("include-xids", "1")])
