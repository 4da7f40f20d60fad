"""The notebooks run, top to bottom, against data generated here, and their charts render.

Each notebook is executed with nbclient in a kernel of this very Python (the venv's ipykernel),
with its ``parameters`` cell overridden by an injected cell, the way papermill does it. A cell
that raises fails the test. The executed notebooks and their charts are kept under
``artifacts/notebooks/`` (git-ignored) for CI to publish.

- ``reconciliation.ipynb`` reads the audit of a bank recovered here (the rehearsal's workload on
  the session cluster, its rows spread over ten days) and a ledger exported from the bank's
  ``accounts`` before the drop, with one balance off by a cent and one account left out, plus a
  daily ledger, so the differences and their explanations are shown. It runs a second time
  with its parameters from a parameters file and the environment only (no injected cell) and
  the ledger from a query, which reconciles.
- ``rehearsal.ipynb`` runs a small rehearsal of its own (a throwaway cluster) and charts where
  the time went and the LSN coverage.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import nbformat
import psycopg
import pytest
from helpers import ROOT, Database
from nbclient import NotebookClient

from walrecover.db import connect, one
from walrecover.drill.cluster import Cluster
from walrecover.drill.notebook import ParameterError, parameters
from walrecover.drill.rehearsal import create_bank, run_workload
from walrecover.rebuild.recover import recover
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import StopPoint, TableName

NOTEBOOKS = ROOT / "notebooks"
ARTIFACTS = ROOT / "artifacts" / "notebooks"
KERNEL = "walrecover-tests"
NOTEBOOK_SLOT = "notebook_cdc"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A kernelspec running this interpreter, so the notebooks see this venv's walrecover."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "walrecover tests",
                "language": "python",
            }
        )
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(root))
        patch.setenv("MPLBACKEND", "Agg")
        yield KERNEL


def execute(
    name: str, parameters: dict[str, Any], kernel: str, name_out: str | None = None
) -> nbformat.NotebookNode:
    """Run a notebook with its parameters overridden (none: as it is); raise if a cell fails."""
    notebook: nbformat.NotebookNode = nbformat.read(NOTEBOOKS / name, as_version=4)  # type: ignore[no-untyped-call]
    index = next(
        i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", [])
    )
    injected = nbformat.v4.new_code_cell(  # type: ignore[no-untyped-call]
        "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    )
    injected.metadata["tags"] = ["injected-parameters"]
    if parameters:
        notebook.cells.insert(index + 1, injected)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    client = NotebookClient(
        notebook,
        kernel_name=kernel,
        timeout=300,
        resources={"metadata": {"path": str(ROOT)}},
    )
    try:
        client.execute()
    finally:
        executed = name_out or name.replace(".ipynb", ".executed.ipynb")
        nbformat.write(notebook, ARTIFACTS / executed)  # type: ignore[no-untyped-call]
    return notebook


@pytest.mark.parametrize("name", ["reconciliation.ipynb", "rehearsal.ipynb"])
def test_notebooks_are_committed_clean_with_parameters_on_top(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)  # type: ignore[no-untyped-call]
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code[0].metadata.get("tags") == ["parameters"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)


@dataclass(frozen=True)
class Recovered:
    audit: Path
    ledger: Path
    daily_ledger: Path
    balances: dict[str, Decimal]
    dsn: str


@pytest.fixture(scope="module")
def recovered(cluster: Cluster) -> Iterator[Recovered]:
    """The rehearsal's bank on the session cluster: workload, ledger exported, drop, recovery."""
    name = "notebook_bank"
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = Database(cluster, name)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        with connect(db.dsn, autocommit=True) as conn:
            create_bank(conn, 8)
            conn.execute("CREATE PUBLICATION notebook_pub FOR TABLE transactions")
            conn.execute(
                "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (NOTEBOOK_SLOT,)
            )
            run_workload(conn, 400, 8)
            # Ten calendar days of history, so the daily chart has dates to show.
            conn.execute(
                "UPDATE transactions SET created_at = created_at - (id % 10) * interval '1 day'"
            )
            balances = {
                str(k): Decimal(v)
                for k, v in conn.execute("SELECT id, balance::text FROM accounts ORDER BY id")
            }
            daily = conn.execute(
                "SELECT account_id, (created_at AT TIME ZONE 'UTC')::date::text, sum(amount)::text"
                " FROM transactions GROUP BY 1, 2 ORDER BY 2, 1"
            ).fetchall()
            (stop,) = one(conn, "SELECT pg_current_wal_insert_lsn()::text")
            conn.execute(
                "INSERT INTO transactions (account_id, amount, kind) VALUES (2, 5, 'late')"
            )
            conn.execute("DROP TABLE transactions")
        # The ledger the finance team hands over: account 3 off by a cent, account 8 missing.
        ledger = ARTIFACTS / "ledger.csv"
        lines = [
            f"{k},{v + Decimal('0.01') if k == '3' else v}" for k, v in balances.items() if k != "8"
        ]
        ledger.write_text("account_id,total\n" + "\n".join(lines) + "\n")
        # The daily ledger, with the same cent too much on account 3's first day.
        first_day = daily[0][1]
        daily_lines = [
            f"{k},{day},{Decimal(v) + Decimal('0.01') if (k, day) == (3, first_day) else v}"
            for k, day, v in daily
        ]
        daily_ledger = ARTIFACTS / "daily_ledger.csv"
        daily_ledger.write_text("account_id,day,total\n" + "\n".join(daily_lines) + "\n")
        audit = ARTIFACTS / "bank.parquet"
        for stale in ARTIFACTS.glob("bank.parquet*"):  # the previous run's: never replaced
            stale.unlink()
        recover(
            db.dsn,
            NOTEBOOK_SLOT,
            TableName("public", "transactions"),
            stop=StopPoint(lsn=Lsn.parse(stop)),
            audit_path=audit,
            options={"publication_names": "notebook_pub"},
        )
        yield Recovered(audit, ledger, daily_ledger, balances, db.dsn)
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE database = %s AND NOT active",
                (name,),
            )
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def assert_charts(*names: str) -> None:
    for chart in names:
        path = ARTIFACTS / chart
        assert path.is_file(), f"{chart} was not saved"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 5_000, f"{chart} is too small to hold a chart"


