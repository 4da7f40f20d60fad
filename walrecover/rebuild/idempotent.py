"""The statements of an idempotent replay (a baseline whose point is not known exactly).

Replayed over a baseline that may already hold some of the stream's changes, each change must
give the same row whichever state it meets:

- an insert replaces a row with its key (``INSERT ... ON CONFLICT (key) DO UPDATE``);
- an update writes its new image whether or not the row is there (an upsert), keeping the
  values the stream left out (unchanged TOAST) from the row it finds: the row under the old
  key when the key changed (deleted in the same statement), else the row under the key;
- a delete of a missing row is a no-op (replay's own ``DELETE ... RETURNING`` already is).

Only for tables with a primary key (``ON CONFLICT`` needs it); the baseline refuses the others
when it loads. :class:`IdempotentApplier` is the batch applier of this mode (a subclass of
:class:`~.apply.Applier`): its inserts and updates go through :func:`upsert`, and an update or
delete that finds no row is expected, so it does not make the table unproven.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from psycopg import sql

from ..stream.model import Change, Op
from .apply import Applier, Pending
from .statements import row_condition


class IdempotentApplier(Applier):
    """The batch applier of a replay over a baseline whose point is not known exactly."""

    #: A change that finds no row is expected over such a baseline (it may hold it already).
    no_row_unproven = False
    #: An upsert of a missing row reads back NULL for what the stream left out.
    left_out_checked = False
    #: Its inserts and updates are upserts, not the statements a set form is made for.
    set_based = False

    def _insert(self, inserts: list[Pending]) -> None:
        """Inserts are upserts, sent like the other statements (no COPY)."""
        self._apply_others(inserts)

    def _statement(self, change: Change) -> tuple[sql.Composed, list[str | None]]:
        """An insert or update as an upsert (the row under the old key removed when the key
        changed); a delete or truncate as the plain applier sends it."""
        if change.op in (Op.DELETE, Op.TRUNCATE):
            return super()._statement(change)
        shape = self.shape
        old, new = shape.key_values(change), change.new or {}
        moved = change.old is not None and old != tuple(new.get(k) for k in shape.key)
        row = row_condition(shape, change, self._txn) if moved else None
        return upsert(shape.target.ident, shape.columns, shape.key, shape.types, change, row)


def upsert(
    ident: sql.Identifier,
    columns: Sequence[str],
    key: Sequence[str],
    types: Mapping[str, str],
    change: Change,
    old_where: tuple[sql.Composable, list[str | None]] | None,
) -> tuple[sql.Composed, list[str | None]]:
    """The statement for an insert or update of ``change`` and its parameters.

    ``old_where`` is the condition (and parameters) of the row under the old key, given only
    when an update changes the key.
    """
    new = change.new or {}
    present = [name for name in columns if name in new]
    kept = sorted(change.unchanged_toast) if change.op is Op.UPDATE else []
    conflict = sql.SQL(", ").join(map(sql.Identifier, key))
    assign = [sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(name)) for name in present]
    returning = (
        sql.SQL(", ").join(sql.SQL("r.{}::text").format(sql.Identifier(name)) for name in kept)
        if kept
        else sql.SQL("1")
    )
    values = [new[name] for name in present]
    if old_where is None:
        statement = sql.SQL(
            "INSERT INTO {} AS r ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {} RETURNING {}"
        ).format(
            ident,
            sql.SQL(", ").join(map(sql.Identifier, present)),
            sql.SQL(", ").join(sql.Placeholder() * len(present)),
            conflict,
            sql.SQL(", ").join(assign),
            returning,
        )
        return statement, values
    where, params = old_where
    assign += [
        sql.SQL("{0} = coalesce(EXCLUDED.{0}, r.{0})").format(sql.Identifier(name)) for name in kept
    ]
    statement = sql.SQL(
        "WITH gone AS (DELETE FROM {table} WHERE {where} RETURNING {kept})"
        " INSERT INTO {table} AS r ({names}) SELECT {values} FROM (SELECT) AS one"
        " LEFT JOIN gone ON true ON CONFLICT ({conflict}) DO UPDATE SET {assign} RETURNING {ret}"
    ).format(
        table=ident,
        where=where,
        kept=sql.SQL(", ").join(map(sql.Identifier, kept)) if kept else sql.SQL("1"),
        names=sql.SQL(", ").join(map(sql.Identifier, [*present, *kept])),
        values=sql.SQL(", ").join(
            [
                *(sql.SQL("CAST(%s AS {})").format(sql.SQL(types[name])) for name in present),
                *(sql.SQL("gone.{}").format(sql.Identifier(name)) for name in kept),
            ]
        ),
        conflict=conflict,
        assign=sql.SQL(", ").join(assign),
        ret=returning,
    )
    return statement, [*params, *values]
