"""The batch applier: buffered row changes sent to the target by COPY and pipelined statements.

A batch is sent as one COPY of its inserts followed by its updates, deletes and truncates in
stream order (``executemany(..., returning=True)`` in pipeline mode, runs of the same statement
grouped). That reordering is only correct if no buffered update or delete must run before a
buffered insert, so :meth:`Applier.add` flushes first when an insert's row was touched by one
(or when the identity of a touched row cannot be known), and sends a TRUNCATE alone. The
returned row of an update or delete tells whether its row was found (``no_row`` otherwise) and
gives the audit the values of unchanged TOAST columns. A source transaction whose stop decision
is pending (or that a cut capture may end inside) is guarded by a savepoint when the batch is
flushed in its middle, so it can be taken back.

How a change becomes SQL is in three overridable steps, so that a replay mode is a subclass
(:class:`~.idempotent.IdempotentApplier`, the replay over a baseline whose point is not known:
upsert instead of insert, an update of a missing row inserts it, a delete of a missing row is a
no-op): :meth:`Applier._insert` (the inserts of a batch), :meth:`Applier._statement` (an
update, delete or truncate, built by :mod:`.statements`) and :meth:`Applier._settle` (what the
returned row of an update or delete means).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..db import Connection, connection_lost
from ..errors import ConnectionFailed, PrivilegeError, ReplayError, WalrecoverError, first_line
from ..stream.model import Change, Op, TableName, Values
from .applied import AuditSink, Outcome, Txn, applied_change, at, stop_hint
from .schema import Identity, Shape
from .statements import Statements


@dataclass(slots=True)
class Pending:
    """A buffered change, its transaction, and (once sent) what became of it."""

    change: Change
    txn: Txn
    outcome: Outcome = Outcome.APPLIED
    after: Values | None = None


#: Changes of one statement kind in a stretch from which they go as one set-based statement.
SET_MIN = 16

#: A buffered update, delete or truncate with its statement and parameters.
_Made = tuple[Pending, sql.Composed, list[str | None]]


@dataclass(slots=True)
class _Batch:
    """Changes not yet sent, in stream order, with the indexes of inserts and other ops.

    ``other_keys`` holds the identities of the rows the buffered updates and deletes touch;
    ``unknown`` is set when one of them touches a row whose identity is not known (no key
    yet, a partial old image): then no insert may be copied ahead of them.
    """

    pending: list[Pending] = field(default_factory=list)
    inserts: list[int] = field(default_factory=list)
    others: list[int] = field(default_factory=list)
    other_keys: set[Identity] = field(default_factory=set)
    unknown: bool = False

    def __len__(self) -> int:
        return len(self.pending)

    def mark(self) -> tuple[int, int, int]:
        return len(self.pending), len(self.inserts), len(self.others)

    def truncate(self, mark: tuple[int, int, int]) -> None:
        del self.pending[mark[0] :], self.inserts[mark[1] :], self.others[mark[2] :]

    def split(self, mark: tuple[int, int, int]) -> tuple[_Batch, _Batch]:
        """The part before ``mark``, and the rest re-indexed."""
        head = _Batch(self.pending[: mark[0]], self.inserts[: mark[1]], self.others[: mark[2]])
        rest = _Batch(
            self.pending[mark[0] :],
            [i - mark[0] for i in self.inserts[mark[1] :]],
            [i - mark[0] for i in self.others[mark[2] :]],
            self.other_keys,
            self.unknown,
        )
        return head, rest


class Applier:
    """Buffers a table's changes and sends them to the target in batches."""

    #: An update or delete that finds no row means the rebuilt table lacks a row the table had
    #: (see :func:`.ending.no_row_reason`); a replay mode may expect them instead.
    no_row_unproven = True
    #: A column left out as unchanged TOAST whose value cannot be TOASTed makes the table
    #: unproven (:meth:`.Shape.check_left_out`); a replay mode whose rows may be missing
    #: (so the value read back is not the row's) does not check.
    left_out_checked = True
    #: Runs of keyed updates or deletes of different rows go as one set-based statement
    #: (:meth:`_execute_set`); a mode whose statements are not plain updates and deletes
    #: does not.
    set_based = True

    def __init__(
        self,
        conn: Connection,
        shape: Shape,
        table: TableName,
        *,
        batch_size: int,
        sink: AuditSink | None,
        ddl: str | None,
    ) -> None:
        self.conn = conn
        self.shape = shape
        self.target = shape.target
        self.table = table
        self.batch_size = batch_size
        self.sink = sink
        self.ddl = ddl
        self._batch = _Batch()
        #: The open source transaction, where it starts in the batch, and whether a flush in
        #: its middle must guard it with a savepoint (and has).
        self._txn: Txn | None = None
        self._mark = (0, 0, 0)
        self._guarded = False
        self._savepoint = False
        #: A guarded transaction's failure, held until its commit says whether it counts.
        self._held: ReplayError | None = None
        #: Updates and deletes that found no row since :meth:`take_no_row`.
        self._no_row = 0
        #: The change the target refused, when a send fails (for the error message).
        self._failed: Pending | None = None
        #: Whether the target lets changes of different rows run in any order, for which key.
        self._free = False
        self._free_for: tuple[str, ...] | None = None
        self._statements = Statements()

    # -- transactions ------------------------------------------------------------------------

    def begin(self, txn: Txn, *, guarded: bool) -> None:
        """A source transaction opens; ``guarded``: it may yet be taken back."""
        self._txn, self._guarded, self._savepoint = txn, guarded, False
        self._mark = self._batch.mark()
        self._held = None

    def keep(self) -> None:
        """The open transaction commits before the stop point: keep all of it (or raise the
        failure held while it might still have been past the stop point)."""
        if self._held is not None:
            error, self._held = self._held, None
            raise error
        if self._savepoint:
            self.conn.execute("RELEASE SAVEPOINT walrecover_txn")
            if self.sink is not None:
                self.sink.release_savepoint()
            self._savepoint = False
        self._txn = None

    def take_back(self) -> list[Change]:
        """Leave out the open transaction (past the stop point, or cut): its changes."""
        self._held = None
        left = [p.change for p in self._batch.pending[self._mark[0] :]]
        self._batch.truncate(self._mark)
        if self._savepoint:
            self.conn.execute("ROLLBACK TO SAVEPOINT walrecover_txn")
            if self.sink is not None:
                self.sink.rollback_to_savepoint()
            self._savepoint = False
        self._txn = None
        return left

    def take_no_row(self) -> int:
        """Updates and deletes that found no row since the last call."""
        count, self._no_row = self._no_row, 0
        return count

    # -- buffering ---------------------------------------------------------------------------

    def add(self, change: Change) -> None:
        """Buffer a change of the open transaction, flushing first when order requires it."""
        txn = self._txn
        assert txn is not None
        shape = self.shape
        batch = self._batch
        index = len(batch.pending)
        batch.pending.append(Pending(change, txn))
        if change.op is Op.INSERT:
            # Copied ahead of the buffered updates and deletes only if none can touch its row.
            if batch.others and (
                batch.unknown
                or (identity := shape.row_identity(change.new)) is None
                or identity in batch.other_keys
            ):
                batch.pending.pop()
                self.flush_midway()
                batch = self._batch
                batch.pending.append(Pending(change, txn))
                index = 0
            batch.inserts.append(index)
        elif change.op is Op.TRUNCATE:
            # Nothing may move across a truncate: send what is before it, then it alone.
            batch.pending.pop()
            self.flush_midway()
            self._batch.pending.append(Pending(change, txn))
            self._batch.others.append(0)
            self.flush_midway()
        else:
            batch.others.append(index)
            before = shape.old_identity(change)
            if before is None:
                batch.unknown = True
            else:
                batch.other_keys.add(before)
            after = shape.row_identity(change.new)
            if after is not None:
                batch.other_keys.add(after)
        if len(batch.pending) >= self.batch_size * 4:
            self.flush_midway()

    def identity_changed(self) -> None:
        """Identities of buffered updates and deletes were computed another way: let no insert
        overtake them."""
        if self._batch.others:
            self._batch.unknown = True

    def flush_midway(self) -> None:
        """Flush inside an open source transaction, guarding it with a savepoint if needed.

        A guarded transaction may yet prove past the stop point (test_decoding tells at its
        commit) and be taken back, so a failure of its changes is held until then
        (:meth:`keep` raises it); its later changes wait unsent (an UPDATE test_decoding cannot
        place, in a big transaction after an LSN stop point, refused a recovery that stops
        before it)."""
        if self._held is not None:
            self._batch = _Batch()
            self._mark = (0, 0, 0)
            return
        if self._txn is not None and self._guarded and not self._savepoint:
            head, self._batch = self._batch.split(self._mark)
            self._send(head)
            self.conn.execute("SAVEPOINT walrecover_txn")
            if self.sink is not None:
                self.sink.savepoint()
            self._savepoint = True
        try:
            self.flush()
        except ReplayError as exc:
            if self._txn is None or not self._guarded:
                raise
            self._held = exc
        self._mark = (0, 0, 0)

    def flush(self) -> None:
        """Send everything buffered."""
        batch, self._batch = self._batch, _Batch()
        self._send(batch)

    # -- sending -----------------------------------------------------------------------------

    def _send(self, batch: _Batch) -> None:
        if not batch.pending:
            return
        inserts = [batch.pending[i] for i in batch.inserts]
        self._failed = None
        try:
            if inserts:
                self._insert(inserts)
            if batch.others:
                self._apply_others([batch.pending[i] for i in batch.others])
        except psycopg.Error as exc:
            raise self._failure(exc) from None
        if self.sink is not None:
            self.sink.write(
                [
                    applied_change(
                        p.change,
                        (txn := p.txn).xid,
                        txn.commit_lsn,
                        txn.end_lsn,
                        txn.commit_time,
                        p.outcome,
                        p.after,
                    )
                    for p in batch.pending
                ]
            )

    def _insert(self, inserts: list[Pending]) -> None:
        """Send a batch's inserts: one COPY."""
        columns = self.shape.columns
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            self.target.ident, sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        try:
            with self.conn.cursor() as cur, cur.copy(statement) as copy:
                write_row = copy.write_row
                for item in inserts:
                    new = item.change.new
                    assert new is not None
                    write_row(tuple(map(new.get, columns)))
        except psycopg.Error as exc:
            # COPY's error context names the line (1-based) it stopped at.
            line = _COPY_LINE.search(getattr(exc.diag, "context", None) or "")
            if line is not None and 0 < int(line.group(1)) <= len(inserts):
                self._failed = inserts[int(line.group(1)) - 1]
            raise

    def _apply_others(self, items: list[Pending]) -> None:
        """Run updates, deletes and truncates in order, grouping runs of the same statement.

        Changes of pairwise different rows may run in any order when the target allows it
        (:meth:`_order_free`): the changes are cut into stretches in which no row is touched
        twice, and each stretch sends each statement's changes together, a round trip per kind
        of statement rather than per change (a ledger's corrections and voids interleave, so
        runs in stream order are mostly one change long). Stretches keep their order.
        """
        made = [(item, *self._statement(item.change)) for item in items]
        if len(made) < 3 or not self._order_free():
            self._run_in_order(made)
            return
        stretch: list[_Made] = []
        seen: set[Identity] = set()
        for entry in made:
            rows = self._rows_of(entry[0].change)
            if rows is None or not seen.isdisjoint(rows):
                self._run_grouped(stretch)
                stretch, seen = [], set()
            if rows is None:  # a row not known by its key: alone, in its place
                self._run_in_order([entry])
                continue
            stretch.append(entry)
            seen.update(rows)
        self._run_grouped(stretch)

    def _order_free(self) -> bool:
        """Whether the table has a real key and nothing on the target checks one row against
        another but that key (asked once per key)."""
        key = self.shape.key
        if not key:
            return False
        if self._free_for != key:
            self._free = self.target.rows_independent(key)
            self._free_for = key
        return self._free

    def _rows_of(self, change: Change) -> tuple[Identity, ...] | None:
        """The keys of the rows an update or delete finds and leaves; None if one of them is
        not known (or for a truncate, which touches every row)."""
        if change.op is Op.TRUNCATE:
            return None
        before = self.shape.key_values(change)
        if before is None:
            return None
        if change.op is not Op.UPDATE:
            return (before,)
        after = self.shape.row_identity(change.new)
        if after is None:
            return None
        return (before,) if after == before else (before, after)

    def _run_grouped(self, stretch: list[_Made]) -> None:
        """Send changes of pairwise different rows, each statement's together."""
        groups: list[tuple[sql.Composed, list[tuple[Pending, list[str | None]]]]] = []
        for item, query, params in stretch:
            # A few kinds of statement per batch: a list beats hashing composed SQL.
            group = next((g for s, g in groups if s == query), None)
            if group is None:
                groups.append((query, group := []))
            group.append((item, params))
        for query, group in groups:
            if len(group) >= SET_MIN and self.set_based:
                set_query = self._statements.set_of(query, self.shape, group[0][0].change)
                if set_query is not None and self._execute_set(set_query, group):
                    continue
            self._execute_run(query, group)

    def _execute_set(
        self, statement: sql.Composed, run: list[tuple[Pending, list[str | None]]]
    ) -> bool:
        """Send a run of keyed updates or deletes of pairwise different rows as one statement
        (:func:`.statements.set_statement`); False, with nothing changed, if the target refused
        it (then :meth:`_execute_run` sends them one by one, naming the one refused)."""
        arrays = [list(column) for column in zip(*(params for _, params in run), strict=True)]
        with self.conn.cursor() as cur:
            cur.execute("SAVEPOINT walrecover_set")
            try:
                cur.execute(statement, arrays)
            except psycopg.Error as exc:
                if connection_lost(exc, self.conn):
                    raise
                cur.execute("ROLLBACK TO SAVEPOINT walrecover_set")
                return False
            found = {row[0]: row[1:] for row in cur.fetchall()}
            cur.execute("RELEASE SAVEPOINT walrecover_set")
        for number, (item, _) in enumerate(run, start=1):
            self._settle(item, found.get(number))
        return True

    def _run_in_order(self, made: list[_Made]) -> None:
        """Send changes in stream order, runs of the same statement together."""
        run: list[tuple[Pending, list[str | None]]] = []
        run_sql: sql.Composed | None = None
        for item, query, params in made:
            if run and query != run_sql:
                assert run_sql is not None
                self._execute_run(run_sql, run)
                run = []
            run_sql = query
            run.append((item, params))
        if run:
            assert run_sql is not None
            self._execute_run(run_sql, run)

    def _execute_run(
        self, statement: sql.Composed, run: list[tuple[Pending, list[str | None]]]
    ) -> None:
        with self.conn.cursor() as cur:
            if run[0][0].change.op is Op.TRUNCATE:
                for item, _ in run:
                    self._failed = item
                    cur.execute(statement)
                return
            try:
                cur.executemany(statement, [params for _, params in run], returning=True)
            except psycopg.Error:
                # The results that came back before the error: the next statement failed.
                done = _results(cur)
                self._failed = run[done][0] if done < len(run) else run[0][0]
                raise
            for item, _ in run:
                self._settle(item, cur.fetchone())
                cur.nextset()

    def _settle(self, item: Pending, row: tuple[Any, ...] | None) -> None:
        """What the row an update or delete returned (None: it found no row) means."""
        if row is None:
            item.outcome = Outcome.NO_ROW
            self._no_row += 1
        elif item.change.unchanged_toast:
            held = dict(zip(sorted(item.change.unchanged_toast), row, strict=True))
            if self.left_out_checked:
                self.shape.check_left_out(item.change, held, item.txn)
            item.after = {**(item.change.new or {}), **held}

    # -- statements --------------------------------------------------------------------------

    def _statement(self, change: Change) -> tuple[sql.Composed, list[str | None]]:
        """The statement of an update, delete or truncate, and its parameters."""
        return self._statements.of(self.shape, change, self._txn)

    def _failure(self, exc: psycopg.Error) -> WalrecoverError:
        """The error to raise when the target refused a batch: only a lost connection can be
        cured by a rerun; anything else names the change it refused and what to do."""
        into = self.target.into
        if connection_lost(exc, self.conn):
            return ConnectionFailed(
                f"lost the target connection while applying changes to {into} "
                f"({first_line(exc)}): what was committed is kept; rerun the same command to "
                "resume",
                table=str(into),
            )
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            return PrivilegeError(
                f"cannot write to {into}: {exc.diag.message_primary}; grant the role "
                "INSERT, UPDATE, DELETE and TRUNCATE on it (or build it with another role)",
                table=str(into),
            )
        failed = self._failed
        what = "a change"
        facts: dict[str, Any] = {"table": str(into)}
        if failed is not None:
            what = f"the {failed.change.op}{at(failed.change, failed.txn)}"
            if failed.change.lsn is not None and failed.txn.xid is not None:
                what += f" (transaction {failed.txn.xid})"
            facts.update(lsn=failed.change.lsn, xid=failed.txn.xid)
        reason = f"{exc.diag.message_primary or first_line(exc)}{_context(exc)}"
        if isinstance(exc, psycopg.errors.UniqueViolation):
            return ReplayError(
                f"{what} cannot be applied to {into}: {reason}: a row came back twice, "
                "which happens when the table was dropped and re-created within the stream; "
                "stop before the DROP with --stop-before-lsn (with pg_walinspect in the source "
                "database walrecover finds the DROP itself and rebuilds only the later table)",
                refused=f"{what} cannot be applied to {into}: {reason}",
                **facts,
            )
        if self.ddl is not None:
            advice = (
                "check the --ddl file: its constraints, indexes and column types must accept "
                "every row the table ever held"
            )
        else:
            advice = "the rebuilt table cannot hold it; stop before it with " + stop_hint(
                failed.txn if failed is not None else self._txn
            )
        return ReplayError(f"{what} cannot be applied to {into}: {reason}; {advice}", **facts)


def _context(exc: psycopg.Error) -> str:
    context = getattr(exc.diag, "context", None)
    return f" ({context.splitlines()[0]})" if context else ""


#: Where COPY stopped, in its error context: ``COPY t, line 5, column note: "..."``.
_COPY_LINE = re.compile(r"^COPY .*?, line (\d+)")


def _results(cur: psycopg.Cursor[Any]) -> int:
    """How many statements of a failed ``executemany`` returned before the failing one."""
    if cur.pgresult is None:
        return 0
    count = 1
    with contextlib.suppress(psycopg.Error):
        while cur.nextset():
            count += 1
    return count
