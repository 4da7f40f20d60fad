"""The SQL that redoes or undoes one change, and the JSON object that describes it."""

from __future__ import annotations

from ..model import Begin, Change, Op, Values


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table(change: Change) -> str:
    return f"{_ident(change.relation.schema)}.{_ident(change.relation.name)}"


def comment(text: str) -> str:
    """``text`` for an SQL comment line: a line break in a name must not end the comment (the
    rest of the line would run as SQL), so CR and LF are shown escaped."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def literal(value: str | None) -> str:
    if value is None:
        return "NULL"
    return "'" + value.replace("'", "''") + "'"


def _where(change: Change, image: Values) -> str:
    keys = change.relation.key_columns or tuple(image)
    return " AND ".join(
        f"{_ident(name)} IS NULL"
        if image.get(name) is None
        else f"{_ident(name)} = {literal(image[name])}"
        for name in keys
        if name in image
    )


def _where_one(change: Change, image: Values) -> str:
    """A WHERE clause for the one row ``image`` identifies.

    A key (fewer columns than the table) identifies one row. Without one, or with every column
    as the identity (REPLICA IDENTITY FULL), rows equal in every column are duplicates, and a
    change touched one of them: the clause picks one by its ``(tableoid, ctid)`` so the
    statement changes one row too, never all the copies.
    """
    where = _where(change, image)
    relation = change.relation
    if relation.key_columns and len(relation.key_columns) < len(relation.columns):
        return where
    table = _table(change)
    return f"(tableoid, ctid) = (SELECT tableoid, ctid FROM {table} WHERE {where} LIMIT 1)"


def _insert(change: Change, image: Values) -> str:
    names = ", ".join(_ident(name) for name in image)
    values = ", ".join(literal(value) for value in image.values())
    return f"INSERT INTO {_table(change)} ({names}) VALUES ({values});"


def redo_statement(change: Change) -> str:
    """The SQL that makes ``change`` again."""
    if change.op is Op.TRUNCATE:
        return f"TRUNCATE {_table(change)};"
    if change.op is Op.INSERT:
        return _insert(change, change.new or {})
    if change.old is not None:
        identity: Values = change.old
    elif change.relation.key_columns and all(
        name in (change.new or {}) for name in change.relation.key_columns
    ):
        identity = change.new or {}
    else:
        return comment(
            f"-- cannot redo the {change.op} on {_table(change)} at LSN {change.lsn}: the "
            "stream does not say which row it changed (no key, no old row)"
        )
    if change.op is Op.DELETE:
        return f"DELETE FROM {_table(change)} WHERE {_where_one(change, identity)};"
    sets = ", ".join(f"{_ident(k)} = {literal(v)}" for k, v in (change.new or {}).items())
    return f"UPDATE {_table(change)} SET {sets} WHERE {_where_one(change, identity)};"


def _full_old_row(change: Change) -> bool:
    """True when the change carries the whole old row (REPLICA IDENTITY FULL).

    Either the table is known whole and every column is in the old row, or the old row holds
    more than the key: only REPLICA IDENTITY FULL logs non-key columns.
    """
    old = change.old or {}
    relation = change.relation
    if relation.complete and relation.columns:
        return all(column.name in old for column in relation.columns)
    keys = set(relation.key_columns)
    return bool(keys) and any(name not in keys for name in old)


def _old_row(change: Change) -> dict[str, str | None]:
    """The old row, with the columns a plugin leaves out when NULL (test_decoding) as NULL."""
    row = dict(change.old or {})
    if change.relation.complete:
        for column in change.relation.columns:
            row.setdefault(column.name, None)
    return row


def undo_statement(change: Change) -> str:
    """The SQL that reverses ``change``, or a comment saying why the WAL cannot tell."""
    where = f"{change.op} on {_table(change)} at LSN {change.lsn}"
    if change.op is Op.TRUNCATE:
        return comment(
            f"-- cannot undo the TRUNCATE of {_table(change)} at LSN {change.lsn}: "
            "the WAL does not hold the truncated rows"
        )
    if change.op is Op.INSERT:
        return f"DELETE FROM {_table(change)} WHERE {_where_one(change, change.new or {})};"
    if not _full_old_row(change):
        return comment(
            f"-- cannot undo the {where}: the old row is not in the WAL "
            "(only tables with REPLICA IDENTITY FULL log it)"
        )
    old = _old_row(change)
    if change.op is Op.DELETE:
        return _insert(change, old)
    new = dict(old)
    new.update(change.new or {})
    sets = ", ".join(
        f"{_ident(k)} = {literal(v)}" for k, v in old.items() if k not in change.unchanged_toast
    )
    return f"UPDATE {_table(change)} SET {sets} WHERE {_where_one(change, new)};"


def change_record(change: Change, begin: Begin | None) -> dict[str, object]:
    """The JSON object ``--format jsonl`` prints for one change."""
    return {
        "xid": change.xid if change.xid is not None else (begin.xid if begin else None),
        "lsn": str(change.lsn) if change.lsn is not None else None,
        "commit_lsn": str(begin.commit_lsn) if begin and begin.commit_lsn is not None else None,
        "commit_time": begin.commit_time.isoformat() if begin and begin.commit_time else None,
        "op": change.op.value,
        "schema": change.relation.schema,
        "table": change.relation.name,
        "relation_id": change.relation.relation_id,
        "new": dict(change.new) if change.new is not None else None,
        "old": dict(change.old) if change.old is not None else None,
        "unchanged_toast": sorted(change.unchanged_toast),
    }
