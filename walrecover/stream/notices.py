"""What the server says while it decodes a slot, and the changes a plugin says it left out.

Output plugins report some trouble only as server notices, never as rows. wal2json cannot print an
UPDATE or DELETE of a row it cannot identify (a table with REPLICA IDENTITY NOTHING, a DEFERRABLE
primary key, or no primary key and the default identity): it leaves the change out of the stream
and only warns ``no tuple identifier for UPDATE in table "public"."t"`` (format 1: ``table "t"
without primary key or replica identity is nothing``). :class:`NoticeLog` keeps every notice and
warning a slot read receives, by page of the read; :class:`LossWatch` follows the events replay
consumes and decides, for each page in which the plugin left out a change of the rebuilt table,
whether that change came before the stop point (lost: :class:`~walrecover.errors.LostChanges`),
after it (harmless, a warning), or cannot be told (the rebuilt table is not proven exact).

A page is one ``pg_logical_slot_get_changes`` call. Its set-returning function decodes the whole
page before returning the first row, so a page's notices arrive before its rows and can be tied
to the page, not to one transaction. A page ends after a commit (the server checks its row limit
only between WAL records, and a transaction's rows are all produced by its commit record), so
each transaction lies in exactly one page, once streaming is off (see ``sources``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import LostChanges, ReplayError, WalrecoverError
from .lsn import Lsn
from .model import Begin, Change, Commit, Event, StartPoint, StopPoint, TableName

#: Severities surfaced to the user; LOG and DEBUG reach a client only when its
#: client_min_messages asks for them, and then they are chatter, not trouble.
SURFACED = ("WARNING", "NOTICE", "INFO")

#: At most this many distinct notices are listed; the rest are counted.
MAX_LISTED = 20


@dataclass(slots=True)
class Page:
    """One call of the slot's get-changes function and the notices it produced."""

    number: int
    #: The last LSN read before the page (the copy's start for the first page).
    after: Lsn | None
    #: The page's last LSN (the end of its last commit), once it was read to its end.
    last: Lsn | None = None
    #: (severity, message) -> how many times the server sent it.
    notices: Counter[tuple[str, str]] = field(default_factory=Counter)

    def span(self) -> str:
        """The LSN range of the page's changes, for messages."""
        if self.last is None:
            return f"after LSN {self.after}"
        return f"between LSN {self.after} and {self.last}"


def lost_ops(message: str, table: TableName) -> str | None:
    """``UPDATE`` or ``DELETE`` when ``message`` is wal2json saying it left out such a change
    of ``table``; ``UPDATE or DELETE`` for format 1, which does not say which (nor the schema)."""
    for op in ("UPDATE", "DELETE"):
        if message == f'no tuple identifier for {op} in table "{table.schema}"."{table.name}"':
            return op
    if message == f'table "{table.name}" without primary key or replica identity is nothing':
        return "UPDATE or DELETE"
    return None


class NoticeLog:
    """Every notice and warning the source connection received, by page of the slot read."""

    def __init__(self) -> None:
        #: Page 0 holds what arrived before reading (while copying the slot).
        self.pages: list[Page] = [Page(0, None)]
        #: Set by a source whose notices arrive while a page is read (a stream, not SQL pages):
        #: reads the current page to its end, so its notices are all known (see :meth:`settle`).
        self.complete: Callable[[], None] | None = None

    def settle(self) -> None:
        """Make the current page's notices complete, as a page read's are once it started
        (a reader that stopped early, at the stop point, has not heard the rest)."""
        if self.complete is not None:
            self.complete()

    @property
    def current(self) -> Page:
        return self.pages[-1]

    def start_page(self, after: Lsn | None) -> None:
        self.pages.append(Page(len(self.pages), after))

    def end_page(self, last: Lsn | None) -> None:
        self.current.last = last

    def handler(self, diag: Any) -> None:
        """A psycopg notice handler: keep what the user must see."""
        severity = diag.severity_nonlocalized or diag.severity or "NOTICE"
        if severity in SURFACED:
            self.current.notices[(severity, diag.message_primary or "")] += 1

    def lost(self, page: Page, table: TableName) -> Counter[str]:
        """How many changes of each op the plugin said it left out of ``table`` in ``page``."""
        found: Counter[str] = Counter()
        for (_, message), count in page.notices.items():
            op = lost_ops(message, table)
            if op is not None:
                found[op] += count
        return found

    def warnings(self, skip: TableName | None = None) -> list[str]:
        """One line per distinct notice (with its count and where it first came), leaving out
        the lost changes of ``skip`` (the rebuilt table: :class:`LossWatch` explains those)."""
        first: dict[tuple[str, str], Page] = {}
        totals: Counter[tuple[str, str]] = Counter()
        for page in self.pages:
            for key, count in page.notices.items():
                if skip is not None and lost_ops(key[1], skip) is not None:
                    continue
                first.setdefault(key, page)
                totals[key] += count
        lines = []
        for (severity, message), page in list(first.items())[:MAX_LISTED]:
            where = "while copying the slot" if page.number == 0 else f"decoding {page.span()}"
            times = totals[(severity, message)]
            lines.append(
                f"the source server sent a {severity} {where}: {message}"
                + (f" ({times} times)" if times > 1 else "")
                + (_LOST_MEANING if _says_lost(message) else "")
            )
        if len(first) > MAX_LISTED:
            lines.append(f"... and {len(first) - MAX_LISTED} more distinct server notices")
        return lines


