"""The statements of the batch applier (:mod:`.apply`): how an update, delete or truncate
finds its row in the rebuilt table.

With a real key: ``key = value`` (the hot path, no cast). Without one, an old row image names
ONE row by the text of its values, ``ctid = (SELECT ctid ... LIMIT 1)``, comparing
``c::text = CAST(value AS <c's type>)::text`` (``=`` finds ``1.50`` for ``1.5`` and does not
exist for json), with ``c = value`` first where an index can narrow the search, and preferring
rows whose unprinted columns are NULL (see "Keys come from the target first" in
docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from ..errors import ReplayError
from ..stream.model import Change, Op, Values
from .applied import Txn, at, stop_hint
from .schema import Shape


def statement(
    shape: Shape, change: Change, txn: Txn | None
) -> tuple[sql.Composed, list[str | None]]:
    """The statement of an update, delete or truncate, and its parameters: new values,
    then what identifies the row. ``txn`` is the open transaction (for messages)."""
    ident = shape.target.ident
    if change.op is Op.TRUNCATE:
        return sql.SQL("TRUNCATE {}").format(ident), []
    where, params = row_condition(shape, change, txn)
    if change.op is Op.DELETE:
        return sql.SQL("DELETE FROM {} WHERE {} RETURNING 1").format(ident, where), params
    new = change.new or {}
    assigned = assigned_columns(shape, change)
    returning = sql.SQL(", ").join(read_back(change)) if change.unchanged_toast else sql.SQL("1")
    statement = sql.SQL("UPDATE {} SET {} WHERE {} RETURNING {}").format(
        ident,
        sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(name)) for name in assigned),
        where,
        returning,
    )
    return statement, [new[name] for name in assigned] + params


def assigned_columns(shape: Shape, change: Change) -> list[str]:
    """The columns an update sets: the target's, in its order, that the new row holds."""
    new = change.new or {}
    return [name for name in shape.columns if name in new]


def read_back(change: Change, qualifier: str = "") -> list[sql.Composable]:
    """What an update reads back of the values the stream left out as unchanged TOAST, in
    column-name order: as text, like every value the stream carries (bytea as the session
    prints it, jsonb's 1.50 as 1.50), so the audit's after image holds what the table holds."""
    return [
        sql.SQL("{}{}::text").format(sql.SQL(qualifier), sql.Identifier(name))
        for name in sorted(change.unchanged_toast)
    ]


