"""The rebuilt table's shape as replay writes it, following the stream's ALTER TABLEs.

:class:`Shape` creates the target from the stream's first relation (or ``--ddl``), knows which
columns replay writes (never the target's generated ones), what identifies a row (a real key, a
key guessed from old images, or the whole row), the column types and indexes the applier's
statements use, and follows added, dropped and widened columns; a type change or a new relation
id stops the replay (see "ALTER TABLE in the stream" in docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..errors import ReplayError
from ..stream.model import Change, Column, Op, Relation, TableName, Values
from .applied import Txn, at, stop_hint
from .target import Target

#: A row's identity for reordering: its key values, or its whole row (keyless tables).
Identity = tuple[str | None, ...]

#: Types whose text is stored as is: a value of at most this many UTF-8 bytes fits in 24 bytes
#: with its 4-byte header, and PostgreSQL never moves a value that small out of line (only
#: values larger than a TOAST pointer, MAXALIGN(18) = 24 bytes, are candidates).
_PLAIN_TEXT_TYPES = frozenset({"text", "character varying", "varchar"})
_INLINE_TEXT_BYTES = 20


class Buffer(Protocol):
    """The changes buffered under the current definition (the batch applier)."""

    def flush_midway(self) -> None:
        """Send them (before an ALTER TABLE changes the definition they were read with)."""

    def identity_changed(self) -> None:
        """Their row identities were computed another way: let no insert overtake them."""


class Shape:
    """The target table's columns, key and types, as the stream last defined them."""

    def __init__(
        self,
        target: Target,
        table: TableName,
        *,
        ddl: str | None,
        on_created: Callable[[Target], None] | None = None,
    ) -> None:
        self.target = target
        self.table = table
        self.ddl = ddl
        #: Called right after the target table is created, before its first batch commits.
        self.on_created = on_created
        #: The table exists (created by this run, or by the one it resumes).
        self.created = False
        self.relation: Relation | None = None
        self.columns: tuple[str, ...] = ()
        #: A real key (the target's primary key, or one the server declared): updates and
        #: deletes find their row by ``key = value``.
        self.key: tuple[str, ...] = ()
        #: A key inferred from old images (test_decoding) while there is no real one: only a
        #: hypothesis, used to index and to order, never to match by ``=`` alone.
        self.guess: tuple[str, ...] = ()
        #: The target's columns: SQL type, and whether values of it always fit an index entry.
        self.types: dict[str, str] = {}
        #: The target's column types without their modifiers (``numeric`` for
        #: ``numeric(12,2)``): a cast to them keeps what an assignment then checks.
        self.base_types: dict[str, str] = {}
        self._fixed_length: frozenset[str] = frozenset()
        #: Columns an index can narrow by ``=`` (see :meth:`Target.equality_indexed`).
        self.indexed: frozenset[str] = frozenset()
        #: Generated columns of the target (from --ddl): never written.
        self._generated: frozenset[str] = frozenset()
        #: ALTER TABLEs followed in the rebuilt table, for the result.
        self.schema_changes: list[str] = []
        #: Reasons the rebuilt table may differ from the truth (an ADD COLUMN ... DEFAULT).
        self.unproven: list[str] = []
        #: Columns already reported as left out of an update though not unchanged TOAST.
        self._left_out: set[str] = set()

    # -- the definition ----------------------------------------------------------------------

    def adopt(self, relation: Relation, buffer: Buffer) -> None:
        """Take ``relation`` as the table's definition, creating the target if needed."""
        target = self.target
        if not self.created:
            target.create(relation, self.ddl, self.table)
            self.created = True
            if self.on_created is not None:
                self.on_created(target)
        self.relation = relation
        existing = target.columns()
        missing = [name for name in relation.column_names if name not in existing]
        if missing:
            raise ReplayError(
                f"{target.into} has no column {missing[0]!r} that the stream carries: "
                "fix the --ddl or drop the target and rebuild",
                table=str(target.into),
            )
        self._generated = target.generated_columns()
        self.columns = self._written(relation)
        self._load_columns()
        self.key = target.primary_key()
        if not self.key and relation.key_columns:
            self.learn_identity(relation, buffer)

    def follow(self, change: Change, txn: Txn | None, buffer: Buffer) -> None:
        """Follow the definition ``change`` carries, when it is not the current one."""
        relation = change.relation
        if relation is self.relation:
            return
        if relation.complete:
            self._check_schema(change, txn, buffer)
        if not self.key and relation.key_columns:
            self.learn_identity(relation, buffer)

    def _written(self, relation: Relation) -> tuple[str, ...]:
        """The stream's columns that replay writes: not the target's generated ones (a --ddl
        with GENERATED ALWAYS ... STORED), which the server computes and refuses to take."""
        return tuple(name for name in relation.column_names if name not in self._generated)

    def _load_columns(self) -> None:
        """Read the target's column types and indexes (after creating or altering it)."""
        types = self.target.column_types()
        self.types = {name: type_sql for name, (type_sql, _, _) in types.items()}
        self.base_types = {name: base for name, (_, _, base) in types.items()}
        self._fixed_length = frozenset(name for name, (_, length, _) in types.items() if length > 0)
        self.indexed = self.target.equality_indexed()

    def check_left_out(self, change: Change, held: Values, txn: Txn | None) -> None:
        """An update left the columns of ``held`` out as unchanged TOAST (wal2json's way of
        saying a TOASTed value did not change); the rebuilt row holds ``held`` there.

        A value that cannot have been stored out of line (NULL, a fixed-length type, a short
        text) was not an unchanged TOASTed value: the column was gone, dropped by an ALTER
        TABLE that wal2json only shows when an insert next lists the columns. The rebuilt
        table still has it, so it is not the dropped one: say so, once per column.
        """
        for name, value in held.items():
            if name in self._left_out or not self._never_toasted(name, value):
                continue
            self._left_out.add(name)
            self.unproven.append(
                f"the update{at(change, txn)} of {self.table} left out column {name} as an "
                "unchanged TOASTed value, but its value there "
                f"({'NULL' if value is None else repr(value)}) cannot be stored out of line: "
                f"{name} was most likely dropped (ALTER TABLE ... DROP COLUMN) before it, "
                f"which wal2json shows only when an insert next lists the columns, and "
                f"{self.target.into} still has it; check the dropped table's definition and "
                f"drop {name} from {self.target.into} if it was (pgoutput and test_decoding "
                "show a dropped column)"
            )

    def _never_toasted(self, name: str, value: str | None) -> bool:
        """Whether ``value`` of column ``name`` cannot have been a TOASTed value."""
        if value is None or name in self._fixed_length:
            return True
        base = self.types.get(name, "").split("(", maxsplit=1)[0]
        return base in _PLAIN_TEXT_TYPES and len(value.encode()) <= _INLINE_TEXT_BYTES

    def learn_identity(self, relation: Relation, buffer: Buffer) -> None:
        """The stream names key columns while the target has no primary key.

        A key the server declared (pgoutput's and wal2json's key flags) is a real key, unless
        it is ``REPLICA IDENTITY FULL`` (:attr:`Relation.keyed`): then the table is keyless. A
        key inferred from old images (test_decoding) is only a guess. Either is indexed so
        updates and deletes find their rows without scanning the table.
        """
        key = relation.key_columns
        full = set(self.columns) <= set(key)
        if relation.key_inferred:
            guess = () if full else key
            if guess != self.guess:
                buffer.identity_changed()
                self.guess = guess
                if guess:
                    self._index_guess(guess)
            return
        if not relation.keyed:
            return
        buffer.identity_changed()
        self.key = key
        self.target.try_index(key)
        self.indexed = self.target.equality_indexed()

    def _index_guess(self, guess: tuple[str, ...]) -> None:
        """Index an inferred key so that an index never fails the recovery: a btree over its
        fixed-length columns (their values always fit), else a hash index (no size limit) on
        its first column; without either (no operator class), no index."""
        fixed = tuple(name for name in guess if name in self._fixed_length)
        if not (fixed and self.target.try_index(fixed)):
            self.target.try_index(guess[:1], method="hash")
        self.indexed = self.target.equality_indexed()

    # -- row identity ------------------------------------------------------------------------

    def key_values(self, change: Change) -> Identity | None:
        """The row's key values before the change, by the real key; None if not known."""
        key = self.key
        if not key:
            return None
        if len(key) == 1:  # the usual case, without a generator per change
            (name,) = key
            for image in (change.old, change.new):
                if image is not None and name in image:
                    return (image[name],)
            return None
        for image in (change.old, change.new):
            if image is not None and all(name in image for name in key):
                return tuple([image[name] for name in key])
        return None

    def row_identity(self, image: Values | None) -> Identity | None:
        """The identity of a row image (its key, guessed key, or whole row), if it holds it."""
        if image is None:
            return None
        names = self.key or self.guess or self.columns
        try:
            if len(names) == 1:
                return (image[names[0]],)
            return tuple([image[name] for name in names])
        except KeyError:
            return None

    def old_identity(self, change: Change) -> Identity | None:
        """The identity of the row an update or delete touches, None if it cannot be known."""
        if self.key:
            return self.key_values(change)
        if change.old is not None:
            return self.row_identity(change.old)
        return self.row_identity(change.new) if change.op is Op.UPDATE else None

    # -- ALTER TABLE -------------------------------------------------------------------------

    def _check_schema(self, change: Change, txn: Txn | None, buffer: Buffer) -> None:
        """Follow an ALTER TABLE in the stream, or stop with an error naming its LSN.

        Added and dropped columns are applied to the rebuilt table (after sending what was
        buffered under the old definition); a column whose type changed, or a table dropped
        and re-created under the same name (a new relation id), stops the replay: guessing
        would misalign data.
        """
        assert self.relation is not None
        old, new = self.relation, change.relation
        if new.relation_id is not None and old.relation_id not in (None, new.relation_id):
            raise ReplayError(
                f"{self.table} was dropped and re-created{at(change, txn)} (relation id "
                f"{old.relation_id}, then {new.relation_id}): stop before it with "
                f"{stop_hint(txn)}",
                table=str(self.table),
                lsn=change.lsn,
            )
        current = {c.name: c.type_name for c in old.columns}
        seen = {c.name: c.type_name for c in new.columns}
        if current == seen:
            self.relation = new
            return
        changed = [name for name in current.keys() & seen.keys() if current[name] != seen[name]]
        if changed and not all(_same_type(current[n], seen[n]) for n in changed):
            raise ReplayError(
                f"the type of {self.table}.{changed[0]} changes{at(change, txn)} "
                f"({current[changed[0]]} to {seen[changed[0]]}): stop before it with "
                f"{stop_hint(txn)}, or rebuild from a --ddl of the new definition",
                table=str(self.table),
                lsn=change.lsn,
            )
        added = [c for c in new.columns if c.name not in current]
        dropped = [name for name in current if name not in seen]
        # Same type with another modifier on both sides (numeric(12,2) -> numeric(14,2)).
        retyped = [n for n in changed if "(" in current[n] and "(" in seen[n]]
        altered = bool(added or dropped or retyped)
        if altered:
            buffer.flush_midway()
            self._alter(change, txn, added, dropped, {n: seen[n] for n in retyped})
        self.relation = new
        self.columns = self._written(new)
        if altered:
            self._load_columns()

    def _alter(
        self,
        change: Change,
        txn: Txn | None,
        added: list[Column],
        dropped: list[str],
        retyped: dict[str, str],
    ) -> None:
        """Apply the stream's ALTER TABLE to the target (what was buffered before it is sent)."""
        target = self.target
        existing = target.columns()
        for name, type_name in retyped.items():
            target.retype_column(name, type_name)
        for column in added:
            self._add_column(column, change, txn, defined=column.name in existing)
        for name in dropped:
            if name in existing:
                target.drop_column(name)
        self.schema_changes.append(
            f"{at(change, txn).strip() or 'in the stream'}: "
            + ", ".join(
                [f"added {c.name}" for c in added]
                + [f"dropped {n}" for n in dropped]
                + [f"{n} became {t}" for n, t in retyped.items()]
            )
        )

    def _add_column(
        self, column: Column, change: Change, txn: Txn | None, *, defined: bool
    ) -> None:
        """Follow an ADD COLUMN; say so when the rows that existed then may differ.

        PostgreSQL keeps an added column's DEFAULT for the rows that existed at the ALTER TABLE
        in the catalog, not in the WAL: the stream shows them with no value for it. A column
        the target already has (from --ddl) keeps its definition: those rows were copied
        without the column, so they hold its DEFAULT, which is exact when it is a constant.
        """
        target = self.target
        if not defined:
            target.add_column(column)
        rows = target.count_rows(commit=False)
        if not rows:
            return
        added = (
            f"column {column.name} of {self.table} first appears{at(change, txn)}, added by "
            f"an ALTER TABLE when {rows} rows existed"
        )
        if not defined:
            self.unproven.append(
                f"{added}: {target.into} holds NULL in it for those rows, but the dropped table "
                "may hold the column's DEFAULT there (kept in the catalog, not in the WAL); "
                f"give --ddl FILE defining {column.name} with the DEFAULT of that ALTER TABLE "
                "to rebuild them exactly"
            )
        elif target.constant_default(column.name) is None:
            self.unproven.append(
                f"{added}: those rows took the --ddl DEFAULT of {column.name}, which is not a "
                "constant, when walrecover wrote them, not when the ALTER TABLE ran; give the "
                "value the ALTER TABLE gave them as a constant DEFAULT in the --ddl file"
            )


def _same_type(a: str, b: str) -> bool:
    """Two spellings of one type (a plugin that omits modifiers, or qualifies names)."""

    def base(name: str) -> str:
        return name.split("(", maxsplit=1)[0].rsplit(".", 1)[-1].strip('"')

    return base(a) == base(b)
