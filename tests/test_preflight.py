"""Check before the long work, and reruns that are idempotent (issue 9, items 1 and 2).

Through the CLI against the real server: ``walrecover check`` / ``recover --dry-run`` change
nothing and name each failing check; ``recover`` refuses a bad ledger query, ``--key`` /
``--amount`` or a missing privilege before it writes a row; the same command after a finished
recovery answers "already complete", another one is refused naming the option that differs, and
a reconciliation that fails after a complete replay gives the exact ``walrecover reconcile``
command to run.
"""

from __future__ import annotations

import itertools
import json
import shlex
from pathlib import Path

from helpers import (
    PASSWORD,
    SLOT,
    Database,
    cli,
    differences,
    drop_with_truth,
    run_script,
    source_untouched,
    table_exists,
)

DDL = "CREATE TABLE t (id integer PRIMARY KEY, account integer, amount numeric(12,2), note text)"
LEDGER = "SELECT id, balance FROM accounts"

_roles = itertools.count(1)


def _workload(db: Database) -> None:
    """Ten rows over three accounts, an update and a delete; ``accounts`` holds the ledger."""
    db.execute(DDL)
    db.execute("CREATE TABLE accounts (id integer PRIMARY KEY, balance numeric(14,2))")
    db.create_slot()
    run_script(
        db,
        [
            "INSERT INTO t SELECT g, g % 3, g * 1.25, 'row ' || g FROM generate_series(1, 10) g",
            "UPDATE t SET amount = amount * 2 WHERE id % 4 = 0",
            "DELETE FROM t WHERE id = 5",
        ],
    )
    db.execute(
        "INSERT INTO accounts SELECT account, sum(amount) FROM t GROUP BY account"
        " UNION ALL SELECT 99, 0"  # an account without transactions
    )
    db.execute("DELETE FROM accounts WHERE id = 99")
    drop_with_truth(db)


def _args(db: Database, *extra: str, dsn: str | None = None) -> list[str]:
    return ["-d", dsn or db.dsn, "--slot", SLOT, "--table", "public.t", *extra]


def _ledger(query: str = LEDGER, amount: str = "amount", key: str = "account") -> list[str]:
    return ["--key", key, "--amount", amount, "--ledger-query", query]


def _nothing_created(db: Database) -> None:
    assert not table_exists(db, "t_recovered")
    assert not db.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'walrecover'")


# -- item 1: check before the long work ------------------------------------------------------


def test_check_prints_the_plan_and_creates_nothing(db: Database, tmp_path: Path) -> None:
    _workload(db)
    audit = tmp_path / "t.parquet"
    for command in (["check"], ["recover", "--dry-run"]):
        with source_untouched(db):
            result = cli(*command, *_args(db, *_ledger(), "--audit", str(audit)))
        assert result.exit_code == 0, result.stderr
        text = result.stdout
        assert "all checks passed" in text
        assert "slot cdc" in text and "(wal2json)" in text
        assert "LSN range: " in text
        assert "about 13 row changes of public.t" in text  # the whole (small) stream was read
        assert "table public.t_recovered; schema walrecover; table walrecover.progress" in text
        assert f"audit {audit}" in text
        assert "[ok] ledger query: runs and returns (id, balance)" in text
        assert "[ok] --key/--amount: --key account (integer), --amount amount" in text
        _nothing_created(db)
        assert list(tmp_path.iterdir()) == []

    result = cli("check", *_args(db, *_ledger(), "--json"))
    assert result.exit_code == 0
    plan = json.loads(result.stdout)
    assert plan["ok"] is True
    assert plan["target_state"] == "new"
    assert plan["estimated_changes"] == 13
    assert "estimate" in plan["estimate"] and plan["estimated_seconds"] is not None
    assert {c["name"] for c in plan["checks"]} >= {
        "target privileges",
        "publications",
        "encoding",
        "ledger query",
        "--key/--amount",
        "source",
    }


def test_check_names_every_failing_check(db: Database) -> None:
    _workload(db)
    with source_untouched(db):
        result = cli(
            "check", *_args(db, *_ledger("SELECT id, balance FROM acounts", amount="note"))
        )
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("walrecover: error")]
    assert len(errors) == 2
    assert 'check failed: ledger query: the ledger query failed (relation "acounts"' in errors[0]
    assert "check failed: --key/--amount: --amount 'note' is text in public.t" in errors[1]
    assert "[FAILED] ledger query" in result.stdout
    _nothing_created(db)


def test_check_and_recover_refuse_to_build_into_the_table_being_recovered(db: Database) -> None:
    """One check (preflight.check_into) for the plan and the recovery: the same name in the same
    database is the table being recovered, never a place to build."""
    _workload(db)
    for command in (["check"], ["recover"]):
        with source_untouched(db):
            result = cli(*command, *_args(db, "--into", "public.t"))
        assert result.exit_code == 1, result.stderr
        assert "--into public.t is the table being recovered: build into a new table" in (
            result.stderr
        )
    _nothing_created(db)


