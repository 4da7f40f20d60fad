"""The workload the fixture recorders share: the tables and transactions every plugin's fixtures
are recorded from.

Each recorder (``record_fixtures.py`` for wal2json, ``record_text_fixtures.py`` for
test_decoding and wal2json format 1, ``pgoutput_fixture.py``, ``record_parity.py``) adds what
its plugin needs (its own type zoo in ``kinds``, quoted identifiers, prepared transactions),
and takes the rest from here: the out-of-line text function, the TOASTed ``documents`` and
their updates that leave the body alone, the composite-key ``positions``, the big streamed
transactions, the table dropped and created again, and how a prepared transaction ends. One
change here changes every recorder's workload alike.
"""

from __future__ import annotations

from recording import Step


def long_text_function(digests: int, why: str) -> str:
    """``long_text(seed)``: ``digests`` incompressible md5 digests, so the text is stored out
    of line (``why`` says how, in the SQL comment)."""
    characters = f"{digests * 32:,}"
    return (
        f"-- {why}: {digests} md5 digests, {characters} characters.\n"
        "CREATE FUNCTION long_text(seed text) RETURNS text LANGUAGE sql IMMUTABLE\n"
        "    AS $$ SELECT string_agg(md5(seed || i), '') FROM generate_series(1, "
        f"{digests}) AS i $$;"
    )


def documents_table(name: str) -> str:
    """The table of TOASTed bodies."""
    return (
        f"CREATE TABLE {name} (\n"
        "    id       integer PRIMARY KEY,\n"
        "    title    text NOT NULL,\n"
        "    body     text,\n"
        "    revision integer NOT NULL\n"
        ");"
    )


POSITIONS_TABLE = """\
CREATE TABLE positions (
    account_id bigint,
    currency   text,
    quantity   numeric(12,2) NOT NULL,
    PRIMARY KEY (account_id, currency)
);"""


def toast_inserts(table: str) -> tuple[str, ...]:
    """Three rows whose body is TOASTed."""
    return (
        f"INSERT INTO {table} VALUES (1, 'first', long_text('a'), 1)",
        f"INSERT INTO {table} VALUES (2, 'second', long_text('b'), 1)",
        f"INSERT INTO {table} VALUES (3, 'third', long_text('c'), 1)",
    )


def toast_untouched(table: str) -> tuple[str, ...]:
    """Updates that leave the TOASTed body alone (the plugins leave it out), one changing the
    key."""
    return (
        f"UPDATE {table} SET revision = revision + 1, title = 'first, retitled' WHERE id = 1",
        f"UPDATE {table} SET id = 22, revision = 2 WHERE id = 2",
    )


def toast_rewrite(table: str) -> tuple[str, ...]:
    """An update that rewrites the body, then one that leaves it alone."""
    return (
        f"UPDATE {table} SET body = long_text('c2'), revision = 2 WHERE id = 3",
        f"UPDATE {table} SET revision = 3 WHERE id = 3",
    )


def toast_delete(table: str) -> str:
    """The delete of a row whose body was TOASTed."""
    return f"DELETE FROM {table} WHERE id = 1"


#: Composite-key changes: rows, an update of an amount, an update of the key.
POSITIONS_UPDATES = (
    "UPDATE positions SET quantity = quantity - 0.25 WHERE account_id = 1 AND currency = 'USD'",
    "UPDATE positions SET currency = 'CHF' WHERE account_id = 20 AND currency = 'EUR'",
)
POSITIONS_ROWS = (
    "INSERT INTO positions VALUES (1, 'EUR', 100.50), (1, 'USD', 2.25), (20, 'EUR', 7.00)"
)


def bulk(first: int, count: int, note: str) -> str:
    """Insert ``count`` rows into ``big`` from id ``first`` (constants of the recorders only)."""
    last = first + count - 1
    return f"INSERT INTO big SELECT i, '{note} ' || i FROM generate_series({first}, {last}) AS i"


#: A transaction big enough to be streamed, with a streamed subtransaction rolled back.
BIG_STREAMED = Step(
    "big: streamed, with a streamed subtransaction rolled back",
    (
        bulk(1, 500, "streamed"),
        "SAVEPOINT sub",
        bulk(501, 400, "rolled back sub"),
        "ROLLBACK TO SAVEPOINT sub",
        bulk(1001, 400, "after sub"),
        "UPDATE big SET note = note || ' (updated)' WHERE id % 100 = 0",
        "DELETE FROM big WHERE id % 100 = 1",
    ),
)
BIG_ABORTED = Step(
    "big: streamed, then aborted", (bulk(5001, 600, "aborted big"),), outcome="rollback"
)

#: The table ``recreated`` dropped and created again under the same name, with another column.
RECREATE = Step(
    "recreated: dropped and created again under the same name",
    (
        "DROP TABLE recreated",
        "CREATE TABLE recreated (id integer PRIMARY KEY, v text, extra integer)",
    ),
)


def ending(outcome: str, gid: str) -> list[str]:
    """The statements that end a step's transaction: COMMIT, ROLLBACK, or PREPARE TRANSACTION
    ``gid`` and then COMMIT or ROLLBACK PREPARED."""
    if outcome == "commit":
        return ["COMMIT"]
    if outcome == "rollback":
        return ["ROLLBACK"]
    finish = "COMMIT PREPARED" if outcome == "prepare-commit" else "ROLLBACK PREPARED"
    return [f"PREPARE TRANSACTION '{gid}'", f"{finish} '{gid}'"]
