"""walrecover swap: the rebuilt table back in place, with the original's definition.

End to end on the real server: a bank's ``transactions`` (bigserial id, NOT NULL, a default, a
CHECK, an index, a foreign key to ``accounts``, grants to an application role, a comment) is
dumped with ``pg_dump --schema-only -t``, written to by the application, dropped (its sequence
goes with it), recovered from a pgoutput slot and swapped back. Then the application's INSERT
without an id works as the application's role, and the sequence continues after the largest id;
``pg_dump`` of the swapped table prints the same definition as before the DROP.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from helpers import Database, cli, differences, source_untouched, stderr_lines, table_exists

from walrecover.drill.cluster import find_installation
from walrecover.errors import SwapError
from walrecover.rebuild.ddl_reader import parse_ddl
from walrecover.rebuild.recover import recover
from walrecover.stream.model import TableName

TABLE = TableName("public", "transactions")
APP = "swap_app"

SCHEMA = f"""
DO $$ BEGIN CREATE ROLE {APP}; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
CREATE TABLE accounts (id integer PRIMARY KEY, owner text NOT NULL);
INSERT INTO accounts SELECT g, 'owner ' || g FROM generate_series(1, 5) g;
CREATE TABLE transactions (
    id bigserial PRIMARY KEY,
    account_id integer NOT NULL REFERENCES accounts (id),
    amount numeric(12,2) NOT NULL CHECK (amount <> 0),
    kind text NOT NULL DEFAULT 'payment',
    created_at timestamptz NOT NULL DEFAULT now(),
    note text
);
CREATE INDEX transactions_account_idx ON transactions (account_id, created_at);
COMMENT ON TABLE transactions IS 'every movement of money';
GRANT SELECT, INSERT ON transactions TO {APP};
GRANT USAGE ON SEQUENCE transactions_id_seq TO {APP};
CREATE PUBLICATION swap_pub FOR TABLE transactions;
"""

#: The application's own INSERT: no id, no kind, no created_at.
APP_INSERT = "INSERT INTO transactions (account_id, amount) VALUES (2, 12.50) RETURNING id, kind"


def pg_dump(db: Database, table: str = "public.transactions") -> str:
    """``pg_dump --schema-only -t TABLE``, without the lines that change on every run."""
    pg_dump = find_installation().bindir / "pg_dump"
    out = subprocess.run(
        [str(pg_dump), "--schema-only", "-t", table, "-d", db.dsn],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return "\n".join(line for line in out.splitlines() if not line.startswith("\\"))


@dataclass(frozen=True)
class Recovered:
    ddl: Path
    original_dump: str
    max_id: int


def recovered_bank(db: Database, tmp_path: Path) -> Recovered:
    """The bank after the DROP, with ``transactions_recovered`` rebuilt and ``truth`` kept."""
    db.execute(SCHEMA)
    dump = pg_dump(db)
    ddl = tmp_path / "original.sql"
    ddl.write_text(dump)
    db.execute("SELECT pg_create_logical_replication_slot('cdc', 'pgoutput')")
    with db.connect() as conn:
        for i in range(40):
            conn.execute(
                "INSERT INTO transactions (account_id, amount, note) VALUES (%s, %s, %s)",
                (1 + i % 5, f"{i + 1}.25", f"payment {i}"),
            )
        conn.execute("UPDATE transactions SET amount = amount + 1, kind = 'fix' WHERE id % 7 = 0")
        conn.execute("DELETE FROM transactions WHERE id % 10 = 3")
    db.execute("CREATE UNLOGGED TABLE truth AS SELECT * FROM transactions")
    max_id = int(db.scalar("SELECT max(id) FROM truth"))
    db.execute("DROP TABLE transactions")
    assert db.scalar("SELECT to_regclass('public.transactions_id_seq')") is None
    with source_untouched(db):
        recover(db.dsn, "cdc", TABLE, options={"publication_names": "swap_pub"})
    return Recovered(ddl, dump, max_id)


def swap_args(db: Database, rec: Recovered, *extra: str) -> list[str]:
    return ["swap", "-d", db.dsn, "--table", "public.transactions", "--ddl", str(rec.ddl), *extra]


def test_swap_puts_the_table_back_and_the_application_inserts(db: Database, tmp_path: Path) -> None:
    rec = recovered_bank(db, tmp_path)

    result = cli(*swap_args(db, rec))

    assert result.exit_code == 0, result.output
    assert stderr_lines(result) == []
    text = result.stdout
    assert "Swapped public.transactions_recovered into place as public.transactions" in text
    assert f"sequence public.transactions_id_seq: the next value is {rec.max_id + 1}" in text
    assert "constraints (validated): transactions_pkey, transactions_amount_check" in text
    assert "indexes: transactions_account_idx" in text
    assert "ignored: 12 SET statements (session settings)" in text
    # The rows are the dropped table's, and nothing is left of the rebuilt table's name.
    assert differences(db, "truth", "transactions") == (0, 0)
    assert not table_exists(db, "transactions_recovered")
    assert db.scalar("SELECT count(*) FROM walrecover.progress") == 0
    # The definition is the original's, as pg_dump prints it.
    assert pg_dump(db) == rec.original_dump
    # The application's INSERT, as the application's role: the id continues after the largest.
    with db.connect() as conn:
        conn.execute(f"SET ROLE {APP}")
        row = conn.execute(APP_INSERT).fetchone()
        assert row == (rec.max_id + 1, "payment")
        assert conn.execute(APP_INSERT).fetchone() == (rec.max_id + 2, "payment")
        conn.execute("RESET ROLE")
        for bad, error in [
            ("INSERT INTO transactions (account_id, amount) VALUES (1, NULL)", "NotNull"),
            ("INSERT INTO transactions (account_id, amount) VALUES (1, 0)", "CheckViolation"),
            ("INSERT INTO transactions (account_id, amount) VALUES (99, 1)", "ForeignKey"),
        ]:
            with pytest.raises(psycopg.errors.IntegrityError) as caught:
                conn.execute(bad)
            assert error in type(caught.value).__name__


def test_swap_json_reports_what_it_did(db: Database, tmp_path: Path) -> None:
    rec = recovered_bank(db, tmp_path)

    result = cli(*swap_args(db, rec, "--json"))

    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["applied"] is True
    assert out["sequences"] == [{"name": "public.transactions_id_seq", "next": rec.max_id + 1}]
    assert out["rows"] == db.scalar("SELECT count(*) FROM truth")
    assert out["grants"] == 2
    assert "transactions_account_id_fkey" in out["constraints"]


def test_dry_run_prints_the_sql_and_changes_nothing(db: Database, tmp_path: Path) -> None:
    rec = recovered_bank(db, tmp_path)

    result = cli(*swap_args(db, rec, "--dry-run"))

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        "-- walrecover swap --dry-run: public.transactions_recovered -> public.transactions"
    )
    script = [line for line in lines if not line.startswith("--")]
    assert script[0] == "BEGIN;" and script[-1] == "COMMIT;"
    assert "ALTER TABLE public.transactions_recovered RENAME TO transactions;" in script
    assert (
        "ALTER TABLE public.transactions RENAME CONSTRAINT transactions_recovered_pkey"
        " TO transactions_pkey;" in script
    )
    assert f"SELECT pg_catalog.setval('public.transactions_id_seq', {rec.max_id}, true);" in script
    assert "ANALYZE public.transactions;" in script
    assert table_exists(db, "transactions_recovered")
    assert not table_exists(db, "transactions")
    assert db.scalar("SELECT to_regclass('public.transactions_id_seq')") is None

    # The printed script, run as it is, does the swap.
    with db.connect() as conn:
        conn.execute("\n".join(script))
    assert differences(db, "truth", "transactions") == (0, 0)
    assert pg_dump(db) == rec.original_dump


@pytest.mark.parametrize(
    ("damage", "what", "keys"),
    [
        (
            "UPDATE transactions_recovered SET kind = NULL WHERE id IN (4, 9)",
            "NOT NULL on kind",
            "2 rows of public.transactions_recovered break it, e.g. id=4, id=9",
        ),
        (
            "UPDATE transactions_recovered SET amount = 0 WHERE id = 5",
            "check constraint transactions_amount_check",
            "1 row of public.transactions_recovered break it, e.g. id=5",
        ),
        (
            "UPDATE transactions_recovered SET account_id = 42 WHERE id IN (2, 6)",
            "foreign key transactions_account_id_fkey to public.accounts",
            "2 rows of public.transactions_recovered break it, e.g. id=2, id=6",
        ),
    ],
    ids=["not-null", "check", "foreign-key"],
)
def test_a_failing_constraint_names_the_rows_and_changes_nothing(
    db: Database, tmp_path: Path, damage: str, what: str, keys: str
) -> None:
    rec = recovered_bank(db, tmp_path)
    db.execute(damage)

    result = cli(*swap_args(db, rec))

    assert result.exit_code == 1
    (line,) = stderr_lines(result)
    assert line.startswith(f"walrecover: error: the swap stopped at {what}: "), line
    assert keys in line, line
    assert "nothing was changed" in line
    assert table_exists(db, "transactions_recovered")
    assert not table_exists(db, "transactions")
    assert db.scalar("SELECT to_regclass('public.transactions_id_seq')") is None
    assert db.scalar("SELECT count(*) FROM walrecover.progress") == 1


def test_duplicate_keys_of_a_unique_index_are_named(db: Database, tmp_path: Path) -> None:
    rec = recovered_bank(db, tmp_path)
    rec.ddl.write_text(
        rec.ddl.read_text()
        + "\nCREATE UNIQUE INDEX transactions_note_key ON public.transactions (lower(note));\n"
    )
    db.execute("UPDATE transactions_recovered SET note = 'SAME' WHERE id IN (8, 11)")
    db.execute("UPDATE transactions_recovered SET note = 'same' WHERE id = 1")

    result = cli(*swap_args(db, rec))

    assert result.exit_code == 1
    (line,) = stderr_lines(result)
    assert "unique index transactions_note_key" in line, line
    assert "3 rows of public.transactions_recovered break it, e.g. id=1, id=8, id=11" in line


def test_an_existing_table_is_refused_or_moved_aside(db: Database, tmp_path: Path) -> None:
    rec = recovered_bank(db, tmp_path)
    # The application re-created an empty table (with its own sequence) after the DROP.
    db.execute("CREATE TABLE transactions (id bigserial PRIMARY KEY, amount numeric)")

    refused = cli(*swap_args(db, rec))

    assert refused.exit_code == 1
    assert stderr_lines(refused) == [
        "walrecover: error: public.transactions exists (0 rows): the swap puts the rebuilt "
        "table under that name. Move it aside with --move-existing-to SCHEMA (it keeps its "
        "indexes and sequences there), or rename or drop it yourself"
    ]

    moved = cli(*swap_args(db, rec, "--move-existing-to", "before_swap"))

    assert moved.exit_code == 0, moved.output
    assert "the table that had the name is now before_swap.transactions" in moved.stdout
    assert table_exists(db, "transactions", schema="before_swap")
    assert differences(db, "truth", "transactions") == (0, 0)
    assert db.execute(APP_INSERT)[0][0] == rec.max_id + 1


def test_a_column_type_that_differs_is_refused(db: Database, tmp_path: Path) -> None:
    rec = recovered_bank(db, tmp_path)
    rec.ddl.write_text(rec.ddl.read_text().replace("numeric(12,2)", "numeric(14,2)"))

    result = cli(*swap_args(db, rec))

    assert result.exit_code == 1
    (line,) = stderr_lines(result)
    assert line.startswith(
        "walrecover: error: column amount is numeric(14,2) in the DDL but numeric(12,2) in "
        "public.transactions_recovered"
    ), line
    assert table_exists(db, "transactions_recovered")


def test_an_unfinished_recovery_is_refused(db: Database, tmp_path: Path) -> None:
    rec = recovered_bank(db, tmp_path)
    db.execute("UPDATE walrecover.progress SET complete = false")

    result = cli(*swap_args(db, rec))

    assert result.exit_code == 1
    assert "holds an unfinished recovery" in result.stderr


# -- reading the DDL (no database) --------------------------------------------------------------


MIGRATION = """
CREATE TABLE transactions (
    id bigserial PRIMARY KEY,
    account_id integer NOT NULL REFERENCES accounts (id),
    amount numeric(12,2) NOT NULL CHECK (amount <> 0),
    ref uuid UNIQUE
);
ALTER TABLE transactions ADD COLUMN note text DEFAULT '';
CREATE INDEX CONCURRENTLY transactions_ref_idx ON transactions (ref);
CREATE TABLE audit_log (id int);
CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE TRIGGER t_audit AFTER INSERT ON transactions FOR EACH ROW EXECUTE FUNCTION f();
ALTER TABLE transactions INHERIT parent;
"""


def test_a_migration_is_read_like_a_dump() -> None:
    definition = parse_ddl(MIGRATION, TABLE)

    columns = {c.name: c for c in definition.columns}
    assert list(columns) == ["id", "account_id", "amount", "ref", "note"]
    assert columns["id"].type_sql == "bigint" and columns["id"].not_null
    assert columns["id"].default == "nextval('public.transactions_id_seq'::regclass)"
    assert columns["note"].default == "''"
    (sequence,) = definition.sequences
    assert (str(sequence.name), sequence.column) == ("public.transactions_id_seq", "id")
    assert sequence.create == "CREATE SEQUENCE public.transactions_id_seq AS bigint"
    assert definition.primary_key is not None and definition.primary_key.columns == ("id",)
    assert [(c.kind, c.columns) for c in definition.constraints] == [
        ("f", ("account_id",)),
        ("c", ()),
        ("u", ("ref",)),
    ]
    assert [i.name for i in definition.indexes] == ["transactions_ref_idx"]
    assert "CONCURRENTLY" not in definition.indexes[0].statement
    assert any("CREATE TRIGGER t_audit" in s for s in definition.verbatim)
    reasons = {(i.statement.split(" (")[0], i.reason, i.about_table) for i in definition.ignored}
    assert ("CREATE TABLE audit_log", "another table", False) in reasons
    assert any(s.startswith("CREATE FUNCTION") for s, _, _ in reasons)
    (by_hand,) = [i for i in definition.ignored if i.about_table]
    assert by_hand.statement == "ALTER TABLE transactions INHERIT parent"


@pytest.mark.parametrize(
    ("ddl", "message"),
    [
        ("CREATE TABLE other (id int);", "has no CREATE TABLE for public.transactions"),
        ("CREATE TABLE transactions (id int", "is not SQL PostgreSQL can parse"),
        (
            "CREATE TABLE transactions (id int) PARTITION BY RANGE (id);",
            "partitioned table",
        ),
    ],
    ids=["other-table", "not-sql", "partitioned"],
)
def test_unusable_ddl_is_refused(ddl: str, message: str) -> None:
    with pytest.raises(SwapError, match=message):
        parse_ddl(ddl, TABLE)


IDENTITY_SCHEMA = """
CREATE TABLE ledger (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "Amount" numeric(10,2) NOT NULL,
    booked date NOT NULL DEFAULT current_date,
    memo text COLLATE "C"
);
CREATE UNIQUE INDEX ledger_memo_key ON ledger (memo) WHERE memo IS NOT NULL;
CREATE PUBLICATION ledger_pub FOR TABLE ledger;
"""


def test_an_identity_column_continues_after_the_largest_id(db: Database, tmp_path: Path) -> None:
    db.execute(IDENTITY_SCHEMA)
    dump = pg_dump(db, "public.ledger")
    ddl = tmp_path / "ledger.sql"
    ddl.write_text(dump)
    db.execute("SELECT pg_create_logical_replication_slot('cdc', 'pgoutput')")
    db.execute(
        "INSERT INTO ledger (\"Amount\", memo) SELECT g, CASE WHEN g % 2 = 0 THEN 'm' || g END"
        " FROM generate_series(1, 30) g"
    )
    db.execute("DELETE FROM ledger WHERE id > 25")
    db.execute("CREATE UNLOGGED TABLE truth AS SELECT * FROM ledger")
    db.execute("DROP TABLE ledger")
    recover(
        db.dsn, "cdc", TableName("public", "ledger"), options={"publication_names": "ledger_pub"}
    )

    result = cli("swap", "-d", db.dsn, "--table", "ledger", "--ddl", str(ddl))

    assert result.exit_code == 0, result.output
    # max(id) + 1: the rows past 25 were deleted before the DROP.
    assert "sequence public.ledger_id_seq: the next value is 26" in result.stdout
    assert differences(db, "truth", "ledger") == (0, 0)
    assert pg_dump(db, "public.ledger") == dump
    assert db.execute('INSERT INTO ledger ("Amount") VALUES (1) RETURNING id') == [(26,)]


def test_psql_meta_commands_of_a_dump_are_skipped() -> None:
    ddl = "\\restrict abc\nCREATE TABLE public.transactions (id bigint);\n\\unrestrict abc\n"
    definition = parse_ddl(ddl, TABLE)
    assert [c.name for c in definition.columns] == ["id"]
    assert definition.ignored[0].statement == "2 psql meta-commands (\\...)"
