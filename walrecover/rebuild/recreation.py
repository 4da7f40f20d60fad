"""Was the table dropped and re-created under the same name inside the stream?

wal2json and test_decoding name a change's table but carry no relation id, so two tables that
had the same name one after the other look like one. Replay asks a :class:`RecreationJudge`
about every change of the table and every transaction, in stream order.

**With the WAL** (pg_walinspect already installed in the source database): every row change's
WAL record names the relation file it wrote. When a change's file is not the file of the
previous change, the judge follows the file's history in the commit records: a ``TRUNCATE``,
``VACUUM FULL``, ``CLUSTER`` or rewriting ``ALTER TABLE`` ends the old file and creates the new
one in the same transaction without dropping the relation; a ``DROP TABLE`` drops the relation
(its oid is in ``dropped stats``); a file that never ended belongs to a relation that still exists
under another name (a rename). Only changes after a catalog-changing commit are looked up, so the
cost is a few lookups per DDL, not per change. A proven re-creation returns :class:`Recreated`
when the new table's whole life is in the stream (its file was created in the WAL read and
written by no record before its first change): replay then keeps only the later table, which is
what the name held at the stop point. A table that took the name with rows written under
another name (``ALTER TABLE ... RENAME`` of a filled table) cannot be rebuilt from this stream:
:class:`~walrecover.errors.ReplayError` names the LSN that rebuilds the earlier table. A case the
commit records cannot settle (the table had been rewritten before the stream, so its oid is not
known, and the same transaction dropped another rewritten relation) becomes a reason the result
is unproven.

**Without the WAL** the stream cannot tell a ``DROP TABLE`` from an ``ANALYZE`` or any other DDL.
The judge notes the transactions that changed the catalog between two changes of the table
(test_decoding: an empty transaction; wal2json: a transaction whose commit record is too large
for a plain commit) and reports them as reasons the result is unproven, with what to do.

The WAL's catalog history the judge reads is :mod:`~walrecover.rebuild.recreation_wal`; the
wording of its findings is :mod:`~walrecover.rebuild.recreation_reasons`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime

from ..errors import ReplayError, WalUnavailable
from ..stream.lsn import Lsn
from ..stream.model import Change, Op, StopPoint, TableName
from ..stream.walinspect import CommitRecord, RelFile, WalInspect
from .recreation_reasons import (
    Suspect,
    blind_warning,
    doubt_reason,
    stream_reason,
    truncate_reason,
    unchecked_truncate_reason,
    unseen_warning,
)
from .recreation_wal import CatalogHistory

#: A commit record at least this long carries catalog invalidations (measured on PostgreSQL 15:
#: a plain commit is 48 bytes plus 4 per subtransaction; GRANT 104, TRUNCATE 208, ANALYZE of a
#: 10-column table 264; CREATE TABLE of one column 408 and its DROP 472).
SUSPECT_COMMIT_BYTES = 320


@dataclass(frozen=True, slots=True)
class Recreated:
    """The table's changes from here on belong to another relation than the changes before.

    ``lsn``/``xid``/``time`` are the commit that ended the earlier relation (its ``DROP``), or
    for a rename the last catalog change before the first change of the new relation.
    """

    lsn: Lsn
    xid: int
    time: datetime | None
    renamed: bool = False


class RecreationJudge:
    """Tells replay when the table's changes switch to another relation of the same name.

    ``wal`` is a :class:`WalInspect` on the source's server, or None with ``wal_problem`` saying
    why (put into the unproven reasons). ``start``/``end`` bound the WAL the stream covers.
    """

    def __init__(
        self,
        table: TableName,
        into: TableName,
        *,
        wal: WalInspect | None,
        wal_problem: str | None = None,
        start: Lsn | None = None,
        end: Lsn | None = None,
        format1: bool = False,
    ) -> None:
        self.table = table
        #: wal2json format-version 1: a TRUNCATE is a transaction with no change in the stream.
        self.format1 = format1
        self.into = into
        self.wal = wal
        self.wal_problem = wal_problem
        self.start = start
        self.end = end
        #: Found re-creations, as warnings for the result.
        self.notes: list[str] = []
        #: An error found in a transaction that may yet turn out past the stop point.
        self._error: ReplayError | None = None
        self._mark: tuple[int, int, int, tuple[Suspect, Lsn | None, Lsn | None] | None] = (
            0,
            0,
            0,
            None,
        )
        self._doubts: list[str] = []
        self._disabled = False
        self._seen = False
        #: The table had changes in a committed transaction (before the one being judged).
        self._written = False
        #: The last change of the table was judged from the WAL.
        self._exactly = False
        #: The open transaction truncated the table.
        self._truncated = False
        #: Transactions that wrote the table after earlier ones, with no sign in the stream
        #: of whether they also changed the catalog (test_decoding, or no commit LSNs).
        self._blind = 0
        self._first_blind: int | None = None
        self._suspects: list[Suspect] = []
        self._stream_doubts = 0
        self._first_stream_doubt: tuple[Suspect, Lsn | None, Lsn | None] | None = None
        self._last_change_lsn: Lsn | None = None
        # Exact (WAL) state.
        self._history: CatalogHistory | None = None
        self._database: int | None = None
        self._relfilenode: int | None = None
        self._oid: int | None = None
        self._prev: Lsn | None = None
        #: Format 1: transactions after the table's first change the WAL could not be asked
        #: whether they truncated it (how many, the first one's xid).
        self._unchecked = 0
        self._first_unchecked: int | None = None
        #: Format 1: the transactions found to have replaced the table's file.
        self._emptied: set[int] = set()
        #: The oid of the table's last change in a transaction that committed before the stop
        #: point (a later one, discarded, may have judged the next table's file).
        self._kept_oid: int | None = None

    # -- what replay reads ---------------------------------------------------------------------

    @property
    def unproven(self) -> list[str]:
        """Why the rebuilt table may hold rows of an earlier table of the same name."""
        reasons = list(self._doubts)
        if self._first_stream_doubt is not None:
            assert self._first_stream_doubt is not None
            suspect, before, after = self._first_stream_doubt
            reasons.append(
                stream_reason(
                    self.table, suspect, before, after, self._stream_doubts - 1, self.wal_problem
                )
            )
            if self.format1:
                reasons.append(self._truncate_reason())
        if self._unchecked:
            reasons.append(
                unchecked_truncate_reason(
                    self.table, self.into, self._first_unchecked, self._unchecked,
                    self.wal_problem,
                )
            )  # fmt: skip
        return reasons

    @property
    def warnings(self) -> list[str]:
        """What the user should know: re-creations found, and what the stream could not show."""
        if not self._blind:
            return list(self.notes)
        return [
            *self.notes,
            blind_warning(self.table, self._first_blind, self._blind, self.wal_problem),
        ]

    def unseen_after(
        self, stop: StopPoint, explained: Callable[[list[int]], Collection[int]] | None = None
    ) -> list[str]:
        """A warning when the stream shows catalog changes after the table's last change and
        the WAL did not name the table, so the check after replay
        (:func:`~walrecover.rebuild.unseen.replaced`) cannot ask the source: a table dropped
        and created again there, with no change of its own, leaves no trace. Without a stop
        point the DROP that ended the table is one of them, so it takes two. ``explained``
        (asked only then) gives the xids whose catalog change the source still shows as
        something else (:func:`~walrecover.rebuild.unseen.catalog_writers`)."""
        if self._disabled or not self._seen or self.oid is not None:
            return []
        suspects = self._suspects
        needed = 1 if stop.is_set else 2
        if len(suspects) >= needed and explained is not None:
            xids = [s.xid for s in suspects if s.xid is not None]
            known = set(explained(xids)) if xids else set()
            suspects = [s for s in suspects if s.xid is None or s.xid not in known]
        if len(suspects) < needed:
            return []
        return [
            unseen_warning(
                self.table,
                self.into,
                suspects[0],
                len(suspects),
                self.wal_problem,
                stop_set=stop.is_set,
            )
        ]

    @property
    def oid(self) -> int | None:
        """The oid of the relation the table's last change before the stop point belongs to, as
        the WAL showed it (None without the WAL, or where it could not tell): what replay's end
        asks the source about, as for pgoutput's relation id (:func:`.unseen.replaced`)."""
        return self._kept_oid

    def close(self) -> None:
        if self.wal is not None:
            with contextlib.suppress(Exception):
                self.wal.close()

    # -- events --------------------------------------------------------------------------------

    def commit(
        self,
        xid: int | None,
        commit_lsn: Lsn | None,
        end_lsn: Lsn | None,
        *,
        events: int,
        ours: int,
    ) -> None:
        """A transaction committed before the stop point with ``events`` changes (any table),
        ``ours`` of the table: what the judge found in it stands."""
        if self._error is not None:
            raise self._error
        self._committed(xid, commit_lsn, end_lsn, events=events, ours=ours)
        if self.format1 and self._seen:
            self._format1_truncate(xid, ours)
        if ours:
            self._kept_oid = self._oid if self._exactly else None
        self._mark = (
            len(self.notes),
            len(self._doubts),
            self._stream_doubts,
            self._first_stream_doubt,
        )

    def _committed(
        self,
        xid: int | None,
        commit_lsn: Lsn | None,
        end_lsn: Lsn | None,
        *,
        events: int,
        ours: int,
    ) -> None:
        """Note a committed transaction that may have changed the catalog (judged from the
        stream: without the WAL, or for changes the WAL could not be asked about)."""
        earlier, self._written = self._written, self._written or ours > 0
        truncated, self._truncated = self._truncated, False
        if self._disabled or not self._seen:
            return
        if ours and (not earlier or truncated or self._exactly):
            return  # nothing earlier to merge, emptied by its TRUNCATE, or judged from the WAL
        size = (
            int(end_lsn) - int(commit_lsn)
            if commit_lsn is not None and end_lsn is not None
            else None
        )
        suspect = size >= SUSPECT_COMMIT_BYTES if size is not None else events == 0
        # wal2json format 1 prints a TRUNCATE (a 208-byte commit) as a transaction without change.
        suspect = suspect or (self.format1 and events == 0)
        if not ours:
            if suspect:
                self._suspects.append(Suspect(xid, commit_lsn or end_lsn, commit_lsn is None))
        elif suspect:
            # The table's own transaction changed the catalog: it may have dropped the table
            # and re-created it before its later changes.
            self._stream_doubts += 1
            if self._first_stream_doubt is None:
                self._first_stream_doubt = (Suspect(xid, commit_lsn, own=True), None, None)
        elif size is None:
            self._blind += 1
            self._first_blind = self._first_blind if self._first_blind is not None else xid

    def _format1_truncate(self, xid: int | None, ours: int) -> None:
        """Format 1 leaves a TRUNCATE out without a trace, even inside a transaction that
        also writes the table, and even after the table's last change: ask the WAL whether
        this committed transaction replaced the file of the table's last change (a TRUNCATE,
        or a rewrite the WAL cannot tell from one), else count it as unchecked."""
        history, file = self._history, self._relfilenode
        if (
            history is None
            or file is None
            or self.wal is None
            or xid is None
            or (ours and not self._exactly)
        ):
            self._unchecked += 1
            if self._first_unchecked is None:
                self._first_unchecked = xid
            return
        status = history.ended_in(file, xid, self._oid)
        if status is None or status == "dropped":
            return  # untouched, or the table itself was dropped: the end of replay asks
        self._emptied_by(history.by_xid[xid], self._prev)

    def _emptied_by(self, commit: CommitRecord, since: Lsn | None) -> None:
        """Format 1: ``commit`` replaced the table's file after its change at ``since``; a
        reason the result is unproven unless the WAL shows it was a rewrite, not a TRUNCATE
        (no TRUNCATE record of the transaction naming the table, or any table when its oid
        is not known)."""
        if commit.xid in self._emptied:
            return
        if since is not None and self.wal is not None and since < commit.lsn:
            ours = {commit.xid, *commit.subxacts}
            try:
                found = self.wal.truncations(since, commit.lsn)
            except WalUnavailable:
                found = [(commit.xid, ())]  # cannot tell: count it as a TRUNCATE
            if not any(
                xid in ours and (self._oid is None or not relids or self._oid in relids)
                for xid, relids in found
            ):
                return  # a rewrite (VACUUM FULL, CLUSTER, ALTER TABLE): the rows are kept
        self._emptied.add(commit.xid)
        self._doubts.append(self._truncate_reason(commit.xid, commit.lsn))

    def discard(self) -> None:
        """The open transaction is past the stop point: forget what it showed."""
        notes, doubts, count, first = self._mark
        del self.notes[notes:], self._doubts[doubts:]
        self._stream_doubts, self._first_stream_doubt = count, first
        self._error = None
        self._truncated = False

    def change(self, change: Change, xid: int | None, commit_lsn: Lsn | None) -> Recreated | None:
        """A change of the table (in stream order); :class:`Recreated` if it starts a new one."""
        if self._disabled:
            return None
        if change.relation.relation_id is not None:
            self._disabled = True  # pgoutput: replay compares relation ids itself
            return None
        first = not self._seen
        self._seen = True
        suspects, self._suspects = self._suspects, []
        previous, self._last_change_lsn = self._last_change_lsn, change.lsn or self._last_change_lsn
        if change.op is Op.TRUNCATE:
            self._truncated = True
            # Empties the table whatever came before. Its record names relation oids, not
            # files: with one relation, that is the table's oid.
            if self.wal is not None and change.lsn is not None and self._oid is None:
                with contextlib.suppress(WalUnavailable):
                    self._learn_oid(change.lsn, xid)
            return None
        if self.wal is not None and change.lsn is not None:
            try:
                self._exactly = True
                return self._exact(change.lsn, xid, commit_lsn)
            except WalUnavailable as exc:
                self.wal_problem = exc.message
                self.close()
                self.wal = None
        self._exactly = False
        if self.wal is not None and change.lsn is None and not self.wal_problem:
            self.wal_problem = (
                "the stream gives no LSN per change (a capture of test_decoding, or of wal2json "
                "without -o include-lsn=1), so its changes cannot be found in the WAL"
            )
        if suspects and not first:
            self._stream_doubts += len(suspects)
            if self._first_stream_doubt is None:
                self._first_stream_doubt = (suspects[0], previous, change.lsn)
        return None

    # -- with the WAL --------------------------------------------------------------------------

    def _exact(self, lsn: Lsn, xid: int | None, commit_lsn: Lsn | None) -> Recreated | None:
        wal = self.wal
        assert wal is not None
        if self._relfilenode is None:
            self._first_exact(wal, lsn)
            return None
        if not self._needs_lookup(lsn, xid, commit_lsn):
            self._prev = lsn
            return None
        found = wal.relfile_at(lsn)
        if found is None:
            raise WalUnavailable(f"the WAL record at {lsn} names no relation file")
        old, new = self._relfilenode, found.relfilenode
        if new == old:
            self._prev = lsn
            return None
        assert self._history is not None
        verdict, commit = self._history.classify(old, new, lsn, xid, commit_lsn, self._oid)
        previous, self._prev = self._prev, lsn
        self._relfilenode = new
        if verdict == "same":
            if self.format1 and commit is not None:
                self._emptied_by(commit, previous)
            return None
        if verdict == "doubt":
            assert commit is not None
            self._oid = None
            self._doubts.append(doubt_reason(self.table, self.into, commit))
            return None
        renamed = commit is None
        if commit is None:
            commit = self._history.last_catalog_commit(previous, lsn, xid, commit_lsn)
        if commit is None:  # the file changed without a catalog commit: cannot be
            raise WalUnavailable(f"the WAL shows nothing that replaced the table before {lsn}")
        return self._replaced(found, lsn, commit, renamed, xid)

    def _first_exact(self, wal: WalInspect, lsn: Lsn) -> None:
        """The table's first change judged from the WAL: its file, oid and the catalog history."""
        found = wal.relfile_at(lsn)
        if found is None:
            raise WalUnavailable(f"the WAL record at {lsn} names no relation file")
        self._database = found.database
        self._relfilenode = found.relfilenode
        start = min(lsn, self.start) if self.start is not None else lsn
        self._history = CatalogHistory.load(wal, found.database, start, self.end)
        self._oid = (
            wal.relation_of(found)
            or self._fresh_oid(found.relfilenode, None)
            or self._history.dropped_oid(found.relfilenode)
        )
        self._prev = lsn

    def _replaced(
        self, found: RelFile, lsn: Lsn, commit: CommitRecord, renamed: bool, xid: int | None
    ) -> Recreated | None:
        """The table's file at ``lsn`` belongs to a table that took the name at ``commit``:
        a :class:`Recreated` when its whole life is in the stream, else an error to raise if
        the transaction commits before the stop point."""
        when = f", {commit.time.isoformat()}" if commit.time else ""
        how = (
            f"the earlier table was renamed away no later than transaction {commit.xid} (commit"
            f" LSN {commit.lsn}{when})"
            if renamed
            else f"the earlier table was dropped by transaction {commit.xid} (commit LSN "
            f"{commit.lsn}{when})"
        )
        written = self._written_before(found, lsn, xid)
        if written is not None:
            self._error = ReplayError(
                f"{self.table} was replaced by another table of the same name: {how}, and the "
                f"table that took the name was written {written}, which the stream of "
                f"{self.table} does not show; recover the earlier table with --stop-before-lsn "
                f"{commit.lsn}, and the later one from a backup",
                table=str(self.table),
                lsn=commit.lsn,
            )
            return None
        self._oid = self._fresh_oid(found.relfilenode, commit)
        self.notes.append(
            f"{self.table} was re-created under the same name: {how}, and the later changes "
            f"belong to a new table. {self.into} holds only that later table, which is what "
            f"{self.table} held at the stop point; to rebuild the earlier one, recover with "
            f"--stop-before-lsn {commit.lsn}"
        )
        return Recreated(commit.lsn, commit.xid, commit.time, renamed)

    def _written_before(self, file: RelFile, lsn: Lsn, xid: int | None) -> str | None:
        """Where the new table's file was written before the change at ``lsn`` of transaction
        ``xid`` (rows that reached it under another name), or None if its whole life is in the
        stream. The stream is in commit order: a write by a transaction that commits after
        this one (a prepared transaction written first, committed later) is a later change of
        the stream, not a row under another name."""
        history, wal = self._history, self.wal
        assert history is not None and wal is not None
        made = history.created.get(file.relfilenode)
        if made is None:
            return "before the stream began (its file is older than the WAL walrecover read)"
        ours = wal.top_level(xid, lsn) if xid is not None else None
        first = wal.first_write(file, made.lsn, lsn, before=ours)
        return None if first is None else f"at LSN {first}, before it took the name"

    def _learn_oid(self, lsn: Lsn, xid: int | None) -> None:
        """Take the table's oid from its TRUNCATE record at ``lsn`` when that is surely the
        relation of the previous change: no catalog change since, none dropped in its own
        transaction (a TRUNCATE record names oids, not files)."""
        history, database = self._history, self._database
        if history is None or database is None or self._prev is None or xid is None:
            return
        if history.commit_between(self._prev, lsn):
            return
        own = history.by_xid.get(xid)
        if own is None:
            return
        made = history.created_by_xid.get(own.xid, set())
        if own.dropped_relations(database) - made:
            return
        assert self.wal is not None
        truncated = self.wal.truncated_at(lsn)
        if len(truncated) == 1:
            self._oid = truncated[0]

    def _needs_lookup(self, lsn: Lsn, xid: int | None, commit_lsn: Lsn | None) -> bool:
        """Could the table's relation have changed since the previous change?"""
        history = self._history
        assert history is not None and self._prev is not None
        return history.changed(self._prev, lsn, xid, commit_lsn)

    def _fresh_oid(self, relfilenode: int, recreated_by: CommitRecord | None) -> int | None:
        """The oid of the relation whose file is ``relfilenode``, when the WAL shows it was made
        by ``CREATE TABLE`` (see :meth:`CatalogHistory.fresh_oid`)."""
        if self._history is None:
            return None
        return self._history.fresh_oid(relfilenode, recreated_by)

    def _truncate_reason(self, xid: int | None = None, lsn: Lsn | None = None) -> str:
        """Why a format 1 stream cannot show that the table was emptied (issue 8, D1)."""
        if lsn is None and xid is None and self._first_stream_doubt is not None:
            suspect = self._first_stream_doubt[0]
            xid, lsn = suspect.xid, suspect.lsn
        return truncate_reason(self.table, self.into, xid, lsn)
