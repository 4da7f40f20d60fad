"""The canonical model every decoder produces and every consumer reads.

A decoded stream is a sequence of events in commit order: :class:`Begin`, then the transaction's
:class:`Change` objects, then :class:`Commit`. Consumers that want whole transactions group them
with :func:`transactions`; replay and the audit stream the events so memory stays bounded however
large a transaction is.

Values stay in PostgreSQL's text representation (what the type's output function prints, None for
NULL) until a consumer needs a typed value: money stays exact and replay feeds COPY unchanged.

The module is a little over 400 lines because it is one concept, the vocabulary every stage
shares (events, rows' outcomes, stop and start points, table names), best read in one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from .lsn import Lsn

#: One row image: column name -> canonical text, or None for NULL.
Values = Mapping[str, str | None]


class Op(StrEnum):
    """What a change did to its row (or table, for truncate)."""

    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    TRUNCATE = "truncate"


class Outcome(StrEnum):
    """What became of a recovered row change: the audit's ``outcome`` column.

    Replay sets the first three when it applies a change; the audit sets ``superseded`` and
    ``removed`` when it closes, once the later changes are known. It lives here, beside
    :class:`Op`, because replay, the audit and the ledger all speak it (what each value means
    to a reader: :mod:`walrecover.audit.outcomes`).
    """

    APPLIED = "applied"
    #: An update or delete found no row with its key (the row predates the stream).
    NO_ROW = "no_row"
    #: Applied, then overwritten by a later update of the same row (set when the audit closes).
    SUPERSEDED = "superseded"
    #: Applied, then removed by a later delete or truncate (set when the audit closes).
    REMOVED = "removed"
    #: Not applied: its transaction commits at or after the stop point.
    AFTER_STOP = "after_stop"


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a relation as the stream describes it."""

    name: str
    #: The type as ``format_type`` prints it, modifier included: ``numeric(12,2)``.
    type_name: str
    type_oid: int | None = None
    #: The type modifier (-1 when none), when the plugin sends it.
    typmod: int | None = None
    #: Part of the primary key or replica identity.
    is_key: bool = False


@dataclass(frozen=True, slots=True)
class Relation:
    """A table as the stream describes it at one point in time.

    Two relations with the same name but different ``relation_id`` are different tables (one was
    dropped and re-created). ``complete`` is False when the stream showed only some columns
    (a delete that carries only the key, a truncate).
    """

    schema: str
    name: str
    columns: tuple[Column, ...]
    relation_id: int | None = None
    complete: bool = True
    #: The key columns were inferred from the columns old images printed (test_decoding), not
    #: declared by the server: a hypothesis (an old image of a ``REPLICA IDENTITY FULL`` row
    #: skips its NULL columns and looks like a key), never a primary key of the rebuilt table.
    key_inferred: bool = False
    #: Whether the stream says the table's replica identity is FULL (pgoutput's Relation
    #: message does); None where it does not, and an identity of every column is taken as FULL.
    identity_full: bool | None = None
    #: Derived from ``columns`` once (changes ask for them millions of times).
    column_names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    key_columns: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "column_names", tuple(c.name for c in self.columns))
        object.__setattr__(self, "key_columns", tuple(c.name for c in self.columns if c.is_key))

    @property
    def qualified_name(self) -> str:
        """``schema.table`` as a user would type it (unquoted)."""
        return f"{self.schema}.{self.name}"

    def column(self, name: str) -> Column | None:
        for column in self.columns:
            if column.name == name:
                return column
        return None

    @property
    def keyed(self) -> bool:
        """The key columns are a real key: declared by the server and not ``REPLICA IDENTITY
        FULL`` (a primary key may cover every column, or every column a publication sends)."""
        key = self.key_columns
        if not key or self.key_inferred:
            return False
        if self.identity_full is not None:
            return not self.identity_full
        return len(key) < len(self.columns)

    def same_table(self, schema: str, name: str) -> bool:
        return self.schema == schema and self.name == name


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One message as a source read it: the plugin's data with the LSN and xid it came with."""

    data: str | bytes
    lsn: Lsn | None = None
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Begin:
    """A committed transaction starts. Fields a plugin does not send are None."""

    xid: int | None
    #: Start of the commit record (pgoutput's ``commit_lsn``, wal2json's ``lsn``).
    commit_lsn: Lsn | None = None
    #: End of the commit record (the position a consumer confirms).
    end_lsn: Lsn | None = None
    commit_time: datetime | None = None
    lsn: Lsn | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """One row change (or one truncated table)."""

    op: Op
    relation: Relation
    #: After-image (insert, update); columns absent from it were not sent.
    new: Values | None = None
    #: Before-image: the old key (replica identity) or the whole old row.
    old: Values | None = None
    #: Columns whose value did not change and was not sent (TOAST): keep the previous value.
    unchanged_toast: frozenset[str] = frozenset()
    lsn: Lsn | None = None
    xid: int | None = None

    def key(self) -> tuple[str | None, ...] | None:
        """The row's identity before the change: old key if sent, else the new image's key."""
        key_columns = self.relation.key_columns
        if not key_columns:
            return None
        image = self.old if self.old is not None else self.new
        if image is None or any(name not in image for name in key_columns):
            return None
        return tuple(image[name] for name in key_columns)

    def new_key(self) -> tuple[str | None, ...] | None:
        """The row's identity after the change (differs from :meth:`key` when a key changed)."""
        key_columns = self.relation.key_columns
        if not key_columns or self.new is None:
            return None
        if any(name not in self.new for name in key_columns):
            return self.key()
        return tuple(self.new[name] for name in key_columns)


