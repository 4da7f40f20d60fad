"""Random histories for the differential oracle (``tests/test_oracle.py``), and their runner.

A :class:`History` is abstract: a table shape and a few steps of operations whose rows are named
by position ("the 3rd row in ctid order", "key hint 7"), so hypothesis can generate and shrink it
without knowing what is in the table. :class:`Runner` plays it on a real database, resolving each
operation against what the session sees at that moment, and records:

- every statement exactly as run (per session, with its row count or its error), to print the
  history that failed as a script;
- the ground truth: ``CREATE UNLOGGED TABLE`` copies of the table (unlogged, so they never reach a
  slot) at the stop marker and just before the final ``DROP TABLE``;
- the stop marker: the WAL insert position, a time and (when the marker is a commit) the xid of
  the transaction about to commit, each a stop point that must give exactly the marker's truth;
- facts about what committed before the stop, which the oracle's allow-list of refusals reads.

The shapes cover the ways a table can be identified (primary key, composite key, replica identity
FULL/NOTHING/USING INDEX, no key, a deferrable key) and values that are hard to carry exactly:
TOASTed text, json and jsonb, numerics with 30+ digits and trailing zeros, float8 ``-0``, NULLs.
Keyless tables get values that are equal under ``=`` but not as text (1.5/1.50, -0/0,
``{"a": 1.0}``/``{"a": 1.00}``) and many duplicate rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import psycopg
from hypothesis import strategies as st
from psycopg import sql

#: The table every history writes, recovers and drops, and a same-named table elsewhere.
TABLE = "t"
OTHER_SCHEMA = "s2"
#: Waiting behind another session of the history (the runner drives them from one thread)
#: fails fast: the statement's transaction is then rolled back, which is history too.
LOCK_TIMEOUT = "300ms"
#: Key values are drawn from a small domain so keys are reused after deletes and key changes.
KEY_DOMAIN = 10


def toast_text(seed: int) -> str:
    """3,200 characters of md5 hex: too long to stay inline and too random to compress, so
    PostgreSQL stores it out of line (TOAST) and an UPDATE that leaves it alone does not log it."""
    return "".join(hashlib.md5(f"{seed}-{i}".encode()).hexdigest() for i in range(100))


@dataclass(frozen=True)
class Kind:
    """A column type, the values a history may write into it (PostgreSQL text, None for NULL),
    and an expression of ``i`` for bulk inserts."""

    name: str
    type: str
    values: tuple[str | None, ...]
    series: str

    def value(self, index: int) -> str | None:
        if self.name == "toast":
            seed = index % (len(self.values))
            return None if self.values[seed] is None else toast_text(seed)
        return self.values[index % len(self.values)]


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("int", "integer", ("0", "1", "2", None), "i % 3"),
        Kind("money", "numeric(12,2)", ("10.00", "5.00", "7.25", "-3.10", None), "i % 50"),
        # Equal under = but not as text: 1.5 and 1.50, 0 and 0.0.
        Kind("num", "numeric", ("1.5", "1.50", "2", "0.0", "0", None), "(i % 9) / 4.0"),
        Kind(
            "bignum",
            "numeric",
            (
                "123456789012345678901234567890.123456789",
                "-98765432109876543210987654321098765",
                "0.000000000000000000000000000000000000010",
                "123456789012345678901234567890.1234567890",
                None,
            ),
            "i * 1000000000000000000000000000001.5",
        ),
        # -0 and 0 are equal under = but print differently.
        Kind("f8", "double precision", ("0", "-0", "1.5", "0.1", None), "(i % 7) / 4.0"),
        Kind(
            "jsonb",
            "jsonb",
            ('{"a": 1.0}', '{"a": 1.00}', '[1, "x"]', "{}", None),
            "'[' || i || ']'",
        ),
        # json has no equality operator at all, and keeps the text as written.
        Kind(
            "json",
            "json",
            ('{"a":1.0}', '{"a":1.00}', '{ "b" : [1, 2] }', '"s"', None),
            "'{\"i\": ' || i || '}'",
        ),
        Kind("text", "text", ("a", "b", 'it\'s "q"', "two\nlines", "", None), "'r' || i"),
        Kind("toast", "text", ("0", "1", "2", None), "md5(i::text)"),
    )
}

#: Column kinds for keyed tables, and the ones that make keyless duplicates interesting.
VALUE_KINDS = tuple(KINDS)


@dataclass(frozen=True)
class KeyKind:
    """How rows of the table are identified."""

    name: str
    #: Key columns (name, type); empty for keyless tables.
    columns: tuple[tuple[str, str], ...]
    #: Table constraint and statements run after CREATE TABLE, as SQL text.
    constraint: str
    after: tuple[str, ...]
    #: The table has no replica identity a publication could use for UPDATE/DELETE: the oracle
    #: gives pgoutput a publication that publishes only INSERT and TRUNCATE (a publication that
    #: publishes updates makes the source refuse every UPDATE and DELETE of such a table).
    no_identity: bool = False
    #: Old rows in the WAL are whole rows (REPLICA IDENTITY FULL).
    full: bool = False

    @property
    def keyed(self) -> bool:
        return bool(self.columns)


KEYS: dict[str, KeyKind] = {
    key.name: key
    for key in (
        KeyKind("pk", (("id", "integer"),), "PRIMARY KEY (id)", ()),
        KeyKind("composite", (("id", "integer"), ("k2", "text")), "PRIMARY KEY (id, k2)", ()),
        KeyKind(
            "pk_full",
            (("id", "integer"),),
            "PRIMARY KEY (id)",
            ("REPLICA IDENTITY FULL",),
            full=True,
        ),
        KeyKind(
            "index",
            (("id", "integer"),),
            "CONSTRAINT t_id_key UNIQUE (id)",
            ("ALTER COLUMN id SET NOT NULL", "REPLICA IDENTITY USING INDEX t_id_key"),
        ),
        KeyKind("full", (), "", ("REPLICA IDENTITY FULL",), full=True),
        KeyKind("default", (), "", (), no_identity=True),
        KeyKind(
            "nothing",
            (("id", "integer"),),
            "PRIMARY KEY (id)",
            ("REPLICA IDENTITY NOTHING",),
            no_identity=True,
        ),
        KeyKind(
            "deferrable",
            (("id", "integer"),),
            "PRIMARY KEY (id) DEFERRABLE INITIALLY DEFERRED",
            (),
            no_identity=True,
        ),
    )
}


@dataclass(frozen=True)
class Shape:
    """The table: how it is keyed and the kinds of its value columns."""

    key: str
    kinds: tuple[str, ...]

    @property
    def key_kind(self) -> KeyKind:
        return KEYS[self.key]

    def column_names(self) -> list[str]:
        return [name for name, _ in self.key_kind.columns] + [
            f"c{n}_{kind}" for n, kind in enumerate(self.kinds)
        ]

    def create(self) -> list[str]:
        """CREATE TABLE and its identity statements, as SQL text."""
        key = self.key_kind
        columns = [f"{name} {type_}" for name, type_ in key.columns]
        columns += [f"c{n}_{kind} {KINDS[kind].type}" for n, kind in enumerate(self.kinds)]
        if key.constraint:
            columns.append(key.constraint)
        statements = [f"CREATE TABLE {TABLE} ({', '.join(columns)})"]
        statements += [f"ALTER TABLE {TABLE} {after}" for after in key.after]
        return statements

    def describe(self) -> str:
        return f"{self.key}({', '.join(self.kinds)})"


# -- operations (resolved against the table when they run) -------------------------------------


@dataclass(frozen=True)
class Row:
    """A row to insert: a key hint (the first free key from it) and value choices, the j-th
    value column taking ``values[j % len(values)]`` of its kind's values."""

    key: int
    values: tuple[int, ...]


