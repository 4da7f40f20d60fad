"""``walrecover recover`` loads only what it needs (issue 12: peak RSS).

pandas, pyarrow and pglast together are about 100 MB of resident memory and a second of
start-up before the first change is read; a bare recovery uses none of them (with ``--audit``,
pyarrow loads pandas itself: its ``pa.array`` checks for pandas objects). Each check runs the
real command in a fresh interpreter against the session cluster and reads its state at the end;
the rebuilt table is compared with the truth.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers import SLOT, Database, differences, drop_with_truth, run_script

HEAVY = ("pandas", "pyarrow", "pglast", "numpy")


def _run(argv: list[str], then: str) -> tuple[int | None, Any]:
    """Run ``walrecover ARGV`` in a fresh interpreter: its exit code and the value of the
    expression ``then`` evaluated there afterwards."""
    code = (
        "import json, sys\n"
        "from walrecover.cli import main\n"
        "try:\n"
        f"    main({argv!r}, prog_name='walrecover')\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        f"print(json.dumps([code, {then}]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300
    )
    assert done.returncode == 0, done.stderr
    exit_code, value = json.loads(done.stdout.splitlines()[-1])
    return exit_code, value


def _ledger(db: Database) -> None:
    db.execute(
        "CREATE TABLE t (id bigserial PRIMARY KEY, account_id integer NOT NULL,"
        " amount numeric(20,8) NOT NULL, note text)"
    )
    db.create_slot()
    run_script(
        db,
        [
            "INSERT INTO t (account_id, amount, note)"
            " SELECT g % 3, g / 100.0, 'n' || g FROM generate_series(1, 50) g",
            "UPDATE t SET amount = amount + 0.00000001 WHERE id % 7 = 0",
            "DELETE FROM t WHERE id % 11 = 0",
        ],
    )
    drop_with_truth(db)


def test_importing_the_command_line_loads_no_heavy_dependency() -> None:
    code = f"import sys, walrecover.cli\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.split() == ["[]"]


def test_a_bare_recovery_loads_neither_pandas_nor_pyarrow(db: Database) -> None:
    _ledger(db)

    exit_code, loaded = _run(
        ["recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t"],
        f"sorted(m for m in {HEAVY!r} if m in sys.modules)",
    )

    assert exit_code in (0, None)
    assert differences(db, "truth", "t_recovered") == (0, 0)
    assert loaded == []


def test_a_recovery_with_an_audit_uses_the_system_allocator_for_arrow(
    db: Database, tmp_path: Path
) -> None:
    """pyarrow's default pool (mimalloc) kept about 45 MB the audit had freed; the command sets
    the system pool, for its own process only."""
    _ledger(db)
    audit = tmp_path / "audit.parquet"

    exit_code, pool = _run(
        ["recover", "-d", db.dsn, "--slot", SLOT, "--table", "public.t", "--audit", str(audit)],
        "__import__('pyarrow').default_memory_pool().backend_name",
    )

    assert exit_code in (0, None)
    assert differences(db, "truth", "t_recovered") == (0, 0)
    assert audit.exists()
    assert pool == "system"
