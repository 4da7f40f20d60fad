"""Keeping the rebuild away from logical replication.

In a database where a publication would publish the rebuilt table or the progress table
(``FOR ALL TABLES``, ``FOR TABLES IN SCHEMA``), a subscriber that lacks them stops applying
*every* table at the first row walrecover writes. There both are built ``UNLOGGED``
(PostgreSQL never publishes unlogged tables), a server crash empties them together (a rerun
recognises its own emptied table by :data:`UNLOGGED_MARK` and starts again), and the finished
table becomes logged in the final commit (a table rewrite, which logical decoding does not turn
into row changes). A table a publication lists by name (``FOR TABLE``) is refused. See
"Unlogged while a publication could publish it" in docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..db import Connection, one
from ..errors import PublishedTarget, ReplayError
from ..stream.model import TableName
from .catalog import TableRef
from .progress import PROGRESS_SCHEMA, PROGRESS_TABLE, persistence

#: The comment on a table walrecover builds unlogged (any comment of a --ddl follows it on the
#: next line). It survives a server crash, which empties the table: a rerun that finds its own
#: marked, unlogged, empty table and no progress row knows the crash reset it.
UNLOGGED_MARK = "walrecover: unfinished recovery, unlogged (unpublished) until it is complete"


@dataclass(frozen=True, slots=True)
class Publication:
    """A publication of the target database and how it reaches a table."""

    name: str
    #: ``FOR ALL TABLES``, ``FOR TABLES IN SCHEMA s`` or ``FOR TABLE``.
    how: str

    def __str__(self) -> str:
        return f"{self.name} ({self.how})"


def publications_of(conn: Connection, table: TableName) -> list[Publication]:
    """The publications that publish ``table``, or would once it exists as a permanent table:
    ``FOR ALL TABLES``, ``FOR TABLES IN SCHEMA`` of its schema, and ``FOR TABLE`` naming it."""
    queries = [
        "SELECT pubname::text, 'FOR ALL TABLES' FROM pg_publication WHERE puballtables",
        "SELECT p.pubname::text, 'FOR TABLE' FROM pg_publication p"
        " JOIN pg_publication_rel r ON r.prpubid = p.oid WHERE r.prrelid = to_regclass(%(t)s)",
    ]
    if conn.info.server_version >= 150000:  # TABLES IN SCHEMA is new in PostgreSQL 15
        queries.append(
            "SELECT p.pubname::text, 'FOR TABLES IN SCHEMA ' || quote_ident(n.nspname)"
            " FROM pg_publication p JOIN pg_publication_namespace s ON s.pnpubid = p.oid"
            " JOIN pg_namespace n ON n.oid = s.pnnspid WHERE n.nspname = %(s)s"
        )
    rows = conn.execute(
        " UNION ALL ".join(queries) + " ORDER BY 1, 2",
        {"t": sql.Identifier(table.schema, table.name).as_string(conn), "s": table.schema},
    ).fetchall()
    return [Publication(str(name), str(how)) for name, how in rows]


def refuse_listed(conn: Connection, into: TableName) -> list[Publication]:
    """The publications that would publish ``into`` or walrecover's progress table; raise
    :class:`PublishedTarget` if one lists either by name (``FOR TABLE``): such a table cannot
    be kept out of it (PostgreSQL refuses to make a listed table unlogged)."""
    progress = TableName(PROGRESS_SCHEMA, PROGRESS_TABLE)
    found: list[Publication] = []
    for table in (into, progress):
        publications = publications_of(conn, table)
        listed = [p.name for p in publications if p.how == "FOR TABLE"]
        if listed and table == into:
            raise PublishedTarget(
                f"--into {into} is listed in publication {', '.join(listed)} (FOR TABLE): its "
                "subscribers would receive every row walrecover writes, and stop applying if "
                f"they lack the table; choose another --into (or --target another database), "
                f"or take it out of the publication yourself (ALTER PUBLICATION {listed[0]} "
                f"DROP TABLE {into})",
                table=str(into),
                publications=listed,
            )
        if listed:
            raise PublishedTarget(
                f"{progress} (walrecover's progress table) is listed in publication "
                f"{', '.join(listed)} (FOR TABLE): its subscribers would receive walrecover's "
                f"bookkeeping and stop applying; ALTER PUBLICATION {listed[0]} DROP TABLE "
                f"{progress}, or build in another database with --target",
                table=str(progress),
                publications=listed,
            )
        found += [p for p in publications if p not in found]
    return found


def names(publications: tuple[Publication, ...] | list[Publication]) -> str:
    return ", ".join(str(p) for p in publications)


class UnloggedBuild(TableRef):
    """The rebuilt table's side of it (a part of :class:`~.target.Target`)."""

    #: Build unlogged: the progress table is unlogged (a publication would publish it or
    #: the rebuilt table), so the table it describes must be too (a crash resets both).
    unlogged: bool
    #: The publications that would publish the rebuilt or the progress table.
    publications: tuple[Publication, ...]

    def check_unpublished(self) -> None:
        """Raise :class:`PublishedTarget` if a publication now reaches the logged table being
        built or the progress table (created or altered during the run). Checked in each
        batch's transaction after its last write, before it commits: the rows of a batch that
        fails the check are rolled back, and those of a batch that passes precede, in the WAL,
        any publication the check did not see, so logical decoding does not publish them."""
        if self.unlogged:
            return
        publications = refuse_listed(self.conn, self.into)
        if publications:
            raise PublishedTarget(
                f"publication {names(publications)} began publishing {self.into} or "
                f"{PROGRESS_SCHEMA}.{PROGRESS_TABLE} during the recovery; walrecover stopped "
                "before committing more, so no subscriber received rows of the rebuild: rerun "
                f"the same command to resume, building {self.into} unlogged (unpublished)",
                table=str(self.into),
                publications=[p.name for p in publications],
            )

    def _comment(self) -> str | None:
        row = self.conn.execute(
            "SELECT obj_description(%s::regclass, 'pg_class')", (self.regclass,)
        ).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def _set_comment(self, comment: str | None) -> None:
        self.conn.execute(
            sql.SQL("COMMENT ON TABLE {} IS {}").format(
                self.ident, sql.SQL("NULL") if comment is None else sql.Literal(comment)
            )
        )

    def make_unlogged(self) -> None:
        """Make the existing logged table unlogged and mark it, in the open transaction (a
        rewrite: logical decoding sees no rows). A table that is unlogged already is left as it
        is (a --ddl that asked for it), unmarked, and stays unlogged when the build finishes."""
        if not self.unlogged or persistence(self.conn, self.ident) != "p":
            return
        try:
            self.conn.execute(sql.SQL("ALTER TABLE {} SET UNLOGGED").format(self.ident))
        except psycopg.Error as exc:
            raise PublishedTarget(
                f"{self._why_unlogged(self.into)}, so walrecover builds {self.into} unlogged,"
                f" but PostgreSQL refuses: "
                f"{exc.diag.message_primary or exc}; drop that from the --ddl file (a foreign "
                "key to a logged table, say), or build with --target another database or "
                "--into a schema no publication publishes",
                table=str(self.into),
                publications=[p.name for p in self.publications],
            ) from None
        comment = self._comment()
        self._set_comment(UNLOGGED_MARK if comment is None else f"{UNLOGGED_MARK}\n{comment}")

    def _why_unlogged(self, subject: str | TableName = "it") -> str:
        if self.publications:
            return f"publication {names(self.publications)} would publish {subject}"
        return (
            f"{PROGRESS_SCHEMA}.{PROGRESS_TABLE} is unlogged in this database (a publication "
            "reached it once), and a table must be built like its progress"
        )

    def reset_by_crash(self) -> bool:
        """True if the table is walrecover's own unlogged build, emptied by a server crash (its
        progress row went with it): it can only be built again from the start."""
        if persistence(self.conn, self.ident) != "u" or not (self._comment() or "").startswith(
            UNLOGGED_MARK
        ):
            return False
        (empty,) = one(self.conn, sql.SQL("SELECT NOT EXISTS (SELECT FROM {})").format(self.ident))
        return bool(empty)

    def finish(self) -> None:
        """Make a marked unlogged build logged (so the finished table survives a crash) and
        give back the --ddl's comment, in the open transaction: the build's last commit."""
        if persistence(self.conn, self.ident) != "u":
            return
        comment = self._comment() or ""
        if not comment.startswith(UNLOGGED_MARK):
            return
        try:
            self.conn.execute(sql.SQL("ALTER TABLE {} SET LOGGED").format(self.ident))
        except psycopg.Error as exc:
            raise ReplayError(
                f"{self.into} is rebuilt but cannot become logged (built unlogged because "
                f"{self._why_unlogged()}): "
                f"{exc.diag.message_primary or exc}; fix that (a foreign key of the --ddl to an "
                "unlogged table, say), then rerun the same command to finish",
                table=str(self.into),
            ) from None
        self._set_comment(comment[len(UNLOGGED_MARK) + 1 :] or None)

    def published_by(self) -> list[Publication]:
        """The publications that publish the table as it is now (never an unlogged one)."""
        rows = self.conn.execute(
            "SELECT pubname::text FROM pg_publication_tables"
            " WHERE schemaname = %s AND tablename = %s",
            (self.into.schema, self.into.name),
        ).fetchall()
        names = {str(r[0]) for r in rows}
        return [p for p in publications_of(self.conn, self.into) if p.name in names]

    def publication_warnings(self, table: TableName) -> list[str]:
        """The warning that a publication now publishes the finished table (built unlogged,
        so no subscriber received it; ``table`` is the table it replaces), or nothing."""
        if not self.unlogged:
            return []
        publications = self.published_by()
        self.conn.commit()
        if not publications:
            return []
        into = self.into
        return [
            f"{into} was built unlogged, so no subscriber received its rows; now complete "
            f"and logged, it is published by {names(publications)}: do not write to it until "
            f"you swap it in for {table}, since subscribers have no {into} (a write would stop "
            f"them), and create {into} on a subscriber before its REFRESH PUBLICATION or a new "
            "CREATE SUBSCRIPTION"
        ]