@dataclass(frozen=True)
class Insert:
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class Update:
    """Update the ``pick``-th row (ctid order, modulo the row count): the value columns whose
    bit is set in ``columns`` (the first one if none) get ``values``."""

    pick: int
    columns: int
    values: tuple[int, ...]


@dataclass(frozen=True)
class ChangeKey:
    """Give the ``pick``-th row a new key (the first free one from ``key``); keyless tables
    update their first value column instead."""

    pick: int
    key: int


@dataclass(frozen=True)
class Delete:
    pick: int


@dataclass(frozen=True)
class UpdateWhere:
    """``UPDATE t SET <column> = <value> WHERE <where column>::text = <where value>``: many rows,
    duplicates included."""

    column: int
    value: int
    where: int
    where_value: int


@dataclass(frozen=True)
class DeleteWhere:
    column: int
    value: int


@dataclass(frozen=True)
class Truncate:
    pass


@dataclass(frozen=True)
class BigInsert:
    """Insert ``rows`` rows in one statement: with the low ``logical_decoding_work_mem`` the
    transaction is spilled to disk, or streamed by pgoutput with ``streaming=on``."""

    rows: int


@dataclass(frozen=True)
class OtherWrite:
    """A row in ``s2.t``: a table with the same name in another schema, never to be recovered."""

    value: int


Op = (
    Insert
    | Update
    | ChangeKey
    | Delete
    | UpdateWhere
    | DeleteWhere
    | Truncate
    | BigInsert
    | OtherWrite
)


@dataclass(frozen=True)
class AddColumn:
    """``ALTER TABLE t ADD COLUMN`` of ``kind``, with a constant DEFAULT when ``default`` is set
    (existing rows get it from the catalog: the WAL never shows it for them)."""

    kind: str
    default: int | None


