"""The catalog history of a WAL range, which :class:`~walrecover.rebuild.recreation.RecreationJudge`
reads to follow the table's relation file.

:class:`CatalogHistory` holds the catalog-changing commit records of the range (read once with
pg_walinspect) and the relation files created in it, and answers the judge's questions: could the
table's relation have changed between two of its changes (:meth:`CatalogHistory.changed`), was a
move from one file to another a rewrite, a DROP or a rename (:meth:`CatalogHistory.classify`),
which commit renamed a table into place, and which oid a new file's relation has.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field, replace

from ..stream.lsn import Lsn
from ..stream.walinspect import CommitRecord, StorageCreated, WalInspect

#: How many rewrites in a row (with no change of the table between them) the judge follows.
MAX_REWRITES = 32


@dataclass(slots=True)
class CatalogHistory:
    """The catalog side of the WAL range, for one database."""

    database: int
    commits: list[CommitRecord] = field(default_factory=list)
    lsns: list[int] = field(default_factory=list)
    lsn_set: set[int] = field(default_factory=set)
    by_xid: dict[int, CommitRecord] = field(default_factory=dict)
    ends: dict[int, CommitRecord] = field(default_factory=dict)
    created: dict[int, StorageCreated] = field(default_factory=dict)
    created_by_xid: dict[int, set[int]] = field(default_factory=dict)

    @classmethod
    def load(cls, wal: WalInspect, database: int, start: Lsn, end: Lsn | None) -> CatalogHistory:
        """Read the catalog-changing commits and created files from ``start`` to ``end``."""
        commits, created = wal.catalog_history(start, end)
        history = cls(database)
        # A file made in a subtransaction (a TRUNCATE after SAVEPOINT) is the top-level
        # transaction's: its commit record is the one that lists the file it replaced.
        top = {sub: record.xid for record in commits for sub in record.subxacts}
        for record in commits:
            history.commits.append(record)
            history.lsns.append(int(record.lsn))
            history.lsn_set.add(int(record.lsn))
            history.by_xid[record.xid] = record
            for relfilenode in record.dropped_relfilenodes(database):
                history.ends.setdefault(relfilenode, record)
        for made in created:
            item = replace(made, xid=top[made.xid]) if made.xid in top else made
            if item.file.database == database:
                history.created.setdefault(item.file.relfilenode, item)
                history.created_by_xid.setdefault(item.xid, set()).add(item.file.relfilenode)
        return history

    def commit_between(self, previous: Lsn, lsn: Lsn) -> bool:
        """A catalog-changing commit lies after ``previous`` and before ``lsn``."""
        i = bisect.bisect_right(self.lsns, int(previous))
        return i < len(self.lsns) and self.lsns[i] < int(lsn)

    def changed(self, previous: Lsn, lsn: Lsn, xid: int | None, commit_lsn: Lsn | None) -> bool:
        """Could the table's relation have changed since the previous change?

        Only a catalog-changing commit between the two changes, or in the change's own
        transaction, can switch it (every such DDL takes a lock the writers wait for).
        """
        if xid is None and commit_lsn is None:
            return True
        if self.commit_between(previous, lsn):
            return True
        if xid is not None and xid in self.by_xid:
            return True
        return commit_lsn is not None and int(commit_lsn) in self.lsn_set

    def classify(
        self,
        old: int,
        new: int,
        lsn: Lsn,
        xid: int | None,
        commit_lsn: Lsn | None,
        oid: int | None,
    ) -> tuple[str, CommitRecord | None]:
        """``same``, ``recreated`` or ``doubt`` for the table's file moving from old to new,
        with the commit that decided it (None: the old file never ended, a rename). ``oid`` is
        the table's oid when known."""
        database = self.database

        def before(record: CommitRecord) -> bool:
            return (
                record.lsn < lsn
                or (xid is not None and record.xid == xid)
                or (commit_lsn is not None and record.lsn == commit_lsn)
            )

        first_end = self.ends.get(old)
        if first_end is None or not before(first_end):
            return "recreated", None  # the old relation still exists: another took the name
        dropped_at: CommitRecord | None = None
        doubtful_hit: CommitRecord | None = None
        queue: deque[tuple[int, bool, int]] = deque([(old, False, 0)])
        seen = {old}
        while queue:
            current, doubtful, depth = queue.popleft()
            end = self.ends.get(current)
            if end is None or not before(end) or depth > MAX_REWRITES:
                continue
            transient = self.created_by_xid.get(end.xid, set())
            status = self._status(end, current, old, oid, transient)
            if status == "dropped":
                dropped_at = dropped_at or end
                continue
            if status == "other":
                continue
            successors = transient - end.dropped_relfilenodes(database) - {current}
            unsure = doubtful or status == "unknown"
            if new in successors:
                if not unsure:
                    return "same", end
                doubtful_hit = doubtful_hit or end
            for successor in successors - seen:
                seen.add(successor)
                queue.append((successor, unsure, depth + 1))
        if doubtful_hit is not None:
            return "doubt", doubtful_hit
        return "recreated", dropped_at or first_end

    def _status(
        self, end: CommitRecord, current: int, old: int, oid: int | None, transient: set[int]
    ) -> str:
        """What the commit that ended the file ``current`` did to the table's relation:
        ``dropped``, ``kept``, ``other`` (dropped another relation) or ``unknown``."""
        database = self.database
        dropped = end.dropped_relations(database) - transient
        if oid is not None:
            return "dropped" if oid in dropped else "kept"
        if current in dropped:
            return "dropped" if current == old else "other"
        if dropped <= end.dropped_relfilenodes(database):
            # A dropped relation whose oid is still its file was never rewritten; ours was
            # (its file is not its oid), so it is not among them.
            return "kept"
        return "unknown"

    def ended_in(self, file: int, xid: int, oid: int | None) -> str | None:
        """What the commit of transaction ``xid`` did to the relation whose file was ``file``
        (``oid`` when known): None if it left the file alone, else ``dropped`` (the relation
        went), ``kept`` (a TRUNCATE or rewrite gave it a new file) or ``unknown``."""
        record = self.by_xid.get(xid)
        if record is None or file not in record.dropped_relfilenodes(self.database):
            return None
        status = self._status(record, file, file, oid, self.created_by_xid.get(xid, set()))
        return "unknown" if status == "other" else status

    def dropped_oid(self, relfilenode: int) -> int | None:
        """The oid of the relation whose file is ``relfilenode``, when the WAL shows that
        relation dropped: a table older than the WAL read and gone now, which the catalog can no
        longer name. A relation's first file is numbered like its oid and no later file takes a
        number in use as an oid, so a commit at or after the file's end that drops relation
        ``relfilenode`` dropped this table (after any rewrites in between)."""
        end = self.ends.get(relfilenode)
        if end is None:
            return None
        at = bisect.bisect_left(self.lsns, int(end.lsn))
        for record in self.commits[at:]:
            if relfilenode in record.dropped_relations(self.database):
                return relfilenode
        return None

    def last_catalog_commit(
        self, previous: Lsn | None, lsn: Lsn, xid: int | None, commit_lsn: Lsn | None
    ) -> CommitRecord | None:
        """The latest catalog-changing commit after ``previous`` and before the change at
        ``lsn`` (or the change's own transaction): the one that renamed a table into place."""
        if xid is not None and xid in self.by_xid:
            return self.by_xid[xid]
        i = bisect.bisect_left(self.lsns, int(lsn)) - 1
        if commit_lsn is not None and int(commit_lsn) in self.lsn_set:
            return self.commits[bisect.bisect_left(self.lsns, int(commit_lsn))]
        if i >= 0 and (previous is None or self.lsns[i] > int(previous)):
            return self.commits[i]
        return None

    def fresh_oid(self, relfilenode: int, recreated_by: CommitRecord | None) -> int | None:
        """The oid of the relation whose file is ``relfilenode``, when the WAL shows it was made
        by ``CREATE TABLE`` (a new relation's first file is numbered like its oid)."""
        made = self.created.get(relfilenode)
        if made is None:
            return None
        commit = self.by_xid.get(made.xid)
        if commit is None:
            return None
        fresh = not commit.dropped_files or (recreated_by is not None and commit is recreated_by)
        if fresh and relfilenode not in commit.dropped_relations(self.database):
            return relfilenode
        return None