@dataclass(frozen=True, slots=True)
class Commit:
    """The transaction opened by the last :class:`Begin` committed."""

    xid: int | None
    commit_lsn: Lsn | None = None
    end_lsn: Lsn | None = None
    commit_time: datetime | None = None


Event = Begin | Change | Commit


@dataclass(frozen=True, slots=True)
class Transaction:
    """A committed transaction with its changes, for consumers that want whole transactions."""

    xid: int | None
    commit_lsn: Lsn | None
    end_lsn: Lsn | None
    commit_time: datetime | None
    changes: tuple[Change, ...] = field(default=())


def transactions(events: Iterable[Event]) -> Iterator[Transaction]:
    """Group an event stream into transactions (holds one transaction's changes in memory)."""
    begin: Begin | None = None
    changes: list[Change] = []
    for event in events:
        if isinstance(event, Begin):
            begin, changes = event, []
        elif isinstance(event, Change):
            changes.append(event)
        else:
            yield Transaction(
                xid=event.xid if event.xid is not None else (begin.xid if begin else None),
                commit_lsn=event.commit_lsn or (begin.commit_lsn if begin else None),
                end_lsn=event.end_lsn or (begin.end_lsn if begin else None),
                commit_time=event.commit_time or (begin.commit_time if begin else None),
                changes=tuple(changes),
            )
            begin, changes = None, []


@dataclass(frozen=True, slots=True)
class StopPoint:
    """Where recovery stops, exclusively, at transaction granularity.

    ``lsn``: transactions whose commit record starts at or after it are left out (when a plugin
    only gives the commit record's end, ``end_lsn > lsn`` is the same test for any record
    boundary). ``xid``: stop at that transaction's commit, like ``recovery_target_xid`` with
    ``recovery_target_inclusive = off``; either a 32-bit xid or an epoch-qualified ``xid8`` (what
    ``pg_current_xact_id()`` returns), matched against the stream's 32-bit xids by its low 32
    bits. ``time``: the first transaction committed at or after it and everything after are left
    out.
    """

    lsn: Lsn | None = None
    xid: int | None = None
    time: datetime | None = None

    @property
    def is_set(self) -> bool:
        return self.lsn is not None or self.xid is not None or self.time is not None

    @property
    def xid32(self) -> int | None:
        """The xid as the stream prints it (the low 32 bits of an xid8)."""
        return None if self.xid is None else self.xid & XID_MASK

    @property
    def epoch(self) -> int | None:
        """The epoch of an xid8 stop point; None for a plain 32-bit xid."""
        return None if self.xid is None or self.xid <= XID_MASK else self.xid >> 32

    def describe(self) -> str:
        if self.lsn is not None:
            return f"before LSN {self.lsn}"
        if self.xid is not None:
            if self.epoch is not None:
                return f"before xid {self.xid} (xid {self.xid32} of epoch {self.epoch})"
            return f"before xid {self.xid}"
        if self.time is not None:
            return f"before {self.time.isoformat()}"
        return "end of stream"

    def stops(
        self,
        xid: int | None,
        commit_lsn: Lsn | None,
        end_lsn: Lsn | None,
        commit_time: datetime | None,
    ) -> bool | None:
        """True if the transaction is at or past the stop point; None if it cannot tell yet."""
        if self.lsn is not None:
            if commit_lsn is not None:
                return commit_lsn >= self.lsn
            if end_lsn is not None:
                return end_lsn > self.lsn
            return None
        if self.xid is not None:
            return None if xid is None else xid == self.xid32
        if self.time is not None:
            return None if commit_time is None else commit_time >= self.time
        return False


