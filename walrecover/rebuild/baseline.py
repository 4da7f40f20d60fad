"""Baseline + changes: rebuild a table older than the slot from an older copy plus the stream.

A slot holds only what was committed after it was created, so a real table is rebuilt from a
baseline (a backup restored elsewhere, a dump, a CSV/Parquet export; see
:mod:`.baseline_sources`) loaded into the rebuilt table when replay creates it, in the same
transaction as its first batch, and the stream's changes replayed on top:

- **Known point** (``--baseline-lsn``, a Parquet file's ``walrecover.lsn``, a paused standby's
  replay LSN): the baseline holds exactly the transactions whose commit record starts before
  it, so only the others are replayed (:func:`after_point`, the mirror of a stop point).
- **Unknown point**: the whole stream is replayed with idempotent semantics (replay's
  ``idempotent`` flag: an insert of an existing key replaces it, an update of a missing key
  inserts its image, a delete of a missing key is a no-op). For a table with a primary key this
  converges to the table at the stop point provided the stream starts no later than the
  baseline; a keyless table needs a known point.

Either way the stream must *cover* the baseline: start at or before its point. A slot copy's
start is known before a row is read; a capture shows it by a transaction committed before the
point. What cannot be shown is a *gap* (changes between the copy and the stream's start may be
lost): refused, or with ``accept_gap`` recorded as a reason the rebuilt table is not proven
exact (exit 4). The audit records the baseline: source, point, rows and a hash of its rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import sql

from ..db import Connection
from ..errors import BaselineError, TableNotInStream
from ..stream.lsn import Lsn
from ..stream.model import Begin, Change, Commit, Event, Op, StartPoint, StopPoint, TableName
from .baseline_sources import BaselineRows, open_rows
from .target import Target


@dataclass(frozen=True)
class BaselineOptions:
    """What ``recover --baseline`` was given: a ``file`` or a database ``dsn``."""

    file: Path | None = None
    dsn: str | None = None
    #: The table's name in the baseline (default: the table being recovered).
    table: TableName | None = None
    #: The LSN the baseline is consistent at (``--baseline-lsn``), if the user knows it.
    lsn: Lsn | None = None
    #: Accept a stream that cannot be shown to cover the baseline (exit 4, recorded).
    accept_gap: bool = False
    #: The protect recovery point the baseline is (``recover --from-protect``): its directory,
    #: slot and snapshot time, recorded in the result and the audit.
    recovery_point: Mapping[str, str] | None = None

    def identity(self) -> str:
        """What decides the rebuilt rows, for the command's identity."""
        where = str(self.file.resolve()) if self.file is not None else f"dsn {self.dsn}"
        parts = [where, f"table {self.table}" if self.table else "", f"lsn {self.lsn or '-'}"]
        return "; ".join(part for part in parts if part)


