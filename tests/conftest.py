"""Shared fixtures: one real throwaway PostgreSQL for the whole session, fresh databases per test.

Tests get them by naming them as arguments and never import this module: the plain helpers
and the :class:`~helpers.Database` type are in ``helpers.py``.

Nothing is mocked: every test that needs a database talks to a cluster started by
:mod:`walrecover.drill.cluster` (initdb as an unprivileged user when run as root,
wal_level=logical).

Without the wal2json plugin (a developer without root), the tests that need it are reported as
skipped instead of failed, and the run ends naming them and the package to install. CI (``CI``
set) installs wal2json and never skips: there a missing plugin fails.
"""

from __future__ import annotations

import itertools
import os
import re
from collections import Counter
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import Database

from walrecover.drill.cluster import Cluster, find_installation
from walrecover.stream.sources.slot import SlotSource

_counter = itertools.count(1)


# -- running without wal2json ---------------------------------------------------------------------

#: What PostgreSQL or walrecover say when a test reaches for the missing plugin.
_NO_WAL2JSON = re.compile(
    r"could not access file \\?\"wal2json\\?\"|output plugin '?wal2json'? is not installed"
)


def _wal2json_package() -> str | None:
    """The package to install when wal2json is missing and may be skipped, else None."""
    if os.environ.get("CI"):
        return None  # CI installs it and runs everything
    try:
        installation = find_installation()
    except Exception:
        return None
    if installation.has_plugin("wal2json"):
        return None
    return f"postgresql-{installation.major}-wal2json"


_MISSING = _wal2json_package()
_SKIPPED: list[str] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A test that failed only because wal2json is not installed is reported as skipped."""
    report = yield
    if _MISSING and report.failed and call.excinfo is not None:
        text = f"{call.excinfo.value}\n{report.longreprtext}"
        if _NO_WAL2JSON.search(text):
            report.outcome = "skipped"
            report.longrepr = (str(item.path), item.location[1] or 0, f"needs {_MISSING}")
            if item.nodeid not in _SKIPPED:
                _SKIPPED.append(item.nodeid)
    return report


def wal2json_summary() -> str | None:
    """One line: how many tests were skipped for want of wal2json, where, and what to install."""
    if not _SKIPPED:
        return None
    files = Counter(nodeid.split("::")[0].removeprefix("tests/") for nodeid in _SKIPPED)
    where = ", ".join(f"{name} {count}" for name, count in sorted(files.items()))
    return (
        f"skipped {len(_SKIPPED)} tests that need the wal2json plugin ({where}): "
        f"install {_MISSING} (sudo apt-get install {_MISSING}) to run them"
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    line = wal2json_summary()
    report = os.environ.get("WALRECOVER_SKIPPED_REPORT")
    if report:
        # ./dev test prints it as the very last line, after pytest's own summary.
        Path(report).write_text(line or "")
    elif line:
        terminalreporter.write_line(line, yellow=True)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The session's throwaway cluster (stopped and removed at the end, even on failure)."""
    with Cluster() as running:
        yield running


@pytest.fixture
def db(cluster: Cluster) -> Iterator[Database]:
    """A fresh database; its slots are dropped afterwards so WAL is not retained."""
    name = f"t{next(_counter)}"
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database = Database(cluster, name)
    yield database
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE (database = %s OR database IS NULL) AND NOT active",
            (name,),
        )
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(params=["stream", "pages"])
def read_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once per way of reading a slot copy (``SlotSource(read=...)``): streamed
    through a replication connection, and in SQL pages. In-process runs only (the CLI helper)."""
    defaults = SlotSource.__init__.__kwdefaults__
    assert defaults is not None and "read" in defaults
    before = defaults["read"]
    defaults["read"] = request.param
    try:
        yield str(request.param)
    finally:
        defaults["read"] = before
