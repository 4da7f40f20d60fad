"""Did a wal2json capture lose the table's UPDATEs and DELETEs? (issue 8, A4, captures)

wal2json leaves out an UPDATE or DELETE of a table without a usable replica identity
(``REPLICA IDENTITY NOTHING``, a ``DEFERRABLE`` primary key, no primary key with the default
identity) and says so only in a server WARNING, ``no tuple identifier for UPDATE in table ...``.
Reading a slot, walrecover hears that warning (:mod:`walrecover.stream.notices`); a
``pg_recvlogical`` capture holds only the data: the warning went to pg_recvlogical's stderr. What
the capture can still show:

- an UPDATE or DELETE of the table: wal2json printed it, so the table had an identity then;
- with ``include-pk``: an INSERT without a primary key (format 2 ``"pk":[]``, format 1 no
  ``"pk"``) says the table had none, or only a deferrable one: only ``REPLICA IDENTITY FULL`` or
  ``USING INDEX`` would then have kept its updates, and nothing in an insert shows either. In
  format 1 ``pk`` is the replica identity's index, so a printed ``pk`` proves an identity;
- with LSNs: a transaction printed without any change whose commit record is a plain one (no
  catalog change), after the table's first change. Such a transaction wrote rows wal2json did not
  print: an UPDATE or DELETE it left out (or rows of an unlogged table, or of a table the capture
  filtered out).

:class:`CaptureIdentityWatch` follows the events up to the stop point and tells replay's caller
what it can prove: nothing to say, a reason the result is unproven (exit 4), or a warning.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ..stream.lsn import Lsn
from ..stream.model import Begin, Change, Commit, Event, Op, StopPoint, TableName

#: A commit record this long or longer carries catalog invalidations (a plain commit is 48
#: bytes plus 4 per subtransaction); see :data:`walrecover.rebuild.recreation.SUSPECT_COMMIT_BYTES`.
PLAIN_COMMIT_BYTES = 100

_TRUE = {"1", "t", "true", "on", "y", "yes"}


class CaptureIdentityWatch:
    """Follows a wal2json capture's events for ``table`` up to ``stop``."""

    def __init__(self, table: TableName, stop: StopPoint, options: dict[str, str]) -> None:
        self.table = table
        self.stop = stop
        self.include_pk = options.get("include-pk", "0").lower() in _TRUE
        self.format1 = options.get("format-version", "2") == "1"
        self._stopped = False
        self._begin: Begin | None = None
        self._events = 0
        self._seen = False
        #: An UPDATE or DELETE of the table was printed: it had an identity.
        self._proven = False
        #: With include-pk: an insert printed the table without a primary key.
        self._keyless = False
        #: With include-pk: an insert printed a primary key.
        self._keyed = False
        #: First transaction without a printed change and with a plain commit, after the table's
        #: first change: (xid, commit LSN); and how many.
        self._silent: tuple[int | None, Lsn | None] | None = None
        self._silent_count = 0
        #: Transactions without a printed change (commit size unknown) since the table's last
        #: change, and the first such one followed by a later change of the table.
        self._pending: list[int | None] = []
        self._between: int | bool | None = False

    def follow(self, events: Iterable[Event]) -> Iterator[Event]:
        for event in events:
            if not self._stopped:
                self._track(event)
            yield event

    def _track(self, event: Event) -> None:
        if isinstance(event, Begin):
            if self.stop.stops(event.xid, event.commit_lsn, event.end_lsn, event.commit_time):
                self._stopped = True
                return
            self._begin, self._events = event, 0
        elif isinstance(event, Change):
            self._events += 1
            if not event.relation.same_table(self.table.schema, self.table.name):
                return
            self._seen = True
            if self._pending and self._between is False:
                self._between = self._pending[0]
            self._pending = []
            if event.op in (Op.UPDATE, Op.DELETE):
                self._proven = True
            elif event.op is Op.INSERT:
                if event.relation.key_columns:
                    self._keyed = True  # a printed pk, whatever -o said
                elif self.include_pk:
                    self._keyless = True
        else:
            begin, self._begin = self._begin, None
            xid = begin.xid if begin is not None and begin.xid is not None else event.xid
            commit_lsn = (begin.commit_lsn if begin else None) or event.commit_lsn
            end_lsn = (begin.end_lsn if begin else None) or event.end_lsn
            when = (begin.commit_time if begin else None) or event.commit_time
            if self.stop.stops(xid, commit_lsn, end_lsn, when):
                self._stopped = True
                return
            self._silent_commit(event, xid, commit_lsn, end_lsn)

    def _silent_commit(
        self, event: Commit, xid: int | None, commit_lsn: Lsn | None, end_lsn: Lsn | None
    ) -> None:
        if not self._seen or self._events:
            return
        if commit_lsn is None or end_lsn is None:
            self._pending.append(xid)
            return
        if int(end_lsn) - int(commit_lsn) >= PLAIN_COMMIT_BYTES:
            return  # a catalog change (DDL, the DROP itself), not a data transaction
        self._silent_count += 1
        if self._silent is None:
            self._silent = (xid, commit_lsn)

    def verdict(self) -> tuple[list[str], list[str]]:
        """(reasons the result is unproven, warnings) once the stream has been read."""
        if not self._seen or self._proven:
            return [], []
        log = (
            "pg_recvlogical printed wal2json's warning to its own stderr, not into the file: "
            f'look in its log for "no tuple identifier for UPDATE in table" (or DELETE) naming '
            f"{self.table}"
        )
        advice = (
            "if it is there, recover from the slot (walrecover then refuses exactly) or with "
            "--via-plugin test_decoding, which prints an UPDATE's new row"
        )
        if self._keyless:
            return [
                f"the capture shows {self.table} without a primary key and no UPDATE or DELETE "
                "of it: unless it had REPLICA IDENTITY FULL or USING INDEX, wal2json left its "
                f"UPDATEs and DELETEs out of the capture; {log}; {advice}"
            ], []
        if self._silent is not None:
            xid, lsn = self._silent
            more = self._silent_count - 1
            others = f" and {more} more" if more else ""
            return [
                f"transaction {xid if xid is not None else '(no xid)'} (commit LSN {lsn})"
                f"{others} wrote rows the capture does not show, after changes of {self.table} "
                "and with no UPDATE or DELETE of it printed anywhere: that is how wal2json "
                "leaves out an UPDATE or DELETE of a table without a usable replica identity "
                "(also rows of an unlogged or filtered-out table, or only rows of a rolled-back "
                f"savepoint); {log}; {advice}"
            ], []
        if self._between is not False:
            xid = self._between
            return [
                f"transaction {xid if xid is not None else '(no xid)'} printed no change between"
                f" changes of {self.table}, and no UPDATE or DELETE of it is printed anywhere: "
                "wal2json prints so a transaction whose UPDATE or DELETE it left out (a table "
                "without a usable replica identity), as well as DDL; "
                f"{log}; {advice}"
            ], []
        if self._keyed:
            # Format 1 prints pk from the replica identity's index; format 2 the primary key,
            # immediate ones only: only REPLICA IDENTITY NOTHING on a keyed table is left. Its
            # left-out changes show as transactions without change (above) given LSNs, but not
            # when the same transactions also wrote rows the capture shows.
            return [], [
                f"the capture shows no UPDATE or DELETE of {self.table}: exact if it had none, "
                "but with REPLICA IDENTITY NOTHING wal2json leaves them out, and in a "
                "transaction that also inserts nothing in the file shows it; "
                f"{log}; {advice}"
            ]
        return [], [
            f"the capture shows no UPDATE or DELETE of {self.table}, so walrecover cannot prove "
            "wal2json did not leave some out (it does for a table without a usable replica "
            "identity): the capture does not say whether it had a primary key (-o "
            f"include-pk=1 does); {log}"
        ]
