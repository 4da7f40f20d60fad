"""The public API is what the docs say it is: ``from walrecover import ...`` works for every
documented name, the README's Python examples and the docstrings' examples run against a real
server, and the version and package data are declared once and truly.

The examples are run as written, with two placeholders replaced: the connection string
(``host=db dbname=bank user=oncall`` in the README, ``dbname=bank`` in docstrings) becomes the
test database's, and the README's stop LSN ``16/B374D848`` becomes the position just before
the test's bad DELETE. The test fails if a placeholder disappears from the examples, so they
cannot drift away from what is run.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.metadata
import inspect
import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, Database, differences, run_script, source_untouched

import walrecover
from walrecover import errors
from walrecover.stream.lsn import Lsn

README_DSN = '"host=db dbname=bank user=oncall"'
README_LSN = '"16/B374D848"'
DOCSTRING_DSN = '"dbname=bank"'


# -- the names -----------------------------------------------------------------------------------


def test_every_public_name_imports_from_the_package() -> None:
    assert walrecover.__all__ == sorted(set(walrecover.__all__))
    namespace: dict[str, Any] = {}
    exec("from walrecover import *", namespace)
    for name in walrecover.__all__:
        value = namespace[name]
        if name != "__version__":
            # The very object its module defines, not a copy or a stand-in.
            module = sys.modules[value.__module__]
            assert getattr(module, value.__qualname__) is value, name


def test_the_entry_points_and_the_error_family_are_exported() -> None:
    for name in (
        "recover",
        "recover_capture",
        "reconcile",
        "rehearse",
        "decode_to",
        "read_audit",
        "verify_audit",
        "swap",
        "TableName",
        "StopPoint",
        "StartPoint",
        "Lsn",
        "RecoveryResult",
        "Reconciliation",
        "RehearsalResult",
        "DecodeResult",
        "Verification",
        "SwapResult",
    ):
        assert name in walrecover.__all__, name
    family = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, errors.WalrecoverError)
    }
    assert family <= set(walrecover.__all__), family - set(walrecover.__all__)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = walrecover.nope
    with pytest.raises(ImportError):
        exec("from walrecover import nope", {})


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (nothing imported yet) and return its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_functions_win_over_the_modules_of_the_same_name() -> None:
    """``recover``, ``reconcile`` and ``swap`` are modules too; importing the modules first
    (as the CLI does) must not make ``from walrecover import recover`` hand out a module."""
    out = _python(
        "import walrecover.cli, walrecover.rebuild.recover\n"
        "from walrecover.ledger.reconcile import Reconciliation\n"
        "from walrecover import recover, reconcile, swap\n"
        "import walrecover\n"
        "print(recover.__name__, reconcile.__name__, swap.__name__,\n"
        "      type(walrecover.recover).__name__, type(walrecover.swap).__name__)\n"
    )
    assert out.split() == ["recover", "reconcile", "swap", "function", "function"]


def test_importing_the_package_stays_cheap() -> None:
    """``import walrecover`` loads no heavy dependency: each comes with the name that needs it."""
    out = _python(
        "import sys, walrecover\n"
        "heavy = ('pandas', 'pyarrow', 'psycopg', 'pglast', 'click')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "walrecover.Lsn\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    assert out.splitlines() == ["[]", "[]"]


# -- the version and the package data ------------------------------------------------------------


def _pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def test_the_version_is_declared_once() -> None:
    project = _pyproject()
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "walrecover.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", walrecover.__version__)
    assert importlib.metadata.version("walrecover") == walrecover.__version__


def test_every_package_data_pattern_matches_a_file() -> None:
    package_data = _pyproject()["tool"]["setuptools"]["package-data"]
    for package, patterns in package_data.items():
        root = ROOT / package.replace(".", "/")
        for pattern in patterns:
            assert list(root.glob(pattern)), f"package-data {package}: {pattern} matches nothing"


# -- the examples --------------------------------------------------------------------------------


def _bank(db: Database) -> Lsn:
    """The README's incident: accounts with balances, the transactions behind them on a wal2json
    slot ``cdc``, then a bad DELETE and the DROP. Returns the LSN just before the DELETE, and
    leaves the table as it was there in the unlogged ``truth``."""
    run_script(
        db,
        [
            "CREATE TABLE accounts (id integer PRIMARY KEY, balance numeric(12,2) NOT NULL)",
            "INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 5) g",
            "CREATE TABLE transactions (id bigserial PRIMARY KEY, account_id integer NOT NULL,"
            " amount numeric(12,2) NOT NULL, note text)",
            # Before the slot: a CREATE TABLE between the changes would be a catalog change
            # that wal2json's stream cannot tell from a re-creation of transactions (exit 4).
            "CREATE UNLOGGED TABLE truth (LIKE transactions)",
        ],
    )
    db.create_slot("cdc")
    run_script(
        db,
        [
            f"BEGIN; INSERT INTO transactions (account_id, amount, note)"
            f" VALUES ({i % 5 + 1}, {i}.25, 'payment {i}');"
            f" UPDATE accounts SET balance = balance + {i}.25 WHERE id = {i % 5 + 1}; COMMIT"
            for i in range(1, 21)
        ]
        + ["BEGIN; UPDATE transactions SET note = 'corrected' WHERE id = 3; COMMIT"],
    )
    db.execute("INSERT INTO truth SELECT * FROM transactions")
    lsn = Lsn.parse(db.scalar("SELECT pg_current_wal_insert_lsn()::text"))
    run_script(db, ["DELETE FROM transactions WHERE account_id = 2", "DROP TABLE transactions"])
    return lsn


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def test_the_readme_python_examples_run(
    db: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every ```python block of the README, in order, in one directory (a later block reads the
    audit an earlier one wrote)."""
    blocks = _python_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 2
    text = "".join(blocks)
    assert README_DSN in text and README_LSN in text
    lsn = _bank(db)
    monkeypatch.chdir(tmp_path)
    with source_untouched(db, "cdc"):
        for number, block in enumerate(blocks, 1):
            code = block.replace(README_DSN, repr(db.dsn)).replace(README_LSN, f'"{lsn}"')
            exec(compile(code, f"README.md python block {number}", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out == "20 rows in public.transactions_recovered\n"
    rebuilt = walrecover.TableName("public", "transactions_recovered")
    assert differences(db, "truth", rebuilt) == (0, 0)
    assert (tmp_path / "transactions.parquet").exists()


def _doctests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder()
    found = []
    for info in pkgutil.walk_packages(walrecover.__path__, "walrecover."):
        found += finder.find(importlib.import_module(info.name))
    found += finder.find(walrecover)
    return [test for test in found if test.examples]


def test_the_docstring_examples_run(db: Database) -> None:
    tests = _doctests()
    assert tests, "no docstring example found: the package docstring has one"
    assert any(DOCSTRING_DSN in e.source for t in tests for e in t.examples)
    _bank(db)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    with source_untouched(db, "cdc"):
        for test in tests:
            for example in test.examples:
                example.source = example.source.replace(DOCSTRING_DSN, repr(db.dsn))
            runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
    # The docstring recovers to the end of the stream: the bad DELETE too.
    assert db.scalar("SELECT count(*) FROM transactions_recovered") == 16