class Baseline:
    """An opened baseline: its rows, its point, and the coverage proof of the stream."""

    def __init__(self, options: BaselineOptions, table: TableName) -> None:
        self.options = options
        self.recovered = table
        self.table = options.table or table
        self.rows: BaselineRows = open_rows(
            file=options.file, dsn=options.dsn, table=self.table, lsn=options.lsn
        )
        given, found = options.lsn, self.rows.lsn
        if given is not None and found is not None and given != found:
            self.rows.close()
            raise BaselineError(
                f"--baseline-lsn {given} differs from the LSN the baseline records ({found}): "
                "check which is right and give that one (or leave --baseline-lsn out)"
            )
        #: The exact point: the baseline holds the transactions committed before it.
        self.point: Lsn | None = given or found
        #: A lower bound of the point (replay of the whole stream is then idempotent).
        self.at_least: Lsn | None = None if self.point else self.rows.at_least
        #: What cannot be proven about the stream's coverage (accepted), or None.
        self.gap: str | None = None
        self.loaded_rows: int | None = None
        self.rows_sha256: str | None = None
        #: The stream's first change of the table is a TRUNCATE: it removes every baseline
        #: row, which is then not loaded (replay creates the table at the next change).
        self.truncated = False
        self._seen_change = False
        self._covered = False

    @property
    def idempotent(self) -> bool:
        """Replay the whole stream idempotently (the point is not known exactly)."""
        return self.point is None

    def describe_point(self) -> str:
        if self.point is not None:
            return f"LSN {self.point}"
        if self.at_least is not None:
            return f"an unknown LSN at or after {self.at_least}"
        return "an unknown point"

    # -- coverage ---------------------------------------------------------------------------------

    def check_start(self, start: Lsn | None, stop: StopPoint) -> None:
        """Before replay: the stop point must lie after the baseline, and a slot copy that
        starts at ``start`` must start at or before the baseline's point (``None``: a capture,
        whose first transaction tells, see :meth:`follow`)."""
        if self.point is not None and stop.lsn is not None and stop.lsn <= self.point:
            raise BaselineError(
                f"the stop point ({stop.describe()}) is at or before the baseline's point "
                f"(LSN {self.point}): the baseline already holds later changes; use an older "
                "baseline"
            )
        bound = self.point or self.at_least
        if start is None or (bound is None and self.rows.taken_after is not None):
            return  # the stream's first transaction tells (see _first_commit)
        if bound is not None and start <= bound:
            self._covered = True
            return
        self._gap(
            f"the slot's copy starts at LSN {start}, "
            + (
                f"after the baseline's point ({self.describe_point()})"
                if bound is not None
                else "and the baseline's point is unknown (give --baseline-lsn)"
            )
        )

    def _gap(self, what: str) -> None:
        known = "; ".join(f"{k} {v}" for k, v in self.rows.facts.items())
        message = (
            f"cannot prove the stream covers the baseline {self.rows.source}: {what}"
            + (f" ({known})" if known else "")
            + ", so changes committed between the baseline and the stream's start may be lost"
        )
        if not self.options.accept_gap:
            raise BaselineError(
                f"{message}; use a baseline taken at or after the stream's start, or pass "
                "--accept-gap to rebuild anyway (exit 4: not proven exact)",
                lsn=self.point,
            )
        self.gap = message + " (accepted with --accept-gap)"
        self._covered = True

    def follow(
        self, events: Iterable[Event], start: Lsn | None, stop: StopPoint
    ) -> Iterator[Event]:
        """``events`` checked for coverage and, with a known point, only the transactions
        committed at or after it (the baseline holds the others)."""
        self.check_start(start, stop)
        watched = events if self._covered else self._first_commit(events)
        if self.point is not None:
            watched = after_point(watched, self.point)
        return self._first_change(watched)

    def _first_change(self, events: Iterable[Event]) -> Iterator[Event]:
        """Note when the table's first change in the replayed stream is a TRUNCATE."""
        table = self.recovered
        for event in events:
            if (
                not self._seen_change
                and isinstance(event, Change)
                and event.relation.same_table(table.schema, table.name)
            ):
                self._seen_change = True
                self.truncated = event.op is Op.TRUNCATE
            yield event

    def _first_commit(self, events: Iterable[Event]) -> Iterator[Event]:
        """The stream covers the baseline when its first transaction committed before the
        baseline's point (a capture's LSN), or before the baseline was taken (its time)."""
        for event in events:
            if not self._covered and isinstance(event, Begin | Commit):
                self._judge_first(event)
            yield event
        if not self._covered:
            self._gap("the stream holds no transaction to show where it starts")

    def _judge_first(self, event: Begin | Commit) -> None:
        bound = self.point or self.at_least
        if bound is not None:
            after = StartPoint(lsn=bound).starts(None, event.commit_lsn, event.end_lsn, None)
            if after is False:
                self._covered = True
                return
            if after is True:
                at = event.commit_lsn or event.end_lsn
                self._gap(
                    f"the stream's first transaction commits at LSN {at}, not before the "
                    f"baseline's point ({self.describe_point()})"
                )
                return
        taken = self.rows.taken_after
        if taken is not None and event.commit_time is not None:
            if event.commit_time < taken:
                self._covered = True
            else:
                self._gap(
                    f"the stream's first transaction committed at {event.commit_time.isoformat()}"
                    f", not before the baseline was begun ({taken.isoformat()})"
                )
            return
        if isinstance(event, Commit):
            self._gap(
                "the stream's first transaction shows no LSN or time to compare with the "
                f"baseline's point ({self.describe_point()})"
            )

    # -- loading ----------------------------------------------------------------------------------

    def load(self, target: Target) -> None:
        """Copy the baseline into the table replay just created (before its first commit),
        then count and hash what was loaded."""
        if self.idempotent and not target.primary_key():
            raise BaselineError(
                f"{self.table} has no primary key, so without the baseline's exact point the "
                "stream cannot be replayed over it (a row without a key cannot be matched): give"
                " --baseline-lsn (or a baseline that records its LSN; on a standby, pause "
                "replay with pg_wal_replay_pause() while it is copied)",
                table=str(self.table),
            )
        missing = [name for name in self.rows.columns if name not in target.columns()]
        if missing:
            raise BaselineError(
                f"the baseline {self.rows.source} has column {missing[0]!r}, which {target.into} "
                f"(created from the stream's definition of {self.table}) lacks: give --ddl FILE "
                "with the table's definition as the baseline has it",
                table=str(target.into),
            )
        if not self.truncated:
            self.rows.copy_into(target.conn, target.ident)
        self.rows.close()
        self.loaded_rows, self.rows_sha256 = rows_hash(target.conn, target.ident, self.rows.columns)

    def no_changes(self, exc: TableNotInStream) -> BaselineError:
        """The error when the stream holds no change of the table after the baseline."""
        if self.truncated:
            return BaselineError(
                f"the stream truncates {self.recovered} after the baseline's point "
                f"({self.describe_point()}) and holds no change of it after that: the table was "
                "empty; create it empty from the original definition",
                table=str(self.recovered),
            )
        return BaselineError(
            f"the stream holds no change of {self.table} after the baseline's point "
            f"({self.describe_point()}): if nothing changed it since, the baseline "
            f"{self.rows.source} already is the table; restore it directly ({exc.message})",
            table=str(self.table),
        )

    def summary(self) -> dict[str, Any]:
        """What the audit and the result record of the baseline."""
        return {
            "source": self.rows.source,
            "kind": self.rows.kind,
            "table": str(self.table),
            "lsn": str(self.point) if self.point is not None else None,
            "at_least_lsn": str(self.at_least) if self.at_least is not None else None,
            "mode": "idempotent" if self.idempotent else "after point",
            "rows": self.loaded_rows,
            "rows_sha256": self.rows_sha256,
            "facts": dict(self.rows.facts),
            "gap": self.gap,
            "truncated_by_the_stream": self.truncated,
            "recovery_point": (
                dict(self.options.recovery_point) if self.options.recovery_point else None
            ),
        }

    def close(self) -> None:
        self.rows.close()