RECONCILIATION_CHARTS = (
    "verdict.png",
    "status_counts.png",
    "account_deltas.png",
    "daily_amounts.png",
)


def test_reconciliation_notebook_runs_and_charts(recovered: Recovered, kernel: str) -> None:
    for chart in RECONCILIATION_CHARTS:
        (ARTIFACTS / chart).unlink(missing_ok=True)

    notebook = execute(
        "reconciliation.ipynb",
        {
            "AUDIT": str(recovered.audit),
            "LEDGER": str(recovered.ledger),
            "DAILY_LEDGER": str(recovered.daily_ledger),
            "KEY": ["account_id"],
            "AMOUNT": "amount",
            "ARTIFACTS": str(ARTIFACTS),
        },
        kernel,
    )

    assert_charts(*RECONCILIATION_CHARTS)
    summary = json.loads((ARTIFACTS / "reconciliation.json").read_text())
    assert (summary["keys"], summary["mismatched"], summary["missing_in_ledger"]) == (8, 1, 1)
    assert summary["total_difference"] == str(recovered.balances["8"] - Decimal("0.01"))
    text = "".join(
        output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", [])
    )
    assert "OK: no row was edited, deleted, added or moved." in text
    assert "('3',) ->" in text and "('8',) ->" in text


def test_reconciliation_notebook_takes_its_parameters_from_a_file_and_the_environment(
    recovered: Recovered, kernel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No injected cell: what a finance user does with ./dev notebook --params FILE. The
    ledger is a query on the bank's accounts, whose balances match the recovered rows."""
    artifacts = ARTIFACTS / "from-parameters"
    shutil.rmtree(artifacts, ignore_errors=True)
    params = tmp_path / "params.toml"
    params.write_text(
        "[reconciliation]\n"
        f"audit = {json.dumps(str(recovered.audit))}\n"
        'ledger_query = "SELECT id, balance FROM accounts"\n'
        f"ledger_dsn = {json.dumps(recovered.dsn)}\n"
        f"artifacts = {json.dumps(str(artifacts))}\n"
    )
    monkeypatch.setenv("WALRECOVER_NOTEBOOK_PARAMS", str(params))
    monkeypatch.setenv("WALRECOVER_TOP", "5")

    execute("reconciliation.ipynb", {}, kernel, name_out="reconciliation.from-parameters.ipynb")

    assert_charts(*(f"from-parameters/{chart}" for chart in RECONCILIATION_CHARTS))
    summary = json.loads((artifacts / "reconciliation.json").read_text())
    assert summary["matched"] is True
    assert summary["keys"] == 8


REHEARSAL_CHARTS = ("rehearsal_stages.png", "rehearsal_outcomes.png", "lsn_coverage.png")


def test_rehearsal_notebook_runs_and_charts(kernel: str) -> None:
    for chart in REHEARSAL_CHARTS:
        (ARTIFACTS / chart).unlink(missing_ok=True)
    for stale in ARTIFACTS.glob("rehearsal.parquet*"):  # the previous run's: never replaced
        stale.unlink()

    execute(
        "rehearsal.ipynb",
        {
            "TRANSACTIONS": 300,
            "ACCOUNTS": 10,
            "AUDIT": str(ARTIFACTS / "rehearsal.parquet"),
            "ARTIFACTS": str(ARTIFACTS),
        },
        kernel,
    )

    assert_charts(*REHEARSAL_CHARTS)
    result = json.loads((ARTIFACTS / "rehearsal.json").read_text())
    assert result["identical"] and result["reconciled"]
    assert result["audit_rows"] >= result["changes"] > 0


# -- parameters without editing a cell ----------------------------------------------------------


def parameters_cell(name: str) -> str:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)  # type: ignore[no-untyped-call]
    return str(next(c.source for c in notebook.cells if "parameters" in c.metadata.get("tags", [])))