class Statements:
    """An applier's statements, each composed once per kind of change and then reused.

    With a real key, an update's or delete's statement depends on its op, the columns it
    assigns, the unchanged TOAST columns it reads back and which key values are NULL, never on
    the values: composing it per change was a tenth of a ledger replay's time. Anything else
    (no real key, a truncate) is composed per change by :func:`statement`. The cache is
    emptied when the table's target, columns or key change.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, ...], sql.Composed] = {}
        self._basis: tuple[object, ...] = ()
        #: :func:`set_statement` of the cached statements that may have one (no NULL key),
        #: by the cached statement's id (alive, so unique, while it is cached).
        self._sets: dict[int, sql.Composed | None] = {}

    def of(
        self, shape: Shape, change: Change, txn: Txn | None
    ) -> tuple[sql.Composed, list[str | None]]:
        """The statement of an update, delete or truncate and its parameters, as
        :func:`statement` gives them."""
        key = shape.key_values(change) if change.op is not Op.TRUNCATE else None
        if key is None:
            return statement(shape, change, txn)
        basis = (shape.target.ident, shape.columns, shape.key)
        if len(basis) != len(self._basis) or any(
            a is not b for a, b in zip(basis, self._basis, strict=True)
        ):
            self._cache.clear()
            self._sets.clear()
            self._basis = basis
        nulls = tuple(value is None for value in key)
        params: list[str | None] = [value for value in key if value is not None]
        if change.op is Op.DELETE:
            signature: tuple[Any, ...] = (Op.DELETE, nulls)
        else:
            new = change.new or {}
            assigned = tuple(assigned_columns(shape, change))
            toast = tuple(sorted(change.unchanged_toast)) if change.unchanged_toast else ()
            signature = (change.op, nulls, assigned, toast)
            params = [new[name] for name in assigned] + params
        query = self._cache.get(signature)
        if query is None:
            query = self._cache[signature] = statement(shape, change, txn)[0]
            if change.op in (Op.UPDATE, Op.DELETE) and not any(nulls):
                self._sets[id(query)] = None
        return query, params

    def set_of(self, query: sql.Composed, shape: Shape, change: Change) -> sql.Composed | None:
        """The :func:`set_statement` for changes of ``query``'s kind (``change`` is one of
        them), or None if that kind has none."""
        if id(query) not in self._sets:
            return None
        made = self._sets[id(query)]
        if made is None:
            made = self._sets[id(query)] = set_statement(shape, change)
        return made


def set_statement(shape: Shape, change: Change) -> sql.Composed:
    """One statement for many keyed updates or deletes of ``change``'s kind, each row's
    parameters in text arrays, one per parameter of :func:`statement` (the values assigned,
    then the key).

    ``UPDATE t SET a = p1::<a's base type>, ... FROM unnest(%s::text[], ...) WITH ORDINALITY AS
    wr_in(p1, ..., n) WHERE t.key = pK::<key's base type> RETURNING n, <unchanged TOAST>::text``
    (``DELETE ... USING`` alike): a value cast from text goes through the type's input
    function, as a parameter of :func:`statement` does. The cast is to the type without its
    modifier (an explicit cast to ``varchar(5)`` would cut a longer value silently); the
    assignment to the column then checks the modifier (refuses the longer value, rounds a
    numeric to its scale) as it does a parameter. Only for changes of pairwise different
    rows whose key values are all known and not NULL (the caller's duty); ``n`` says which of
    them found their row.
    """
    names = [] if change.op is Op.DELETE else assigned_columns(shape, change)
    assigned = len(names)
    names += shape.key
    slots = [sql.SQL("wr_in.{}").format(sql.Identifier(f"wr_p{i}")) for i in range(len(names))]
    source = sql.SQL("unnest({}) WITH ORDINALITY AS wr_in({}, wr_n)").format(
        sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in names),
        sql.SQL(", ").join(sql.Identifier(f"wr_p{i}") for i in range(len(names))),
    )
    typed = [
        sql.SQL("{}::{}").format(slot, sql.SQL(shape.base_types[name]))
        for slot, name in zip(slots, names, strict=True)
    ]
    where = sql.SQL(" AND ").join(
        sql.SQL("wr_t.{} = {}").format(sql.Identifier(name), value)
        for name, value in zip(names[assigned:], typed[assigned:], strict=True)
    )
    if change.op is Op.DELETE:
        return sql.SQL("DELETE FROM {} AS wr_t USING {} WHERE {} RETURNING wr_in.wr_n").format(
            shape.target.ident, source, where
        )
    return sql.SQL("UPDATE {} AS wr_t SET {} FROM {} WHERE {} RETURNING wr_in.wr_n{}").format(
        shape.target.ident,
        sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(name), value)
            for name, value in zip(names[:assigned], typed[:assigned], strict=True)
        ),
        source,
        where,
        sql.SQL("").join(sql.SQL(", {}").format(value) for value in read_back(change, "wr_t.")),
    )


def row_condition(
    shape: Shape, change: Change, txn: Txn | None
) -> tuple[sql.Composable, list[str | None]]:
    """Which row the change touches, as a condition and its parameters.

    With a real key: ``key = value`` (the hot path). Otherwise the old row image names ONE
    row (:func:`_image_match`).
    """
    key = shape.key_values(change)
    if key is not None:
        condition = sql.SQL(" AND ").join(
            sql.SQL("{} IS NULL" if value is None else "{} = %s").format(sql.Identifier(name))
            for name, value in zip(shape.key, key, strict=True)
        )
        return condition, [value for value in key if value is not None]
    image = change.old
    new = change.new
    if (
        image is None
        and change.op is Op.UPDATE
        and shape.guess
        and new is not None
        and all(name in new for name in shape.guess)
    ):
        # test_decoding prints no old key when the key did not change: the new row has it.
        image = {name: new[name] for name in shape.guess}
    if image is None:
        raise _unidentified(shape, change, txn)
    return _image_match(shape, image)


def _image_match(shape: Shape, image: Values) -> tuple[sql.Composable, list[str | None]]:
    """The one row an old image names, by the text of its values (``=`` finds 1.50 for 1.5
    and does not exist for json): ``ctid = (SELECT ctid ... LIMIT 1)``, preferring rows
    whose columns the image did not print are NULL (test_decoding skips NULLs in old
    images, so printed columns alone may look like a key that is not one)."""
    conditions: list[sql.Composable] = []
    params: list[str | None] = []
    for name in shape.columns:
        if name not in image:
            continue
        value, column = image[name], sql.Identifier(name)
        if value is None:
            conditions.append(sql.SQL("{} IS NULL").format(column))
            continue
        if name in shape.indexed:
            conditions.append(sql.SQL("{} = %s").format(column))
            params.append(value)
        conditions.append(
            sql.SQL("{}::text = CAST(%s AS {})::text").format(column, sql.SQL(shape.types[name]))
        )
        params.append(value)
    unprinted = [name for name in shape.columns if name not in image]
    order = (
        sql.SQL(" ORDER BY ({}) DESC").format(
            sql.SQL(" AND ").join(
                sql.SQL("{} IS NULL").format(sql.Identifier(name)) for name in unprinted
            )
        )
        if unprinted
        else sql.SQL("")
    )
    condition = sql.SQL("ctid = (SELECT ctid FROM {} WHERE {}{} LIMIT 1)").format(
        shape.target.ident,
        sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("true"),
        order,
    )
    return condition, params


def _unidentified(shape: Shape, change: Change, txn: Txn | None) -> ReplayError:
    """The error for an update or delete whose row the stream does not identify."""
    where = at(change, txn)
    if change.op is Op.DELETE:
        return ReplayError(
            f"the stream does not say which row the delete{where} of "
            f"{shape.table} removed (test_decoding prints (no-tuple-data); pgoutput and "
            "wal2json leave such a delete out): the table had no usable replica identity "
            "(REPLICA IDENTITY NOTHING, a DEFERRABLE primary key, or no primary key), so "
            "no plugin's stream can rebuild it past this point; stop before it with "
            + (
                f"--stop-before-xid {change.xid}"
                if change.xid is not None
                else f"--stop-before-lsn {change.lsn}"
                if change.lsn is not None
                else stop_hint(txn)
            ),
            table=str(shape.table),
            lsn=change.lsn,
        )
    return ReplayError(
        f"the stream does not say which row the {change.op}{where} of "
        f"{shape.table} changes: its key is unknown (test_decoding prints key columns only"
        " with an old key) and no old row was logged; give --ddl FILE with the table's "
        "PRIMARY KEY (or, for a table without one, set REPLICA IDENTITY FULL on it)",
        table=str(shape.table),
        lsn=change.lsn,
    )