#: The 32 bits of an xid (an xid8 is the epoch above them).
XID_MASK = 0xFFFFFFFF

#: The absence of a stop point: replay everything.
NO_STOP = StopPoint()


@dataclass(frozen=True, slots=True)
class StartPoint:
    """Where a selection starts, inclusively, at transaction granularity (``decode``'s start).

    The mirror of :class:`StopPoint`, so that a start and a stop at the same place split the
    stream into two parts without overlap or gap. ``lsn``: transactions whose commit record
    starts at or after it are included (``end_lsn > lsn`` where a plugin only gives the commit
    record's end). ``xid``: from that transaction's commit on, it included (like
    ``--stop-before-xid``, a place in commit order, not a range of xids). ``time``: transactions
    committed at or after it. ``only``: with ``xid``, that one transaction and nothing after.
    """

    lsn: Lsn | None = None
    xid: int | None = None
    time: datetime | None = None
    only: bool = False

    @property
    def is_set(self) -> bool:
        return self.lsn is not None or self.xid is not None or self.time is not None

    def describe(self) -> str:
        if self.lsn is not None:
            return f"from LSN {self.lsn}"
        if self.xid is not None:
            return f"only transaction {self.xid}" if self.only else f"from transaction {self.xid}"
        if self.time is not None:
            return f"from {self.time.isoformat()}"
        return "from the start of the stream"

    def starts(
        self,
        xid: int | None,
        commit_lsn: Lsn | None,
        end_lsn: Lsn | None,
        commit_time: datetime | None,
    ) -> bool | None:
        """True if the transaction is the start or after it; None if it cannot tell yet.

        For ``xid`` this answers for one transaction only (is it the start?): the caller keeps
        everything after it, since a later transaction may have a smaller xid.
        """
        if self.lsn is not None:
            if commit_lsn is not None:
                return commit_lsn >= self.lsn
            if end_lsn is not None:
                return end_lsn > self.lsn
            return None
        if self.xid is not None:
            return None if xid is None else xid == self.xid
        if self.time is not None:
            return None if commit_time is None else commit_time >= self.time
        return True


#: No start: from the beginning of the stream.
NO_START = StartPoint()


@dataclass(frozen=True, slots=True)
class TableName:
    """A schema-qualified table name, parsed the way PostgreSQL reads one.

    Unquoted parts fold to lower case; double-quoted parts keep case, dots and spaces
    (``"My Schema"."Ledger.2024"``). Without a schema the default is ``public``.
    """

    schema: str
    name: str

    @classmethod
    def parse(cls, text: str, default_schema: str = "public") -> TableName:
        """Parse ``schema.table`` like PostgreSQL: fold unquoted ASCII letters, keep quoted."""
        parts: list[str] = []
        i, n = 0, len(text)
        while True:
            while i < n and text[i].isspace():
                i += 1
            if i < n and text[i] == '"':
                part, i = _quoted(text, i)
                parts.append(part)
                while i < n and text[i].isspace():
                    i += 1
            else:
                j = text.find(".", i)
                j = n if j < 0 else j
                part = text[i:j].strip()
                if not part or '"' in part:
                    raise ValueError(f"{text!r} is not a table name: write schema.table")
                parts.append(part.translate(_ASCII_LOWER))
                i = j
            if i >= n:
                break
            if text[i] != ".":
                raise ValueError(f"{text!r} is not a table name: write schema.table")
            i += 1
        if len(parts) == 1:
            return cls(default_schema, parts[0])
        if len(parts) == 2:
            return cls(parts[0], parts[1])
        raise ValueError(f"{text!r} is not a table name: write schema.table")

    def __str__(self) -> str:
        return f"{_show_ident(self.schema)}.{_show_ident(self.name)}"


def _quoted(text: str, i: int) -> tuple[str, int]:
    """The double-quoted name part starting at ``text[i]`` (``""`` is one quote), and the
    index after its closing quote."""
    buf: list[str] = []
    j, n = i + 1, len(text)
    while True:
        if j >= n:
            raise ValueError(f"unterminated quote in table name {text!r}")
        if text[j] == '"':
            if j + 1 < n and text[j + 1] == '"':
                buf.append('"')
                j += 2
                continue
            break
        buf.append(text[j])
        j += 1
    if not buf:
        raise ValueError(f"{text!r} is not a table name: a quoted name cannot be empty")
    return "".join(buf), j + 1


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _show_ident(part: str) -> str:
    if (
        part
        and (part[0].isalpha() or part[0] == "_")
        and all(ch.islower() or ch.isdigit() or ch == "_" for ch in part)
        and part.isascii()
    ):
        return part
    return '"' + part.replace('"', '""') + '"'