@pytest.mark.parametrize("name", ["reconciliation", "rehearsal"])
def test_the_example_parameters_file_fits_the_notebooks(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = NOTEBOOKS / "parameters.example.toml"
    monkeypatch.setenv("WALRECOVER_NOTEBOOK_PARAMS", str(example))
    namespace: dict[str, Any] = {}
    exec(parameters_cell(f"{name}.ipynb"), namespace)
    assert namespace["ARTIFACTS"] == str(NOTEBOOKS / "artifacts" / "notebooks")


def test_parameters_come_from_the_file_then_the_environment(tmp_path: Path) -> None:
    params = tmp_path / "p.toml"
    params.write_text('[reconciliation]\naudit = "a.parquet"\ntop = 3\nkey = ["k1"]\n')
    defaults = {"audit": "x", "top": 20, "key": ["account_id"], "ledger_dsn": None}
    env = {
        "WALRECOVER_NOTEBOOK_PARAMS": str(params),
        "WALRECOVER_KEY": "account_id, currency",
        "WALRECOVER_NOTEBOOK_CWD": "/incident",
    }

    values = parameters("reconciliation", defaults, environ=env)

    assert values == {
        "audit": str(tmp_path / "a.parquet"),
        "top": 3,
        "key": ["account_id", "currency"],
        "ledger_dsn": None,
    }
    env["WALRECOVER_TOP"] = "many"
    with pytest.raises(ParameterError, match="WALRECOVER_TOP='many': give a whole number"):
        parameters("reconciliation", defaults, environ=env)
    params.write_text('[reconciliation]\naudti = "a.parquet"\n')
    with pytest.raises(ParameterError, match="has no parameter 'audti'"):
        parameters("reconciliation", defaults, environ={"WALRECOVER_NOTEBOOK_PARAMS": str(params)})
