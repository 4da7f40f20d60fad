"""Messages that point the right way: each case runs the CLI against the real server and asserts
the exit code and what the message blames, names and advises (issue 9, items 6 and 10).

- a wrong ``--table`` is reported as such, listing the tables the stream carries, even with a
  stop point (the stop point is blamed only when the table does appear, after it);
- a missing privilege names its object (database, schema ``walrecover``, table
  ``walrecover.progress``, the target schema) and the privilege, and never says to rerun;
- a ``postgresql://`` URI with an unescaped ``@`` in its password never has any part of that
  password printed, in errors, JSON or the audit;
- the human summary names a capture file as the source, and a transaction the stream gives no
  commit LSN for by its xid (and end LSN);
- ``--json`` errors are a JSON object on stdout as well as the usual line on stderr;
- a failed run says that the table it leaves under the final name is incomplete and where the
  audit written so far is; a failed run with nothing to resume leaves no audit work files;
- a ledger CSV separated by semicolons is read.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest
from click.testing import Result
from fault_helpers import peek_capture, progress, session
from helpers import (
    SLOT,
    Database,
    cli,
    differences,
    drop_with_truth,
    in_transaction,
    run_script,
    source_untouched,
    stderr_lines,
    stop_workload,
    table_exists,
)
from psycopg.conninfo import make_conninfo

from walrecover.audit.reader import read_metadata
from walrecover.db import connect
from walrecover.drill.cluster import Cluster
from walrecover.stream.sources import wait_for_flush


def error_line(result: Result, code: int = 1) -> str:
    """The one stderr line of a failed command, with nothing on stdout."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    (line,) = stderr_lines(result)
    assert line.startswith("walrecover: error: "), line
    assert not re.search(r"\bNone\b", line), f"Python's None leaks into the message: {line!r}"
    return line