def test_bad_ledger_query_is_refused_before_a_row_is_written(db: Database) -> None:
    """Before: the whole replay ran and only then the query failed, leaving a complete table
    that a rerun refused as 'already exists'."""
    _workload(db)
    for query, message in (
        ("SELECT id, balance FROM acounts", 'relation "acounts" does not exist'),
        ("SELECT id FROM accounts", "returns 1 columns (id); it must return exactly 2"),
        ("SELECT id, balance::float8 FROM accounts", "as double precision"),
        ("SELECT id, current_date FROM accounts", "as date, not a number"),
    ):
        with source_untouched(db):
            result = cli("recover", *_args(db, *_ledger(query)))
        assert result.exit_code == 1, result.stdout
        assert message in result.stderr
        assert "nothing was built" in result.stderr
        _nothing_created(db)


def test_bad_key_or_amount_is_refused_before_the_table_commits(db: Database) -> None:
    _workload(db)
    for key, amount, message in (
        ("acount", "amount", "--key 'acount' is not a column of public.t_recovered"),
        ("account", "amont", "--amount 'amont' is not a column"),
        ("account", "note", "--amount 'note' is text"),
    ):
        with source_untouched(db):
            result = cli("recover", *_args(db, *_ledger(key=key, amount=amount)))
        assert result.exit_code == 1
        assert message in result.stderr
        if "not a column" in message:
            assert "(its columns: id, account, amount, note)" in result.stderr
        assert not table_exists(db, "t_recovered")
        assert not db.scalar("SELECT count(*) FROM walrecover.progress")


def test_target_privileges_are_named_before_reading(db: Database) -> None:
    _workload(db)
    role = f"oncall{next(_roles)}_{db.name}"
    db.execute(f"CREATE ROLE {role} LOGIN")
    db.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {role}")
    target = f"{db.dsn} user={role}"
    # Each fix, then what the next run must ask for. A walrecover schema owned by another
    # role needs a grant on the schema, not on the database.
    steps = [
        (
            f"CREATE SCHEMA walrecover; GRANT CREATE ON DATABASE {db.name} TO {role}",
            f"GRANT USAGE, CREATE ON SCHEMA walrecover TO {role}",
        ),
    ]
    expected = f"GRANT CREATE ON DATABASE {db.name} TO {role}"
    for fix, next_message in [*steps, (f"GRANT USAGE, CREATE ON SCHEMA walrecover TO {role}", "")]:
        for command in ("check", "recover"):
            with source_untouched(db):
                result = cli(command, *_args(db, "--target", target))
            assert result.exit_code == 1, result.stdout
            assert expected in result.stderr, result.stderr
            assert not table_exists(db, "t_recovered")
        db.execute(fix)
        expected = next_message
    result = cli("recover", *_args(db, "--target", target))
    assert result.exit_code == 0, result.stderr
    assert differences(db, "truth", "t_recovered") == (0, 0)


# -- item 2: reruns are idempotent -------------------------------------------------------------


def test_the_same_command_again_is_already_complete(db: Database, tmp_path: Path) -> None:
    """Before: the rerun of a finished recovery refused with 'already exists ... --force'."""
    _workload(db)
    audit = tmp_path / "t.parquet"
    args = _args(db, *_ledger(), "--audit", str(audit))
    first = cli("recover", *args, "--json")
    assert first.exit_code == 0, first.stderr
    done = json.loads(first.stdout)
    with source_untouched(db):
        again = cli("recover", *args, "--json")
    assert again.exit_code == 0, again.stderr
    rerun = json.loads(again.stdout)
    assert rerun["already_complete"] is True
    for field in ("first_lsn", "last_lsn", "transactions", "changes", "rows", "plugin"):
        assert rerun[field] == done[field], field
    assert rerun["audit"]["chain_head"] == done["audit"]["chain_head"]
    assert rerun["reconciliation"]["matched"] is True  # reconciled again

    text = cli("recover", *args)
    assert text.exit_code == 0
    assert text.stdout.startswith("Already complete: public.t_recovered was rebuilt")
    assert done["audit"]["chain_head"] in text.stdout
    assert differences(db, "truth", "t_recovered") == (0, 0)

    # The ledger changed since: the rerun reconciles again and says so (exit 3).
    db.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
    assert cli("recover", *args).exit_code == 3