def rows_hash(conn: Connection, ident: sql.Identifier, columns: tuple[str, ...]) -> tuple[int, str]:
    """The row count and a hash of the rows of ``ident``, independent of their order
    (duplicates count): the SHA-256 of the sums, in four 64-bit parts, of each row's SHA-256 of
    ``ROW(columns in name order)::text``."""
    row = sql.SQL("ROW({})::text").format(sql.SQL(", ").join(map(sql.Identifier, sorted(columns))))
    parts = sql.SQL(", ").join(
        sql.SQL("coalesce(sum(('x' || substr(h, {}, 16))::bit(64)::bigint::numeric), 0)").format(
            sql.Literal(1 + 16 * i)
        )
        for i in range(4)
    )
    query = sql.SQL(
        "SELECT count(*), {} FROM (SELECT encode(sha256(convert_to({}, 'UTF8')), 'hex') AS h"
        " FROM {}) AS rows"
    ).format(parts, row, ident)
    result = conn.execute(query).fetchone()
    assert result is not None
    count, *sums = result
    digest = hashlib.sha256(":".join(str(s) for s in sums).encode()).hexdigest()
    return int(count), digest


def after_point(events: Iterable[Event], point: Lsn) -> Iterator[Event]:
    """The transactions of ``events`` committed at or after ``point`` (commit record start at
    or after it; end after it where a plugin gives only the end), as a start point would select.

    Where the Begin does not tell (test_decoding), a transaction that began before the point
    is held until its Commit; once one transaction is kept, every later one is (commit order).
    """
    start = StartPoint(lsn=point)
    held: list[Event] = []
    holding = past = False
    for event in events:
        if past:
            yield event
        elif isinstance(event, Begin):
            keep = start.starts(None, event.commit_lsn, event.end_lsn, None)
            if keep is None and event.lsn is not None and event.lsn >= point:
                keep = True  # its first record is at or after the point: so is its commit
            past = keep is True
            holding = keep is None
            held = [event] if holding else []
            if past:
                yield event
        elif isinstance(event, Change):
            if holding:
                held.append(event)
        else:
            if holding:
                keep = start.starts(None, event.commit_lsn, event.end_lsn, None)
                if keep is None:
                    raise BaselineError(
                        "the stream carries no LSNs, so the transactions after the baseline's "
                        f"point (LSN {point}) cannot be told apart: capture with LSNs, or "
                        "leave the point out to replay the whole stream idempotently"
                    )
                if keep:
                    past = True
                    yield from held
                    yield event
            held, holding = [], False