_LOST_MEANING = (
    ": the plugin left that change out of the stream (the table has no usable replica "
    "identity), so the output lacks it"
)


def _says_lost(message: str) -> bool:
    """Whether ``message`` is wal2json saying it left a change of some table out."""
    return message.startswith("no tuple identifier for ") or (
        message.startswith('table "')
        and message.endswith('" without primary key or replica identity is nothing')
    )


def _describe(lost: Counter[str]) -> str:
    return ", ".join(f"{count} {op}{'s' if count > 1 else ''}" for op, count in lost.items())


class LossWatch:
    """Follows the events replay consumes, to place each page's lost changes against the stop.

    ``follow`` wraps the event stream. It mirrors replay's stop decision (the same
    :meth:`StopPoint.stops` calls, at Begin when it can tell, else at Commit). When the stream
    moves on from a page before the stop point is reached, every transaction of that page was
    applied, so a change the plugin left out of the rebuilt table there is lost: it raises
    :class:`LostChanges` before replay sees the next page. :meth:`verdict` sorts the rest.
    """

    def __init__(
        self,
        log: NoticeLog,
        table: TableName,
        stop: StopPoint,
        plugin: str,
        baseline: Lsn | None = None,
    ) -> None:
        self.log = log
        #: A baseline's point: a page whose transactions all committed before it holds only
        #: changes the baseline already has, so what the plugin left out there is not lost.
        self.baseline = baseline
        self._in_baseline: set[int] = set()
        self._after_baseline: set[int] = set()
        self.table = table
        self.stop = stop
        self.plugin = plugin
        self.stopped = False
        self._stop_page = 0
        self._applied_before_stop = False
        self._applied = False
        self._open: Begin | None = None
        self._decided = True
        #: Pages before this one were judged whole (:meth:`_applied_whole`).
        self._judged = 0

    def follow(self, events: Iterable[Event]) -> Iterator[Event]:
        pages = self.log.pages  # only appended to: the current page's number is its length - 1
        page = len(pages) - 1
        for event in events:
            now = len(pages) - 1
            if now != page:
                if not self.stopped:
                    for number in range(page, now):
                        self._applied_whole(pages[number])
                    self._judged = now
                page, self._applied = now, False
            if not isinstance(event, Change):  # only a Begin or a Commit is tracked
                self._track(event, now)
            yield event
        if not self.stopped:
            for number in range(page, len(self.log.pages)):
                self._applied_whole(self.log.pages[number])

    def _track(self, event: Event, page: int) -> None:
        if self.stopped:
            return
        if isinstance(event, Begin):
            stops = self.stop.stops(event.xid, event.commit_lsn, event.end_lsn, event.commit_time)
            if stops:
                self._stop_here(page)
            else:
                self._open, self._decided = event, stops is False
        elif isinstance(event, Commit):
            begin, self._open = self._open, None
            self._place(begin, event, page)
            if not self._decided and begin is not None:
                stops = self.stop.stops(
                    begin.xid if begin.xid is not None else event.xid,
                    begin.commit_lsn or event.commit_lsn,
                    begin.end_lsn or event.end_lsn,
                    begin.commit_time or event.commit_time,
                )
                if stops:
                    self._stop_here(page)
                    return
            self._applied = True

    def _place(self, begin: Begin | None, commit: Commit, page: int) -> None:
        """Note whether the transaction committed before the baseline's point (unknown
        counts as after it)."""
        if self.baseline is None:
            return
        after = StartPoint(lsn=self.baseline).starts(
            None,
            commit.commit_lsn or (begin.commit_lsn if begin else None),
            commit.end_lsn or (begin.end_lsn if begin else None),
            None,
        )
        (self._in_baseline if after is False else self._after_baseline).add(page)

    def _stop_here(self, page: int) -> None:
        self.stopped = True
        self._stop_page = page
        self._applied_before_stop = self._applied

    def _applied_whole(self, page: Page) -> None:
        error = self._lost_error(page)
        if error is not None:
            raise error

    def _lost_error(self, page: Page, then: str = "") -> LostChanges | None:
        """The refusal for ``page`` if the plugin left changes of the table out of it (and
        they are not all in the baseline); ``then`` tells what failed because of them."""
        lost = self.log.lost(page, self.table)
        if not lost:
            return None
        if page.number in self._in_baseline and page.number not in self._after_baseline:
            return None  # every transaction of the page is in the baseline
        stop_hint = (
            f", or keep only what committed before it with --stop-before-lsn {page.after}"
            if page.number > 1 and page.after is not None
            else ""
        )
        return LostChanges(
            f"{self.plugin} left {_describe(lost)} of {self.table} out of the stream, "
            f"{page.span()} (the server warned: {_example(page, self.table)}){then}: the table "
            "has no usable replica identity (REPLICA IDENTITY NOTHING, a DEFERRABLE primary "
            f"key, or no primary key), so {self.plugin} cannot say which row such a change "
            f"touched and {self.table} cannot be rebuilt exactly through it; read the slot with "
            "--via-plugin test_decoding and --force (it prints an UPDATE's new row: give --ddl "
            f"with the key to apply it){stop_hint}",
            table=str(self.table),
            lsn=page.last or page.after,
        )

    def explain(self, error: ReplayError) -> WalrecoverError:
        """What to report when replay failed (always on a change before the stop point): a
        change the plugin left out of a page read so far, up to the stop point's, and not yet
        judged (wal2json drops an UPDATE or DELETE it cannot identify, so a later change of the
        same row fails, e.g. an INSERT of a key the lost UPDATE had moved away) rather than the
        failure it caused; else ``error``."""
        lsn, xid = error.facts.get("lsn"), error.facts.get("xid")
        where = f" at LSN {lsn}" if lsn is not None else ""
        where += f" (transaction {xid})" if lsn is not None and xid is not None else ""
        then = f", and the change{where} that depended on it then failed to apply"
        # Replay applies a batch's changes when it commits, which for the last batch is once
        # the stop point's transaction has begun: a failure then is still of a change before
        # the stop point, so the pages up to the one holding the stop point explain it.
        end = self._stop_page + 1 if self.stopped else None
        for page in self.log.pages[self._judged : end]:
            lost = self._lost_error(page, then)
            if lost is not None:
                return lost
        return error

    def verdict(self) -> tuple[list[str], list[str]]:
        """(reasons the rebuilt table is not proven exact, warnings) for the pages with lost
        changes that :meth:`follow` did not already refuse: the ones at or after the stop."""
        unproven: list[str] = []
        warnings: list[str] = []
        if not self.stopped:
            return unproven, warnings
        self.log.settle()
        for page in self.log.pages[self._stop_page :]:
            lost = self.log.lost(page, self.table)
            if not lost:
                continue
            if page.number == self._stop_page and self._applied_before_stop:
                unproven.append(
                    f"{self.plugin} left {_describe(lost)} of {self.table} out of the stream "
                    f"{page.span()}, where the stop point ({self.stop.describe()}) also falls: "
                    "if one committed before the stop point, the rebuilt table lacks it (the "
                    "table has no usable replica identity); give the stop point as "
                    "--stop-before-lsn to decide it exactly, or read the slot with --via-plugin "
                    "test_decoding"
                )
            else:
                warnings.append(
                    f"{self.plugin} left {_describe(lost)} of {self.table} out of the stream "
                    f"{page.span()}, after the stop point: the rebuilt table does not need them, "
                    "but the audit's after_stop rows lack them"
                )
        return unproven, warnings


def _example(page: Page, table: TableName) -> str:
    for _, message in page.notices:
        if lost_ops(message, table) is not None:
            return f'"{message}"'
    return ""