def test_another_command_is_refused_naming_the_option(db: Database, tmp_path: Path) -> None:
    _workload(db)
    assert cli("recover", *_args(db)).exit_code == 0
    ddl = tmp_path / "t.sql"
    ddl.write_text(DDL.replace("TABLE t ", "TABLE t_recovered "))
    for extra, option in (
        (["--stop-before-lsn", "FF/0"], "the stop point (--stop-before-*) differs"),
        (["--via-plugin", "test_decoding"], "--via-plugin differs"),
        (["--ddl", str(ddl)], "--ddl differs"),
        (["--audit", str(tmp_path / "a.parquet")], "--audit/--audit-dir differs"),
    ):
        with source_untouched(db):
            result = cli("recover", *_args(db, *extra))
        assert result.exit_code == 1, result.stdout
        assert "holds a complete recovery made by another command" in result.stderr
        assert option in result.stderr
        assert "--force" in result.stderr
        check = cli("check", *_args(db, *extra))
        assert check.exit_code == 1
        assert option in check.stderr
    rebuilt = cli("recover", *_args(db, "--audit", str(tmp_path / "a.parquet"), "--force"))
    assert rebuilt.exit_code == 0, rebuilt.stderr
    assert differences(db, "truth", "t_recovered") == (0, 0)


def test_a_failed_reconciliation_gives_the_command_to_run(db: Database, tmp_path: Path) -> None:
    """The ledger query passes the check (it returns no row there) but fails on its rows."""
    _workload(db)
    dsn = db.cluster.tcp_dsn(db.name, password=PASSWORD)
    audit = tmp_path / "t.parquet"
    failing = "SELECT id, balance / (id - id) FROM accounts"
    result = cli("recover", *_args(db, *_ledger(failing), "--audit", str(audit), dsn=dsn))
    assert result.exit_code == 1
    message = result.stderr
    assert PASSWORD not in message and PASSWORD not in result.stdout
    assert "public.t_recovered is complete (" in message
    assert f"its audit {audit} is complete too" in message
    assert "division by zero" in message
    assert "Nothing needs rebuilding" in message
    command = message.split("`")[1]
    words = shlex.split(command)
    assert words[:2] == ["walrecover", "reconcile"]
    assert words[words.index("--ledger-query") + 1] == failing
    assert words[words.index("--audit") + 1] == str(audit)
    assert differences(db, "truth", "t_recovered") == (0, 0)

    # The printed command runs as printed (with the query fixed, it reconciles).
    words[words.index("--ledger-query") + 1] = LEDGER
    assert cli(*words[1:]).exit_code == 0
    # And the same recover command with a good query only reconciles.
    fixed = cli("recover", *_args(db, *_ledger(), "--audit", str(audit), dsn=dsn))
    assert fixed.exit_code == 0, fixed.stderr
    assert fixed.stdout.startswith("Already complete")


def test_a_capture_is_checked_and_rerun_the_same_way(db: Database, tmp_path: Path) -> None:
    _workload(db)
    options = {"format-version": "2", "include-xids": "1", "include-lsn": "1", "include-pk": "1"}
    flat = [item for pair in options.items() for item in pair]
    rows = db.execute(
        "SELECT data FROM pg_logical_slot_peek_changes(%s, NULL, NULL, VARIADIC %s::text[])",
        (SLOT, flat),
    )
    capture = tmp_path / "cdc.jsonl"
    capture.write_text("".join(f"{data}\n" for (data,) in rows))
    args = ["--from-file", str(capture), "--plugin", "wal2json", "--table", "public.t"]
    args += ["--target", db.dsn, *[f"-o{k}={v}" for k, v in options.items()], *_ledger()]

    plan = cli("recover", *args, "--dry-run", "--json")
    assert plan.exit_code == 0, plan.stderr
    found = json.loads(plan.stdout)
    assert found["capture"] == str(capture)
    assert found["bytes_to_read"] == capture.stat().st_size
    assert found["estimated_changes"] == 13
    _nothing_created(db)

    assert cli("recover", *args).exit_code == 0
    again = cli("recover", *args)
    assert again.exit_code == 0, again.stderr
    assert again.stdout.startswith(
        "Already complete: public.t_recovered was rebuilt from a capture"
    )
    other = cli("recover", *args, "--capture-setting", "DateStyle=SQL, DMY")
    assert other.exit_code == 1
    assert "--capture-setting differs" in other.stderr
    assert differences(db, "truth", "t_recovered") == (0, 0)


def test_a_finished_recovery_with_a_stop_point_is_already_complete(db: Database) -> None:
    """The stored result kept the stop LSN as a number, and the rerun ended in a traceback
    ("'int' object has no attribute 'partition'", found by the SIGKILL fault test); the test
    failed before the fix."""
    db.execute(DDL)
    db.create_slot()
    run_script(db, ["INSERT INTO t SELECT g, g % 3, g, 'row' FROM generate_series(1, 10) g"])
    stop = db.scalar("SELECT pg_current_wal_insert_lsn()::text")
    run_script(db, ["DELETE FROM t WHERE id = 5", "DROP TABLE t"])
    args = _args(db, "--stop-before-lsn", stop, "--json")
    first = cli("recover", *args)
    assert first.exit_code == 0, first.stderr

    again = cli("recover", *args)

    assert again.exit_code == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["already_complete"] is True
    assert result["stopped_before"] == json.loads(first.stdout)["stopped_before"] is not None