@dataclass(frozen=True)
class DropColumn:
    pick: int


@dataclass(frozen=True)
class Recreate:
    """``DROP TABLE t`` and ``CREATE TABLE t`` with the original shape, in one transaction or
    two (``split``); ``beside``: the creating transaction also truncates ``s2.t`` (a rewrite
    of another table, whose files once hid the re-creation from the check after replay)."""

    split: bool
    beside: bool = False


DdlOp = AddColumn | DropColumn | Recreate


# -- steps -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Savepoint:
    """``SAVEPOINT``, the operations, then ``ROLLBACK TO SAVEPOINT`` or ``RELEASE``."""

    ops: tuple[Op, ...]
    rollback: bool


@dataclass(frozen=True)
class Txn:
    """One transaction of the main session, committed or rolled back (aborted)."""

    body: tuple[Op | Savepoint, ...]
    rollback: bool = False


@dataclass(frozen=True)
class Prepared:
    """``PREPARE TRANSACTION``, then ``COMMIT PREPARED`` or ``ROLLBACK PREPARED`` after
    ``resolve_after`` more steps (sooner if a DDL step or the end needs its locks)."""

    ops: tuple[Op, ...]
    commit: bool
    resolve_after: int


@dataclass(frozen=True)
class Concurrent:
    """Two sessions with open transactions at once: their statements interleave as
    ``interleave`` says (True: session B's next), and they commit in the order given, which
    may differ from the order they began in."""

    a: tuple[Op, ...]
    b: tuple[Op, ...]
    interleave: tuple[bool, ...]
    b_commits_first: bool
    a_rollback: bool
    b_rollback: bool


@dataclass(frozen=True)
class Ddl:
    """A schema change in a transaction of its own."""

    op: DdlOp


Step = Txn | Prepared | Concurrent | Ddl


@dataclass(frozen=True)
class History:
    """A table shape, the steps, and which marker opportunity is the stop point (None: none).

    Opportunities are counted as the history runs: the start of every step, the commit of every
    transaction that changed rows of the table, and the end (just before the DROP)."""

    shape: Shape
    steps: tuple[Step, ...]
    stop: int | None
    #: Write into ``s2.t`` after the DROP: the stream goes on past the disaster.
    trailing: bool = False
    #: The operator installed pg_walinspect in the source (the example does so only for a
    #: history that re-creates the table; the README says what cannot be told without it).
    wal: bool = True

    def describe(self) -> str:
        lines = [f"shape {self.shape.describe()}, stop at opportunity {self.stop}"]
        lines += [f"  {step}" for step in self.steps]
        return "\n".join(lines)


# -- strategies --------------------------------------------------------------------------------

small = st.integers(min_value=0, max_value=9)
choices = st.tuples(small, small, small, small)


def rows() -> st.SearchStrategy[Row]:
    return st.builds(Row, key=st.integers(0, 19), values=choices)


def ops(*, truncate: bool, big: bool) -> st.SearchStrategy[Op]:
    options: list[st.SearchStrategy[Any]] = [
        st.builds(Insert, rows=st.lists(rows(), min_size=1, max_size=4).map(tuple)),
        st.builds(Update, pick=small, columns=st.integers(0, 7), values=choices),
        st.builds(ChangeKey, pick=small, key=st.integers(0, 19)),
        st.builds(Delete, pick=small),
        st.builds(UpdateWhere, column=small, value=small, where=small, where_value=small),
        st.builds(DeleteWhere, column=small, value=small),
        st.builds(OtherWrite, value=small),
    ]
    if truncate:
        options.append(st.just(Truncate()))
    if big:
        options.append(st.builds(BigInsert, rows=st.sampled_from((600, 2500))))
    return st.one_of(options)


def op_lists(*, truncate: bool = False, big: bool = False, max_size: int = 4) -> Any:
    return st.lists(ops(truncate=truncate, big=big), min_size=1, max_size=max_size).map(tuple)


def steps(shape: Shape) -> st.SearchStrategy[Step]:
    ddl = st.builds(
        Ddl,
        op=st.one_of(
            st.builds(
                AddColumn,
                kind=st.sampled_from(VALUE_KINDS),
                default=st.none() | small,
            ),
            st.builds(DropColumn, pick=small),
            st.builds(Recreate, split=st.booleans(), beside=st.booleans()),
        ),
    )
    return st.one_of(
        st.builds(
            Txn,
            body=st.lists(
                st.one_of(
                    ops(truncate=True, big=True),
                    st.builds(Savepoint, ops=op_lists(truncate=True), rollback=st.booleans()),
                ),
                min_size=1,
                max_size=4,
            ).map(tuple),
            rollback=st.sampled_from((False, False, False, True)),
        ),
        st.builds(
            Prepared,
            ops=op_lists(big=True),
            commit=st.sampled_from((True, True, False)),
            resolve_after=st.integers(0, 2),
        ),
        st.builds(
            Concurrent,
            a=op_lists(max_size=3),
            b=op_lists(max_size=3),
            interleave=st.lists(st.booleans(), max_size=6).map(tuple),
            b_commits_first=st.booleans(),
            a_rollback=st.sampled_from((False, False, True)),
            b_rollback=st.sampled_from((False, False, True)),
        ),
        ddl,
    )


