"""Building audits without a database, for the tests of the writer's layout and of ``verify``.

Replay is the only producer of :class:`AppliedChange` in production; these tests make the same
objects from a small synthetic stream (the shape of the rehearsal's ledger) so that layouts,
tampering and outcomes can be exercised precisely and fast. Everything else about the audit is
tested on real recoveries.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from walrecover.audit.writer import AuditWriter
from walrecover.rebuild.replay import AppliedChange
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import Change, Column, Op, Outcome, Relation

LEDGER = Relation(
    "public",
    "ledger",
    (
        Column("id", "bigint", 20, -1, True),
        Column("account_id", "integer", 23, -1),
        Column("amount", "numeric(12,2)", 1700, 786438),
        Column("booked_at", "timestamp with time zone", 1184, -1),
    ),
)


def insert(i: int, amount: str, account: int = 1) -> Change:
    return Change(
        Op.INSERT,
        LEDGER,
        new={
            "id": str(i),
            "account_id": str(account),
            "amount": amount,
            "booked_at": "2024-05-01 10:00:00+00",
        },
    )


def update(i: int, amount: str, account: int = 1) -> Change:
    change = insert(i, amount, account)
    return Change(Op.UPDATE, LEDGER, new=change.new, old={"id": str(i)})


def delete(i: int) -> Change:
    return Change(Op.DELETE, LEDGER, old={"id": str(i)})


def truncate() -> Change:
    return Change(Op.TRUNCATE, Relation("public", "ledger", (), complete=False))


def stream(
    changes: Iterable[Change],
    times: Sequence[datetime | None] | None = None,
    outcomes: Sequence[Outcome] | None = None,
) -> list[AppliedChange]:
    """One transaction per change, commit LSNs increasing, commit times a minute apart."""
    start = datetime(2024, 5, 1, 23, 58, tzinfo=UTC)
    out = []
    for n, change in enumerate(changes):
        lsn = Lsn(0x3000000 + n * 0x100)
        when = times[n] if times is not None else start + timedelta(minutes=n)
        outcome = outcomes[n] if outcomes is not None else Outcome.APPLIED
        out.append(AppliedChange(change, 700 + n, lsn, Lsn(lsn + 0x30), when, outcome))
    return out


def write_audit(
    path: Path,
    applied: Sequence[AppliedChange],
    *,
    partitioned: bool = False,
    commit_every: int = 3,
) -> AuditWriter:
    """Drive an AuditWriter as replay does (a commit every few changes) and close it."""
    writer = AuditWriter(path, {"tool": "test", "table": "public.ledger"}, partitioned=partitioned)
    writer.start(None, resuming=False)
    for first in range(0, len(applied), commit_every):
        batch = list(applied[first : first + commit_every])
        writer.write(batch)
        writer.commit(batch[-1].commit_lsn)
    writer.close({"finished_at": "now"})
    return writer


def ledger_stream(n: int = 12) -> list[AppliedChange]:
    """Inserts with an update every 4th change and a delete every 5th, over several days."""
    changes: list[Change] = []
    next_id = 1
    for k in range(n):
        if k % 5 == 4:
            changes.append(delete(next_id - 2))
        elif k % 4 == 3:
            changes.append(update(next_id - 1, f"{k}.50", account=k % 3 + 1))
        else:
            changes.append(insert(next_id, f"{k * 10}.25", account=k % 3 + 1))
            next_id += 1
    day = datetime(2024, 5, 1, 22, 0, tzinfo=UTC)
    times = [day + timedelta(hours=k * 5) for k in range(n)]
    return stream(changes, times)