def json_error(result: Result, code: int = 1) -> str:
    """The error of a failed ``--json`` command: one object on stdout, one line on stderr."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    out = json.loads(result.stdout)
    assert out == {"error": out["error"], "exit": code}
    assert f"walrecover: error: {out['error']}" in stderr_lines(result)
    return str(out["error"])


def flushed(db: Database) -> None:
    """Wait until everything committed is flushed (decoding reads only flushed WAL)."""
    with connect(db.dsn, autocommit=True) as conn:
        wait_for_flush(conn)


# -- a wrong --table with a stop point -----------------------------------------------------------


@pytest.mark.parametrize("audit", [False, True], ids=["no-audit", "audit"])
def test_wrong_table_with_a_stop_point_names_the_tables_in_the_stream(
    db: Database, tmp_path: Path, audit: bool
) -> None:
    work = stop_workload(db)
    path = tmp_path / "audit.parquet"
    extra = ["--audit", str(path)] if audit else []
    args = ["recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.nope"]
    args += ["--stop-before-lsn", str(work.lsn), *extra]

    with source_untouched(db):
        line = error_line(cli(*args))
        message = json_error(cli(*args, "--json"))

    assert "table public.nope has no change in the stream: check --table" in line
    assert "(tables in the stream: public.t)" in line
    assert "stop point" not in line
    assert message == line.removeprefix("walrecover: error: ")
    assert not table_exists(db, "nope_recovered")
    # Nothing to resume: the failed runs leave no audit work files behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_table_that_appears_only_after_the_stop_point_blames_the_stop_point(
    db: Database,
) -> None:
    db.execute("CREATE TABLE t (id integer PRIMARY KEY)")
    db.create_slot()
    db.execute("INSERT INTO t VALUES (1)")
    stop = db.lsn()
    db.execute("CREATE TABLE late (id integer PRIMARY KEY)")
    xid = in_transaction(db, "INSERT INTO late VALUES (1)")

    with source_untouched(db):
        line = error_line(
            cli(*_slot_args(db, "public.late"), "--stop-before-lsn", stop),
        )

    assert f"no change of public.late commits before the stop point (before LSN {stop})" in line
    assert f"its first change is in transaction {xid} (commit LSN " in line
    assert "check the stop point" in line
    assert not table_exists(db, "late_recovered")


def _slot_args(db: Database, table: str = "public.t", *extra: str) -> list[str]:
    return ["recover", "-d", db.dsn, "--slot", SLOT, "--table", table, *extra]


# -- privileges: name the object and the privilege, never "rerun" --------------------------------

_roles = itertools.count(1)


@pytest.fixture
def roles(cluster: Cluster, db: Database) -> Iterator[tuple[str, str]]:
    """(oncall, owner): a login role that builds the table and another role that owns
    walrecover's schema or tables in some cases. Roles are cluster-wide: each test has its own,
    dropped with whatever they own or were granted."""
    n = next(_roles)
    oncall, owner = f"msg_oncall_{n}", f"msg_owner_{n}"
    db.execute(f"CREATE ROLE {oncall} LOGIN; CREATE ROLE {owner}")
    yield oncall, owner
    db.execute(f"DROP SCHEMA IF EXISTS walrecover CASCADE; DROP OWNED BY {oncall}, {owner}")
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP ROLE {oncall}; DROP ROLE {owner}")


def _small_ledger(db: Database) -> None:
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, amount numeric(12,2))")
    db.create_slot()
    db.execute("INSERT INTO t VALUES (1, 1.50), (2, 2.50)")


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        pytest.param(
            [],
            "lacks CREATE on database {db} (walrecover keeps its progress in a schema walrecover"
            " it creates there): GRANT CREATE ON DATABASE {db} TO {role}",
            id="no-create-on-database",
        ),
        pytest.param(
            [
                "GRANT CREATE ON DATABASE {db} TO {role}",
                "CREATE SCHEMA walrecover AUTHORIZATION {owner}",
            ],
            "lacks USAGE and CREATE on schema walrecover (owned by {owner}), where walrecover"
            " keeps its progress: GRANT USAGE, CREATE ON SCHEMA walrecover TO {role} (as"
            " {owner} or a superuser)",
            id="schema-of-another-role",
        ),
        pytest.param(
            [
                "GRANT CREATE ON DATABASE {db} TO {role}",
                "CREATE SCHEMA walrecover AUTHORIZATION {owner}",
                "GRANT USAGE ON SCHEMA walrecover TO {role}",
                "CREATE TABLE walrecover.progress (target text PRIMARY KEY)",
                "ALTER TABLE walrecover.progress OWNER TO {owner}",
            ],
            "lacks SELECT, INSERT, UPDATE, DELETE on table walrecover.progress (owned by"
            " {owner}), where walrecover keeps its progress: GRANT SELECT, INSERT, UPDATE,"
            " DELETE ON walrecover.progress TO {role} (as {owner} or a superuser)",
            id="progress-table-of-another-role",
        ),
        pytest.param(
            [
                "GRANT CREATE ON DATABASE {db} TO {role}",
                "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
            ],
            "lacks CREATE on schema public (owned by the owner of database {db}), where"
            " public.t_recovered is built: GRANT CREATE ON SCHEMA public TO {role}",
            id="no-create-on-the-target-schema",
        ),
    ],
)
def test_missing_privilege_names_the_object_and_the_privilege(
    db: Database, roles: tuple[str, str], setup: list[str], expected: str
) -> None:
    oncall, owner = roles
    _small_ledger(db)
    for statement in setup:
        db.execute(statement.format(db=db.name, role=oncall, owner=owner))
    target = make_conninfo(db.dsn, user=oncall)

    with source_untouched(db):
        line = error_line(cli(*_slot_args(db, "public.t", "--target", target)))
        message = json_error(cli(*_slot_args(db, "public.t", "--target", target, "--json")))

    assert f"role '{oncall}' " + expected.format(db=db.name, role=oncall, owner=owner) in line
    assert "rerun" not in line and "resume" not in line
    assert message == line.removeprefix("walrecover: error: ")
    assert not table_exists(db, "t_recovered")


def test_after_the_grant_the_same_command_builds_the_table(
    db: Database, roles: tuple[str, str]
) -> None:
    """The advice is right: run it, and the same command succeeds."""
    oncall, owner = roles
    _small_ledger(db)
    db.execute(f'GRANT CREATE ON DATABASE "{db.name}" TO {oncall}')
    db.execute(f"CREATE SCHEMA walrecover AUTHORIZATION {owner}")
    target = make_conninfo(db.dsn, user=oncall)
    args = _slot_args(db, "public.t", "--target", target)
    line = error_line(cli(*args))
    grant = re.search(r"(GRANT [^:]*? TO \S+)", line)
    assert grant is not None, line

    db.execute(grant.group(1))
    db.execute(f"GRANT CREATE ON SCHEMA public TO {oncall}")
    done = cli(*args)

    assert done.exit_code == 0, done.stderr
    assert db.scalar("SELECT count(*) FROM t_recovered") == 2


def test_following_the_advice_after_another_role_set_up_walrecover_builds_the_table(
    db: Database, roles: tuple[str, str]
) -> None:
    """An administrator's earlier recovery created walrecover's schema and progress table; the
    on-call role (no CREATE on the database) gets one GRANT at a time, and after the last one
    the same command builds the table: the advice asks for no more than is needed, and no less.
    """
    oncall, _ = roles
    _small_ledger(db)
    first = cli(*_slot_args(db, "public.t", "--into", "public.first"))
    assert first.exit_code == 0, first.stderr
    db.execute(f"GRANT CREATE ON SCHEMA public TO {oncall}")
    args = _slot_args(db, "public.t", "--target", make_conninfo(db.dsn, user=oncall))

    advice: list[str] = []
    result = cli(*args)
    while result.exit_code != 0 and len(advice) < 3:
        grant = re.search(r"(GRANT [^:]*? TO \S+)", error_line(result))
        assert grant is not None, result.stderr
        advice.append(grant.group(1))
        db.execute(grant.group(1))
        result = cli(*args)

    assert advice == [
        f"GRANT USAGE ON SCHEMA walrecover TO {oncall}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON walrecover.progress TO {oncall}",
    ]
    assert result.exit_code == 0, result.stderr
    assert db.scalar("SELECT count(*) FROM t_recovered") == 2


# -- passwords with an unescaped '@' --------------------------------------------------------------

AT_PASSWORD = "s3cr3t-P@ss"
#: Text that may be part of that password, however libpq splits the URI.
PASSWORD_PARTS = ("s3cr3t", "P@ss", "ss@")


def _at_uri(db: Database, password: str = AT_PASSWORD, query: str = "") -> str:
    return f"postgresql://postgres:{password}@127.0.0.1:{db.cluster.port}/{db.name}{query}"


def _shows_no_password(*texts: str) -> None:
    for text in texts:
        for part in PASSWORD_PARTS:
            assert part not in text, f"{part!r} (part of the password) is shown: {text!r}"


@pytest.mark.parametrize("where", ["-d", "--target"])
def test_unescaped_at_in_a_uri_password_is_never_shown(db: Database, where: str) -> None:
    _small_ledger(db)
    dsn = _at_uri(db)
    if where == "-d":
        args = ["recover", "-d", dsn, "--slot", SLOT, "--table", "public.t"]
    else:
        args = [*_slot_args(db), "--target", dsn]

    human = cli(*args)
    as_json = cli(*args, "--json")

    line = error_line(human)
    message = json_error(as_json)
    assert "cannot connect to the" in line
    assert "more than one '@'" in line and "%40" in line
    _shows_no_password(human.stdout, human.stderr, as_json.stdout, as_json.stderr, message)
    assert not table_exists(db, "t_recovered")


def test_an_ambiguous_uri_that_connects_keeps_the_password_out_of_the_audit(
    db: Database, tmp_path: Path
) -> None:
    """libpq takes the host from the query string here, so the URI connects: the audit, the
    progress row and the output still show nothing of its user and password part."""
    _small_ledger(db)
    dsn = (
        f"postgresql://postgres:{AT_PASSWORD}@/{db.name}"
        f"?host={db.cluster.host}&port={db.cluster.port}"
    )
    path = tmp_path / "audit.parquet"

    result = cli("recover", "-d", dsn, "--slot", SLOT, "--table", "public.t", "--audit", str(path))
    as_json = cli(
        "recover",
        "-d",
        dsn,
        "--slot",
        SLOT,
        "--table",
        "public.t",
        "--into",
        "public.again",
        "--json",
    )

    assert result.exit_code == 0, result.stderr
    assert as_json.exit_code == 0, as_json.stderr
    _shows_no_password(result.stdout, result.stderr, as_json.stdout, as_json.stderr)
    meta = read_metadata(path)
    _shows_no_password(json.dumps(meta), path.read_bytes().decode("latin-1"))
    assert f"dbname={db.name}" in meta["source"] and "hidden" in meta["source"]
    _shows_no_password(json.dumps(db.execute("SELECT * FROM walrecover.progress"), default=str))


# -- the human summary of captures and of test_decoding -----------------------------------------


def _capture_workload(db: Database) -> int:
    """A table written after slots of every plugin; returns the xid of its third transaction."""
    db.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, amount numeric(12,2), note text);"
        " CREATE PUBLICATION pub FOR TABLE t"
    )
    for plugin in ("wal2json", "pgoutput", "test_decoding"):
        db.create_slot(f"cdc_{plugin}", plugin)
    run_script(db, ["INSERT INTO t VALUES (1, 1, 'a')", "INSERT INTO t VALUES (2, 2, 'b')"])
    third = in_transaction(db, "INSERT INTO t VALUES (3, 3, 'c')")
    flushed(db)
    return third


@pytest.mark.parametrize("plugin", ["pgoutput", "test_decoding"])
def test_capture_summary_names_the_file_and_the_transaction(
    db: Database, tmp_path: Path, plugin: str
) -> None:
    third = _capture_workload(db)
    path = tmp_path / f"capture.{plugin}"
    options = {"publication_names": "pub", "proto_version": "1"} if plugin == "pgoutput" else {}
    peek_capture(db.dsn, f"cdc_{plugin}", plugin, path, options=options)
    flags = [item for name, value in options.items() for item in ("-o", f"{name}={value}")]
    args = ["recover", "--from-file", str(path), "--plugin", plugin, *flags]
    args += ["--table", "public.t", "--target", db.dsn, "--stop-before-xid", str(third)]

    result = cli(*args)
    as_json = cli(*args, "--into", "public.again", "--json")

    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert f"Rebuilt public.t as public.t_recovered from capture {path} ({plugin})." in text
    assert "from slot" not in text
    assert not re.search(r"\bNone\b", text), text
    if plugin == "test_decoding":  # pg_recvlogical's test_decoding text carries no LSN
        assert "the capture carries no LSNs" in text
        assert f"stopped before transaction {third}." in text
    else:
        assert re.search(rf"stopped before transaction {third} \(commit LSN [0-9A-F/]+\)", text)
    out = json.loads(as_json.stdout)
    assert out["capture"] == str(path)
    assert out["stopped_before"]["xid"] == third


def test_test_decoding_summary_names_end_lsns(db: Database) -> None:
    third = _capture_workload(db)
    # test_decoding gives where each commit record ends: stopping at the end of the second
    # transaction's commit leaves out the third, whose commit record comes after it.
    commits = db.execute(
        "SELECT xid::text::bigint, lsn::text FROM"
        " pg_logical_slot_peek_changes('cdc_test_decoding', NULL, NULL)"
        " WHERE data LIKE 'COMMIT%%' ORDER BY lsn"
    )
    ((_, stop), (third_xid, third_end)) = commits[-2:]
    assert third_xid == third

    result = cli(
        "recover",
        "-d",
        db.dsn,
        "--slot",
        "cdc_test_decoding",
        "--table",
        "public.t",
        "--stop-before-lsn",
        stop,
    )

    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert "from slot cdc_test_decoding (test_decoding)." in text
    assert re.search(r"end LSNs of the commits [0-9A-F/]+ \.\. [0-9A-F/]+;", text), text
    assert f"stopped before transaction {third} (end LSN {third_end})." in text
    assert "commit LSN" not in text and not re.search(r"\bNone\b", text), text


# -- --json errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        pytest.param(
            ["recover", "--slot", "s", "--table", "public.t", "--stop-before-lsn", "junk"],
            2,
            "is not an LSN",
            id="recover-usage",
        ),
        pytest.param(
            ["reconcile", "--key", "a", "--amount", "b", "--ledger-query", "SELECT 1"],
            2,
            "give --table (with -d) or --audit",
            id="reconcile-usage",
        ),
        pytest.param(
            ["audit", "verify", "/nonexistent/audit.parquet"], 2, "does not exist", id="verify"
        ),
        pytest.param(
            ["recover", "-d", "host=/nonexistent dbname=x", "--slot", "s", "--table", "public.t"],
            1,
            "cannot connect to the source database",
            id="recover-error",
        ),
    ],
)
def test_json_errors_are_json_on_stdout(args: list[str], code: int, words: str) -> None:
    result = cli(*args, "--json")

    assert result.exit_code == code, result.stderr
    out = json.loads(result.stdout)
    assert set(out) == {"error", "exit"} and out["exit"] == code
    assert words in out["error"]
    assert words in result.stderr


def test_json_error_of_a_reconciliation(db: Database, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.csv"
    ledger.write_text("account_id,total\n1,10.00\n")
    db.execute("CREATE TABLE r (account_id integer, amount numeric(12,2))")

    result = cli(
        "reconcile",
        "-d",
        db.dsn,
        "--table",
        "public.missing",
        "--key",
        "account_id",
        "--amount",
        "amount",
        "--ledger-file",
        str(ledger),
        "--json",
    )

    message = json_error(result)
    assert "public.missing" in message


# -- a failed run: the table is incomplete, the audit is kept (and compacted when published) ----


def _capture_ledger(db: Database, tmp_path: Path) -> tuple[Path, list[bytes]]:
    """Forty transactions on ``t`` (inserts, corrections, voids) read into a wal2json capture."""
    db.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, account integer NOT NULL,"
        " amount numeric(12,2) NOT NULL, note text)"
    )
    db.create_slot()
    with db.connect() as conn:
        conn.execute(
            "DO $$ BEGIN FOR i IN 1..40 LOOP"
            " INSERT INTO t VALUES (i, i % 4, i * 1.25, repeat('n', 30));"
            " IF i % 3 = 0 THEN UPDATE t SET amount = amount + 1 WHERE id = i - 1; END IF;"
            " IF i % 5 = 0 THEN DELETE FROM t WHERE id = i - 2; END IF;"
            " COMMIT; END LOOP; END $$"
        )
    drop_with_truth(db)
    flushed(db)
    path = tmp_path / "capture.jsonl"
    messages = peek_capture(db.dsn, SLOT, "wal2json", path)
    return path, messages


def test_a_failed_run_says_the_table_is_incomplete_and_where_the_audit_is(
    db: Database, tmp_path: Path
) -> None:
    capture, messages = _capture_ledger(db, tmp_path)
    reference_capture = tmp_path / "reference.jsonl"
    reference_capture.write_bytes(capture.read_bytes())
    reference = tmp_path / "reference.parquet"
    audit = tmp_path / "resumed.parquet"

    def args(path: Path, into: str, out: Path, *extra: str) -> list[str]:
        return [
            "recover",
            "--from-file",
            str(path),
            "--plugin",
            "wal2json",
            "--table",
            "public.t",
            "--target",
            db.dsn,
            "--into",
            into,
            "--audit",
            str(out),
            *extra,
        ]

    done = cli(*args(reference_capture, "public.reference", reference, "--json"))
    assert done.exit_code == 0, done.stderr
    head = json.loads(done.stdout)["audit"]["chain_head"]
    # Damage one message two thirds of the way in: the run fails after committing batches.
    damaged = list(messages)
    damaged[len(damaged) * 2 // 3] = b'{"action": "I", damaged'
    capture.write_bytes(b"".join(m + b"\n" for m in damaged))
    failing = args(capture, "public.resumed", audit, "--batch-size", "2")

    line = error_line(cli(*failing))
    with session(db.dsn) as conn:
        kept = progress(conn, "public.resumed")
    parts = sorted(p.name for p in (tmp_path / "resumed.parquet.parts").iterdir())
    capture.write_bytes(b"".join(m + b"\n" for m in messages))
    resumed = cli(*failing, "--json")

    assert f"{capture}" in line and "not JSON" in line
    assert (
        "public.resumed is left incomplete: once that is fixed the same command resumes it,"
        " or pass --force to rebuild it" in line
    )
    assert f"the audit written so far is kept in {audit}.parts" in line
    assert kept is not None and not kept.complete and kept.transactions > 5
    assert len([p for p in parts if p.startswith("part-")]) > 5
    assert resumed.exit_code == 0, resumed.stderr
    assert json.loads(resumed.stdout)["resumed_from"] is not None
    assert differences(db, "truth", "resumed") == (0, 0)
    assert not (tmp_path / "resumed.parquet.parts").exists()
    # The published audit is the uninterrupted one: same rows and chain head, and as compact
    # (parts sealed every 2 changes are regrouped, not kept as tiny row groups).
    assert json.loads(resumed.stdout)["audit"]["chain_head"] == head
    ours, theirs = pq.ParquetFile(audit).metadata, pq.ParquetFile(reference).metadata
    assert ours.num_rows == theirs.num_rows > 60
    assert ours.num_row_groups == theirs.num_row_groups == 1
    assert audit.stat().st_size <= reference.stat().st_size * 1.25
    verified = cli("audit", "verify", str(audit), "--chain-head", head)
    assert verified.exit_code == 0, verified.stdout + verified.stderr


def test_a_small_batch_size_gives_the_same_audit_file(db: Database, tmp_path: Path) -> None:
    """Uninterrupted too: --batch-size decides how often the target commits, not the file."""
    capture, _ = _capture_ledger(db, tmp_path)
    small, default = tmp_path / "small.parquet", tmp_path / "default.parquet"
    base = ["recover", "--from-file", str(capture), "--plugin", "wal2json", "--table", "public.t"]
    base += ["--target", db.dsn]

    first = cli(*base, "--into", "public.small", "--audit", str(small), "--batch-size", "1")
    second = cli(*base, "--into", "public.default", "--audit", str(default))

    assert first.exit_code == second.exit_code == 0, first.stderr + second.stderr
    assert pq.ParquetFile(small).metadata.num_row_groups == 1
    assert small.stat().st_size <= default.stat().st_size * 1.25


# -- ledgers separated by semicolons ---------------------------------------------------------------


def _audit_of_two_accounts(db: Database, tmp_path: Path) -> Path:
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, account_id integer, amount numeric(12,2))")
    db.create_slot()
    run_script(db, ["INSERT INTO t VALUES (1, 1, 10.50), (2, 2, 1234.25), (3, 1, -0.50)"])
    path = tmp_path / "audit.parquet"
    done = cli(*_slot_args(db, "public.t", "--audit", str(path)))
    assert done.exit_code == 0, done.stderr
    return path


@pytest.mark.parametrize("delimiter", [";", "\t", ","])
def test_a_ledger_csv_separated_by_semicolons_or_tabs_is_read(
    db: Database, tmp_path: Path, delimiter: str
) -> None:
    audit = _audit_of_two_accounts(db, tmp_path)
    ledger = tmp_path / "ledger.csv"
    rows = [["account_id", "total"], ["1", "10.00"], ["2", "1234.25"]]
    ledger.write_text("".join(delimiter.join(row) + "\n" for row in rows))

    result = cli(
        "reconcile",
        "--audit",
        str(audit),
        "--key",
        "account_id",
        "--amount",
        "amount",
        "--ledger-file",
        str(ledger),
    )

    assert result.exit_code == 0, result.stdout + result.stderr
    assert "all 2 keys match exactly" in result.stdout


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("account_id;total\n1;10,00\n2;1234,25\n", "'10,00' has a decimal comma"),
        ("account_id|total\n1|10.00\n", "has one column ('account_id|total'): separate"),
    ],
    ids=["decimal-comma", "unknown-separator"],
)
def test_a_ledger_csv_walrecover_cannot_read_says_why(
    db: Database, tmp_path: Path, content: str, words: str
) -> None:
    audit = _audit_of_two_accounts(db, tmp_path)
    ledger = tmp_path / "ledger.csv"
    ledger.write_text(content)

    line = error_line(
        cli(
            "reconcile",
            "--audit",
            str(audit),
            "--key",
            "account_id",
            "--amount",
            "amount",
            "--ledger-file",
            str(ledger),
        )
    )

    assert words in line