@st.composite
def histories(draw: st.DrawFn, keys: Sequence[str] = tuple(KEYS)) -> History:
    """A shape and 1-8 steps; the first step always inserts, so the table is in the stream."""
    key = draw(st.sampled_from(tuple(keys)))
    kinds = tuple(draw(st.lists(st.sampled_from(VALUE_KINDS), min_size=1, max_size=3)))
    shape = Shape(key, kinds)
    first = Txn((Insert(tuple(draw(st.lists(rows(), min_size=1, max_size=5)))),))
    rest = draw(st.lists(steps(shape), max_size=7))
    # Opportunities: the start of each step, row-changing commits, the end (about 2 a step).
    stop = draw(
        st.one_of(st.none(), st.integers(0, 2 * len(rest) + 2), st.integers(0, 2 * len(rest) + 2))
    )
    trailing = draw(st.booleans())
    wal = draw(st.sampled_from((True, True, False)))
    return History(shape, (first, *rest), stop, trailing, wal)


# -- running a history -------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """One statement as run: the session (A main, B second, O observer), the SQL, and its
    row count or error."""

    session: str
    text: str
    outcome: str


@dataclass
class Marker:
    """A stop marker: the truth table and the stop points that must rebuild exactly it."""

    opportunity: int
    truth: str
    lsn: str
    time: datetime
    #: The transaction about to commit at the marker (a commit marker), else None.
    xid: int | None
    where: str
    #: The transaction that made the truth table: a catalog change between the table's
    #: changes, which walrecover cannot tell from a DROP TABLE without the WAL.
    snapshot_xid: int | None = None


@dataclass
class Committed:
    """A committed transaction and what it did to the table (rows changed per operation)."""

    number: int
    xid: int | None
    kinds: frozenset[str]
    before_stop: bool = True


@dataclass
class Ran:
    """What :class:`Runner` did: the script, the truths and the stop marker, and the facts."""

    history: History
    statements: list[Statement] = field(default_factory=list)
    committed: list[Committed] = field(default_factory=list)
    marker: Marker | None = None
    #: Columns (name, type) of the table at the end and at the marker.
    end_truth: str = "truth_end"
    #: Names of the columns some ALTER TABLE dropped.
    dropped: set[str] = field(default_factory=set)
    end_lsn: str = ""

    def script(self, width: int = 160) -> str:
        """The history as run, one statement a line (long literals shortened)."""
        lines = []
        for s in self.statements:
            text = _shorten(s.text)
            line = f"{s.session}: {text}"
            if s.outcome:
                line += f"  -- {s.outcome}"
            lines.append(line if len(line) <= width * 3 else line[: width * 3] + " ...")
        return "\n".join(lines)

    def facts(self, upto_stop: bool) -> frozenset[str]:
        """What the committed transactions did (before the stop marker, or all)."""
        found: set[str] = set()
        unseen = False
        for txn in self.committed:
            if upto_stop and not txn.before_stop:
                continue
            found |= txn.kinds
            if "recreate" in txn.kinds:
                unseen = True
            elif txn.kinds & ROW_KINDS:
                unseen = False
        if unseen:
            # The last re-creation has no row change of the new table after it.
            found.add("recreate_unseen")
        return frozenset(found)


#: What a transaction's row changes of the table add to its kinds.
ROW_KINDS: Final = frozenset({"insert", "update", "update_key", "delete", "truncate"})


def _shorten(text: str) -> str:
    out, start = [], 0
    while True:
        i = text.find("'", start)
        if i < 0:
            out.append(text[start:])
            return "".join(out)
        j = i + 1
        while True:
            j = text.find("'", j)
            if j < 0:
                out.append(text[start:])
                return "".join(out)
            if text.startswith("''", j):
                j += 2
                continue
            break
        literal = text[i : j + 1]
        if len(literal) > 80:
            digest = hashlib.md5(literal.encode()).hexdigest()[:8]
            literal = f"'{literal[1:30]}...<{len(literal) - 2} chars, md5 {digest}>'"
        out.append(text[start:i] + literal)
        start = j + 1


class HistoryError(Exception):
    """The runner itself failed (not a statement of the history): a bug in the oracle."""


class _Session:
    """One connection of the history, driven with explicit BEGIN/COMMIT statements."""

    def __init__(self, runner: Runner, label: str) -> None:
        self.runner = runner
        self.label = label
        self.conn = psycopg.connect(runner.dsn, autocommit=True)
        self.conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        self.conn.execute("SET statement_timeout = '60s'")
        self.open = False
        self._failed = False
        self.kinds: set[str] = set()

    def run(self, statement: sql.Composable | str, note_rows: str | None = None) -> int:
        """Run one statement of the history; return its row count. An error marks the open
        transaction failed (the caller rolls it back)."""
        text = statement if isinstance(statement, str) else statement.as_string(self.conn)
        try:
            cur = self.conn.execute(text)
        except psycopg.Error as exc:
            self.runner.log(self.label, text, f"ERROR: {exc.diag.message_primary or exc}")
            self._failed = True
            return -1
        count = cur.rowcount
        self.runner.log(self.label, text, f"{count} rows" if count >= 0 and note_rows else "")
        if note_rows and count > 0:
            self.kinds.add(note_rows)
        return count

    def query(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        """A read the runner needs to resolve an operation (not logged, not history)."""
        return self.conn.execute(statement, params).fetchall()

    def begin(self) -> None:
        if not self.open:
            self.run("BEGIN")
            self.open, self._failed, self.kinds = True, False, set()

    def failed(self) -> bool:
        """True once a statement of the open transaction failed."""
        return self._failed

    def clear(self) -> None:
        self._failed = False

    def xid(self) -> int | None:
        rows = self.query("SELECT txid_current_if_assigned()")
        return None if rows[0][0] is None else int(rows[0][0])

    def close(self) -> None:
        self.conn.close()


class Runner:
    """Plays a :class:`History` on the database ``dsn`` (which has no table ``t`` yet)."""

    def __init__(self, dsn: str, history: History) -> None:
        self.dsn = dsn
        self.history = history
        self.ran = Ran(history)
        self.opportunities = 0
        self.commits = 0
        self.big_inserts = 0
        self.added = 0
        self.pending: list[tuple[str, int, bool, int | None, frozenset[str]]] = []
        self.prepared = 0

    def log(self, session: str, text: str, outcome: str) -> None:
        self.ran.statements.append(Statement(session, text, outcome))

    # -- the whole run -------------------------------------------------------------------------

    def run(self) -> Ran:
        sessions = [_Session(self, "A"), _Session(self, "B")]
        self.a, self.b = sessions
        self.observer = psycopg.connect(self.dsn, autocommit=True)
        try:
            for statement in self.history.shape.create():
                self.a.run(statement)
            if self.a.failed():
                raise HistoryError(f"cannot create the table: {self.ran.script()}")
            for number, step in enumerate(self.history.steps):
                self._resolve_prepared(number, everything=_needs_all_locks(step))
                self._opportunity(None, f"before step {number}")
                self._step(step, number)
            self._resolve_prepared(len(self.history.steps), everything=True)
            self._opportunity(None, "before the DROP")
            self._snapshot(self.ran.end_truth)
            self.a.run(f"DROP TABLE {TABLE}")
            if self.history.trailing:
                self.a.run(f"INSERT INTO {OTHER_SCHEMA}.{TABLE} VALUES (-1, 'after the drop')")
            self.ran.end_lsn = self._insert_lsn()
        finally:
            self._abandon()
            for session in sessions:
                session.close()
            self.observer.close()
        return self.ran

    def _insert_lsn(self) -> str:
        row = self.observer.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        assert row is not None
        return str(row[0])

    def _abandon(self) -> None:
        """Leave nothing open: a prepared transaction would block every later slot creation."""
        for gid, *_ in self.pending:
            with contextlib.suppress(psycopg.Error):
                self.observer.execute(f"ROLLBACK PREPARED '{gid}'")
        self.pending = []

    # -- markers and truths --------------------------------------------------------------------

    def _snapshot(self, name: str) -> int:
        """Copy the table into ``name``; the xid of the transaction that did."""
        with self.observer.transaction():
            self.observer.execute(
                sql.SQL("CREATE UNLOGGED TABLE {} AS SELECT * FROM {}").format(
                    sql.Identifier(name), sql.Identifier(TABLE)
                )
            )
            row = self.observer.execute("SELECT pg_current_xact_id()::text").fetchone()
        assert row is not None
        return int(row[0])

    def _opportunity(self, xid: int | None, where: str) -> None:
        """A moment a stop point may name; the history's ``stop``-th one becomes the marker."""
        number = self.opportunities
        self.opportunities += 1
        if self.history.stop != number or self.ran.marker is not None:
            return
        snapshot_xid = self._snapshot("truth_stop")
        lsn = self._insert_lsn()
        time.sleep(0.02)
        moment = self.observer.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        time.sleep(0.02)
        self.ran.marker = Marker(number, "truth_stop", lsn, moment, xid, where, snapshot_xid)
        self.log("O", f"-- stop marker {number} ({where}): LSN {lsn}, time {moment}, xid {xid}", "")

    def _commit(self, session: _Session, what: str = "COMMIT") -> None:
        """Commit the session's transaction (a commit marker opportunity if it changed rows)."""
        kinds = frozenset(session.kinds)
        eligible = bool(kinds) and "truncate" not in kinds
        xid = session.xid()
        if eligible:
            self._opportunity(xid, f"commit of xid {xid}")
        session.run(what)
        session.open = False
        if session.failed():  # a deferred unique check failed at commit
            self._forget_xid(xid)
            return
        self._committed(xid, kinds)

    def _committed(self, xid: int | None, kinds: frozenset[str]) -> None:
        self.commits += 1
        self.ran.committed.append(
            Committed(self.commits, xid, kinds, before_stop=self.ran.marker is None)
        )

    def _forget_xid(self, xid: int | None) -> None:
        marker = self.ran.marker
        if marker is not None and xid is not None and marker.xid == xid:
            marker.xid = None  # the marker's transaction aborted: only LSN and time stops hold

    def _rollback(self, session: _Session) -> None:
        session.run("ROLLBACK")
        session.open = False
        session.clear()

    # -- steps ---------------------------------------------------------------------------------

    def _step(self, step: Step, number: int) -> None:
        if isinstance(step, Txn):
            self._txn(step)
        elif isinstance(step, Prepared):
            self._prepared(step, number)
        elif isinstance(step, Concurrent):
            self._concurrent(step)
        else:
            self._ddl(step.op)

    def _txn(self, step: Txn) -> None:
        s = self.a
        s.begin()
        savepoints = 0
        for item in step.body:
            if s.failed():
                break
            if isinstance(item, Savepoint):
                savepoints += 1
                name = f"sp{savepoints}"
                kinds_before = set(s.kinds)
                s.run(f"SAVEPOINT {name}")
                for op in item.ops:
                    if s.failed():
                        break
                    self._op(s, op)
                if s.failed():
                    break
                if item.rollback:
                    s.run(f"ROLLBACK TO SAVEPOINT {name}")
                    s.kinds = kinds_before
                else:
                    s.run(f"RELEASE SAVEPOINT {name}")
            else:
                self._op(s, item)
        if s.failed() or step.rollback:
            self._rollback(s)
        else:
            self._commit(s)

    def _prepared(self, step: Prepared, number: int) -> None:
        s = self.a
        s.begin()
        for op in step.ops:
            if s.failed():
                break
            self._op(s, op)
        if s.failed():
            self._rollback(s)
            return
        self.prepared += 1
        gid = f"oracle_{self.prepared}"
        xid = s.xid()
        kinds = frozenset(s.kinds)
        s.run(f"PREPARE TRANSACTION '{gid}'")
        s.open = False
        if s.failed():
            s.clear()
            return
        self.pending.append((gid, number + 1 + step.resolve_after, step.commit, xid, kinds))

    def _resolve_prepared(self, number: int, *, everything: bool) -> None:
        keep = []
        for gid, due, commit, xid, kinds in self.pending:
            if not everything and due > number:
                keep.append((gid, due, commit, xid, kinds))
                continue
            if commit:
                eligible = bool(kinds) and "truncate" not in kinds
                if eligible:
                    self._opportunity(xid, f"COMMIT PREPARED of xid {xid}")
                self.a.run(f"COMMIT PREPARED '{gid}'")
                if self.a.failed():
                    self.a.clear()
                    self._forget_xid(xid)
                else:
                    self._committed(xid, kinds)
            else:
                self.a.run(f"ROLLBACK PREPARED '{gid}'")
                self.a.clear()
        self.pending = keep

    def _concurrent(self, step: Concurrent) -> None:
        queues = {"A": list(step.a), "B": list(step.b)}
        order = list(step.interleave)
        while queues["A"] or queues["B"]:
            pick_b = order.pop(0) if order else not queues["A"]
            label = "B" if (pick_b and queues["B"]) or not queues["A"] else "A"
            op = queues[label].pop(0)
            s = self.a if label == "A" else self.b
            if s.failed():
                continue
            s.begin()
            self._op(s, op)
        ends = [(self.b, step.b_rollback), (self.a, step.a_rollback)]
        if not step.b_commits_first:
            ends.reverse()
        for s, rollback in ends:
            if not s.open:
                continue
            if s.failed() or rollback:
                self._rollback(s)
            else:
                self._commit(s)

    def _ddl(self, op: DdlOp) -> None:
        s = self.a
        s.begin()
        kind = ""
        if isinstance(op, AddColumn):
            self.added += 1
            name = f"a{self.added}_{op.kind}"
            k = KINDS[op.kind]
            statement = sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                sql.Identifier(TABLE), sql.Identifier(name), sql.SQL(k.type)
            )
            kind = "add_column"
            if op.default is not None:
                value = k.value(op.default)
                if value is not None:
                    statement = sql.SQL("{} DEFAULT {}::{}").format(
                        statement, sql.Literal(value), sql.SQL(k.type)
                    )
                    # Rows that exist now get the default from the catalog, not from the WAL.
                    (count,) = s.query(f"SELECT count(*) FROM {TABLE}")[0]
                    if count:
                        kind = "add_column_default"
            s.run(statement)
            s.kinds.add(kind)
        elif isinstance(op, DropColumn):
            values = self._value_columns(s)
            if len(values) < 2:
                self._rollback(s)
                return
            name = values[op.pick % len(values)][0]
            s.run(
                sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(
                    sql.Identifier(TABLE), sql.Identifier(name)
                )
            )
            s.kinds.add("drop_column")
            self.ran.dropped.add(name)
        else:
            s.run(f"DROP TABLE {TABLE}")
            if op.split:
                self._commit_ddl(s, "recreate")
                s.begin()
            if op.beside:
                s.run(f"TRUNCATE {OTHER_SCHEMA}.{TABLE}")
            for create in self.history.shape.create():
                s.run(create)
            s.kinds.add("recreate")
        if s.failed():
            self._rollback(s)
        else:
            self._commit_ddl(s, kind or "recreate")

    def _commit_ddl(self, s: _Session, kind: str) -> None:
        xid = s.xid()
        s.run("COMMIT")
        s.open = False
        if s.failed():
            s.clear()
            return
        self._committed(xid, frozenset(s.kinds | {kind}))
        s.kinds = set()

    # -- operations ----------------------------------------------------------------------------

    def _columns(self, s: _Session) -> list[tuple[str, str]]:
        return [
            (str(r[0]), str(r[1]))
            for r in s.query(
                "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute"
                " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
                " ORDER BY attnum",
                (TABLE,),
            )
        ]

    def _value_columns(self, s: _Session) -> list[tuple[str, Kind]]:
        return [
            (name, KINDS[name.split("_", 1)[1]])
            for name, _ in self._columns(s)
            if name not in ("id", "k2")
        ]

    def _keys(self, s: _Session) -> set[tuple[Any, ...]]:
        key = self.history.shape.key_kind
        names = sql.SQL(", ").join(sql.Identifier(n) for n, _ in key.columns)
        return {
            tuple(r)
            for r in s.query(
                sql.SQL("SELECT {} FROM {}").format(names, sql.Identifier(TABLE)).as_string(s.conn)
            )
        }

    def _free_key(self, hint: int, taken: set[tuple[Any, ...]]) -> tuple[Any, ...] | None:
        composite = len(self.history.shape.key_kind.columns) == 2
        domain = 2 * KEY_DOMAIN if composite else KEY_DOMAIN
        for step in range(domain):
            n = (hint + step) % domain
            key: tuple[Any, ...] = (n % KEY_DOMAIN, "xy"[n // KEY_DOMAIN]) if composite else (n,)
            if key not in taken:
                return key
        return None

    def _picked(self, s: _Session, pick: int) -> sql.Composable | None:
        """``ctid = (...)`` naming the ``pick``-th row, or None if the table is empty."""
        (count,) = s.query(f"SELECT count(*) FROM {TABLE}")[0]
        if not count:
            return None
        return sql.SQL(
            "ctid = (SELECT ctid FROM {t} ORDER BY ctid OFFSET {n} LIMIT 1 FOR UPDATE SKIP LOCKED)"
        ).format(t=sql.Identifier(TABLE), n=sql.Literal(pick % count))

    @staticmethod
    def _literal(kind: Kind, value: str | None) -> sql.Composable:
        if value is None:
            return sql.SQL("NULL")
        return sql.SQL("{}::{}").format(sql.Literal(value), sql.SQL(kind.type))

    def _op(self, s: _Session, op: Op) -> None:  # noqa: PLR0911, PLR0912, PLR0915 (one case per op)
        key = self.history.shape.key_kind
        t = sql.Identifier(TABLE)
        if isinstance(op, OtherWrite):
            s.run(f"INSERT INTO {OTHER_SCHEMA}.{TABLE} VALUES ({op.value}, 'other')")
            return
        if isinstance(op, Truncate):
            s.run(f"TRUNCATE {TABLE}")
            s.kinds.add("truncate")
            return
        values = self._value_columns(s)
        if isinstance(op, Insert):
            taken = self._keys(s) if key.keyed else set()
            tuples = []
            for row in op.rows:
                items: list[sql.Composable] = []
                if key.keyed:
                    chosen = self._free_key(row.key, taken)
                    if chosen is None:
                        continue
                    taken.add(chosen)
                    items += [sql.Literal(v) for v in chosen]
                items += [
                    self._literal(kind, kind.value(row.values[j % len(row.values)]))
                    for j, (_, kind) in enumerate(values)
                ]
                tuples.append(sql.SQL("({})").format(sql.SQL(", ").join(items)))
            if not tuples:
                return
            names = [n for n, _ in key.columns] + [n for n, _ in values]
            s.run(
                sql.SQL("INSERT INTO {} ({}) VALUES {}").format(
                    t, sql.SQL(", ").join(map(sql.Identifier, names)), sql.SQL(", ").join(tuples)
                ),
                "insert",
            )
        elif isinstance(op, BigInsert):
            self.big_inserts += 1
            base = 1000 + 10000 * self.big_inserts
            exprs: list[sql.Composable] = []
            if key.keyed:
                exprs.append(sql.SQL("{} + i").format(sql.Literal(base)))
                if len(key.columns) == 2:
                    exprs.append(sql.Literal("x"))
            exprs += [
                sql.SQL("CAST(({}) AS {})").format(sql.SQL(kind.series), sql.SQL(kind.type))
                for _, kind in values
            ]
            names = [n for n, _ in key.columns] + [n for n, _ in values]
            s.run(
                sql.SQL("INSERT INTO {} ({}) SELECT {} FROM generate_series(1, {}) AS i").format(
                    t,
                    sql.SQL(", ").join(map(sql.Identifier, names)),
                    sql.SQL(", ").join(exprs),
                    sql.Literal(op.rows),
                ),
                "insert",
            )
            s.kinds.add("big")
        elif isinstance(op, Update):
            where = self._picked(s, op.pick)
            if where is None:
                return
            targets = [c for j, c in enumerate(values) if op.columns >> (j % 3) & 1] or values[:1]
            sets = [
                sql.SQL("{} = {}").format(
                    sql.Identifier(name),
                    self._literal(kind, kind.value(op.values[j % len(op.values)])),
                )
                for j, (name, kind) in enumerate(targets)
            ]
            s.run(
                sql.SQL("UPDATE {} SET {} WHERE {}").format(t, sql.SQL(", ").join(sets), where),
                "update",
            )
        elif isinstance(op, ChangeKey):
            where = self._picked(s, op.pick)
            if where is None:
                return
            if not key.keyed:
                name, kind = values[0]
                s.run(
                    sql.SQL("UPDATE {} SET {} = {} WHERE {}").format(
                        t, sql.Identifier(name), self._literal(kind, kind.value(op.key)), where
                    ),
                    "update",
                )
                return
            chosen_key = self._free_key(op.key, self._keys(s))
            if chosen_key is None:
                return
            sets = [
                sql.SQL("{} = {}").format(sql.Identifier(name), sql.Literal(value))
                for (name, _), value in zip(key.columns, chosen_key, strict=True)
            ]
            s.run(
                sql.SQL("UPDATE {} SET {} WHERE {}").format(t, sql.SQL(", ").join(sets), where),
                "update_key",
            )
        elif isinstance(op, Delete):
            where = self._picked(s, op.pick)
            if where is None:
                return
            s.run(sql.SQL("DELETE FROM {} WHERE {}").format(t, where), "delete")
        elif isinstance(op, UpdateWhere):
            name, kind = values[op.column % len(values)]
            wname, wkind = values[op.where % len(values)]
            s.run(
                sql.SQL(
                    "UPDATE {} SET {} = {} WHERE {}::text IS NOT DISTINCT FROM ({})::text"
                ).format(
                    t,
                    sql.Identifier(name),
                    self._literal(kind, kind.value(op.value)),
                    sql.Identifier(wname),
                    self._literal(wkind, wkind.value(op.where_value)),
                ),
                "update",
            )
        elif isinstance(op, DeleteWhere):
            name, kind = values[op.column % len(values)]
            s.run(
                sql.SQL("DELETE FROM {} WHERE {}::text IS NOT DISTINCT FROM ({})::text").format(
                    t, sql.Identifier(name), self._literal(kind, kind.value(op.value))
                ),
                "delete",
            )


def _needs_all_locks(step: Step) -> bool:
    """A step that takes an ACCESS EXCLUSIVE lock (DDL, TRUNCATE) would wait for prepared
    transactions: resolve them first."""
    if isinstance(step, Ddl):
        return True
    if isinstance(step, Txn):
        for item in step.body:
            ops_ = item.ops if isinstance(item, Savepoint) else (item,)
            if any(isinstance(op, Truncate) for op in ops_):
                return True
    return False


def iter_ops(history: History) -> Iterator[Op | DdlOp]:
    for step in history.steps:
        if isinstance(step, Txn):
            for item in step.body:
                yield from item.ops if isinstance(item, Savepoint) else (item,)
        elif isinstance(step, Prepared):
            yield from step.ops
        elif isinstance(step, Concurrent):
            yield from step.a
            yield from step.b
        else:
            yield step.op
