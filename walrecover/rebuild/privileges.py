"""The privileges building a target needs, named per object before any work.

A recovery writes in two places of the target database: walrecover's progress table
(``walrecover.progress``, in a schema it creates) and the rebuilt table's schema; with
``--force`` it also drops an existing table. :func:`missing_privilege` names the first privilege
the role lacks and the GRANT that gives it (by whom), since a rerun cannot fix that.
"""

from __future__ import annotations

import re

from ..db import Connection, one
from ..errors import PrivilegeError
from ..stream.model import TableName
from .progress import PROGRESS_SCHEMA, PROGRESS_TABLE


def quoted(name: str) -> str:
    """A name as SQL needs it: bare when it is a plain lower-case identifier, else quoted."""
    if re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def missing_privilege(conn: Connection, into: TableName, *, force: bool) -> PrivilegeError | None:
    """The first privilege the role lacks: on the database (to create the schema
    ``walrecover``), on that schema, on ``walrecover.progress``, on the target schema, or
    (with ``force``) the ownership that dropping an existing target needs."""
    role, database = one(conn, "SELECT current_user, current_database()")
    asker = _Role(conn, into, str(role), str(database))
    return asker.progress_lacks() or asker.target_lacks() or (asker.drop_lacks() if force else None)


class _Role:
    """The role whose privileges are checked, and how to word what it lacks."""

    def __init__(self, conn: Connection, into: TableName, role: str, database: str) -> None:
        self.conn, self.into, self.role, self.database = conn, into, role, database

    def owned(self, owner: str) -> str:
        return f"the owner of database {self.database}" if owner == "pg_database_owner" else owner

    def error(self, privileges: str, what: str, owner: str | None, grant: str) -> PrivilegeError:
        by = f" (as {self.owned(owner)} or a superuser)" if owner and owner != self.role else ""
        return PrivilegeError(
            f"role {self.role!r} lacks {privileges} on {what}: {grant} TO {quoted(self.role)}"
            f"{by}, or build with another role",
            table=str(self.into),
            role=self.role,
            privilege=privileges,
        )

    def progress_lacks(self) -> PrivilegeError | None:
        """What the role lacks to keep its progress: the schema, or the table in it."""
        conn = self.conn
        schema = conn.execute(
            "SELECT pg_get_userbyid(nspowner), has_schema_privilege(oid, 'USAGE'),"
            " has_schema_privilege(oid, 'CREATE') FROM pg_namespace WHERE nspname = %s",
            (PROGRESS_SCHEMA,),
        ).fetchone()
        if schema is None:
            (may,) = one(conn, "SELECT has_database_privilege(current_database(), 'CREATE')")
            if may:
                return None
            return self.error(
                "CREATE",
                f"database {self.database} (walrecover keeps its progress in a schema "
                f"{PROGRESS_SCHEMA} it creates there)",
                None,
                f"GRANT CREATE ON DATABASE {quoted(self.database)}",
            )
        owner, usage, create = schema
        table = conn.execute(
            "SELECT pg_get_userbyid(c.relowner),"
            " has_table_privilege(c.oid, 'SELECT'), has_table_privilege(c.oid, 'INSERT'),"
            " has_table_privilege(c.oid, 'UPDATE'), has_table_privilege(c.oid, 'DELETE')"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s",
            (PROGRESS_SCHEMA, PROGRESS_TABLE),
        ).fetchone()
        lacking = [p for p, ok in (("USAGE", usage), ("CREATE", create)) if not ok]
        if table is not None and "CREATE" in lacking:
            lacking.remove("CREATE")  # the progress table exists: nothing to create there
        if lacking:
            return self.error(
                " and ".join(lacking),
                f"schema {PROGRESS_SCHEMA} (owned by {self.owned(owner)}), where walrecover keeps"
                " its progress",
                owner,
                f"GRANT {', '.join(lacking)} ON SCHEMA {PROGRESS_SCHEMA}",
            )
        if table is None:
            return None
        table_owner, *flags = table
        names = ("SELECT", "INSERT", "UPDATE", "DELETE")
        lacking = [p for p, ok in zip(names, flags, strict=True) if not ok]
        if not lacking:
            return None
        return self.error(
            ", ".join(lacking),
            f"table {PROGRESS_SCHEMA}.{PROGRESS_TABLE} (owned by"
            f" {self.owned(table_owner)}), where walrecover keeps its progress",
            table_owner,
            f"GRANT {', '.join(names)} ON {PROGRESS_SCHEMA}.{PROGRESS_TABLE}",
        )

    def target_lacks(self) -> PrivilegeError | None:
        """What the role lacks on the schema the table is built in (or that it is missing)."""
        into = self.into
        target = self.conn.execute(
            "SELECT pg_get_userbyid(nspowner), has_schema_privilege(oid, 'USAGE'),"
            " has_schema_privilege(oid, 'CREATE') FROM pg_namespace WHERE nspname = %s",
            (into.schema,),
        ).fetchone()
        quoted_schema = quoted(into.schema)
        if target is None:
            return PrivilegeError(
                f"the schema {quoted_schema} of --into {into} does not exist: create it "
                f"(CREATE SCHEMA {quoted_schema}) or choose another --into",
                table=str(into),
            )
        owner, usage, create = target
        lacking = [p for p, ok in (("USAGE", usage), ("CREATE", create)) if not ok]
        if not lacking:
            return None
        return self.error(
            " and ".join(lacking),
            f"schema {into.schema} (owned by {self.owned(owner)}), where {into} is built",
            owner,
            f"GRANT {', '.join(lacking)} ON SCHEMA {quoted_schema}",
        )

    def drop_lacks(self) -> PrivilegeError | None:
        """The ownership that dropping an existing target (``--force``) needs, if lacking."""
        into = self.into
        row = self.conn.execute(
            "SELECT pg_get_userbyid(c.relowner), pg_has_role(c.relowner, 'USAGE')"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s",
            (into.schema, into.name),
        ).fetchone()
        if row is None or row[1]:
            return None
        return PrivilegeError(
            f"role {self.role!r} may not drop {into} for --force: it is owned by "
            f"{row[0]}; drop it as {row[0]}, or choose another --into",
            table=str(into),
            role=self.role,
        )
