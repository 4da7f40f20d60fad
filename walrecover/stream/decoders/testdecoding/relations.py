"""What a test_decoding stream has shown of each table: columns, types, key, replica identity
(the stream has no Relation messages, so the decoder learns a table from its rows)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...model import Column, Relation
from .grammar import _Item


@dataclass(slots=True)
class _Table:
    """What the stream has shown of one table so far."""

    schema: str
    name: str
    #: (name, type) in table order, as far as seen.
    columns: tuple[tuple[str, str], ...]
    #: True once a whole row (INSERT, UPDATE's new tuple) listed every column.
    complete: bool
    #: The replica identity's columns, once an old image showed them.
    key: tuple[str, ...] | None = None
    #: The identity is REPLICA IDENTITY FULL (old images differed): every column is the key.
    full_identity: bool = False
    relation: Relation | None = None

    def build(self) -> Relation:
        """The current :class:`Relation` (the same object while nothing changed)."""
        if self.relation is None:
            keys = set(self.key or ())
            self.relation = Relation(
                schema=self.schema,
                name=self.name,
                columns=tuple(
                    Column(name, type_name, None, None, self.full_identity or name in keys)
                    for name, type_name in self.columns
                ),
                complete=self.complete,
                key_inferred=bool(self.key) or self.full_identity,
            )
        return self.relation

    def see_row(self, items: Sequence[_Item]) -> None:
        """A whole row: it lists every column of the table as it is now."""
        columns = tuple((name, type_name) for name, type_name, _ in items)
        if columns != self.columns or not self.complete:
            self.columns, self.complete, self.relation = columns, True, None
            # A key column renamed or dropped: the key must be learnt again (the next old image
            # printing other names is not the identity turning FULL).
            if self.key is not None and not set(self.key) <= {name for name, _ in columns}:
                self.key, self.full_identity = None, False

    def see_part(self, items: Sequence[_Item]) -> None:
        """Some columns (an old image): add what is new, without claiming completeness."""
        known = dict(self.columns)
        if all(known.get(name) == type_name for name, type_name, _ in items):
            return
        known.update((name, type_name) for name, type_name, _ in items)
        self.columns = tuple(known.items())
        self.complete, self.relation = False, None

    def see_identity(self, names: tuple[str, ...]) -> None:
        """An old image printed ``names``: learn (or correct) the replica identity."""
        if not names or self.full_identity:
            return
        if self.key is None:
            self.key, self.relation = names, None
        elif set(names) != set(self.key):
            self.full_identity, self.relation = True, None
