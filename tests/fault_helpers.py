"""Helpers for the fault-injection, bad-input, hostile-name and fuzz tests.

walrecover runs here as a real process (``python -m walrecover.cli``), so it can be killed with
SIGKILL, interrupted with SIGINT and timed the way an engineer's terminal would; every database
it touches is a real throwaway server. Every wait has a deadline: a hang fails the test instead
of stalling the suite.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from helpers import Database
from psycopg import sql

from walrecover.db import connect as walrecover_connect
from walrecover.drill.cluster import Cluster
from walrecover.stream.decoders import plugin_options

#: How walrecover is started: the interpreter of this venv running the CLI module.
WALRECOVER = (sys.executable, "-m", "walrecover.cli")
#: No single walrecover run in these tests may take longer than this.
RUN_TIMEOUT = 120.0
LSN_RE = re.compile(r"\b[0-9A-F]{1,8}/[0-9A-F]{1,8}\b")

T = TypeVar("T")


@dataclass(frozen=True)
class Finished:
    """A walrecover process that ended: exit code, output, and how long it ran."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        """The non-empty lines of stderr."""
        return [line for line in self.stderr.splitlines() if line.strip()]

    def json(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.stdout)
        return result

    def describe(self) -> str:
        return f"exit {self.returncode} after {self.seconds:.1f}s; stderr: {self.stderr.strip()!r}"


def _default_sigint() -> None:
    # A process started from a non-interactive shell may inherit SIGINT as ignored; a terminal's
    # Ctrl-C is what we imitate, so give the child the default disposition back.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without libpq variables that could change what is tested."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(extra or {})
    return env


@dataclass
class Running:
    """A walrecover process that was started and not yet waited for."""

    proc: subprocess.Popen[str]
    started: float

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> bool:
        """Send ``signum``; True if the process was still running to receive it."""
        if self.proc.poll() is not None:
            return False
        self.proc.send_signal(signum)
        return True

    def finish(self, timeout: float = RUN_TIMEOUT) -> Finished:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError(
                f"walrecover hung: still running after {timeout:.0f}s (killed); stderr: {err!r}"
            ) from None
        return Finished(self.proc.returncode, out, err, time.monotonic() - self.started)


def start(args: Sequence[str], env: Mapping[str, str] | None = None) -> Running:
    """Start ``walrecover ARGS`` with stdout and stderr captured (stderr is no terminal, so no
    progress bars)."""
    proc = subprocess.Popen(
        [*WALRECOVER, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=child_env(env),
        preexec_fn=_default_sigint,  # noqa: PLW1509 - no threads; restores SIGINT only
    )
    return Running(proc, time.monotonic())


def run(
    args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = RUN_TIMEOUT
) -> Finished:
    """Run ``walrecover ARGS`` to its end (failing the test if it hangs)."""
    return start(args, env).finish(timeout)


def wait_until(
    what: str,
    probe: Callable[[], T | None],
    *,
    timeout: float = 60.0,
    running: Running | None = None,
    interval: float = 0.005,
) -> T:
    """Poll ``probe`` until it returns something; fail if ``running`` ends first or time is up."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if running is not None and not running.alive():
            done = running.finish()
            raise AssertionError(f"walrecover ended before {what}: {done.describe()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# -- the target's progress row ---------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """The row ``walrecover.progress`` holds for one target."""

    last_commit_lsn: str | None
    transactions: int
    complete: bool
    source: str
    audit: str | None
    #: The finished recovery's recorded result (JSON), or None.
    result: str | None = None


def progress(conn: psycopg.Connection[Any], into: str) -> Progress | None:
    """The progress row of ``into`` (as walrecover prints it, e.g. ``public.t_recovered``)."""
    try:
        row = conn.execute(
            "SELECT last_commit_lsn::text, transactions, complete, source, audit,"
            " to_jsonb(p) ->> 'result' FROM walrecover.progress p WHERE target = %s",
            (into,),
        ).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    if row is None:
        return None
    return Progress(row[0], int(row[1]), bool(row[2]), row[3], row[4], row[5])


@contextmanager
def session(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def wait_for_progress(
    dsn: str,
    into: str,
    running: Running,
    *,
    transactions: int = 1,
    complete: bool | None = None,
    recorded: bool = False,
    timeout: float = 60.0,
) -> Progress:
    """Wait until ``into`` has committed at least ``transactions`` (and, if given, whose
    ``complete`` flag is ``complete``; ``recorded``: and whose result is recorded)."""
    with session(dsn) as conn:

        def probe() -> Progress | None:
            found = progress(conn, into)
            if found is None or found.transactions < transactions:
                return None
            if complete is not None and found.complete != complete:
                return None
            if recorded and found.result is None:
                return None
            return found

        return wait_until(f"progress of {into}", probe, timeout=timeout, running=running)


# -- comparing what was built ------------------------------------------------------------------


def ident(qualified: str) -> sql.Identifier:
    schema, _, name = qualified.partition(".")
    return sql.Identifier(schema, name)


def table_differences(db: Database, expected: str, actual: str) -> tuple[int, int, int, int]:
    """(missing from actual, extra in actual, rows of expected, rows of actual), duplicates
    counted (EXCEPT ALL both ways)."""
    query = sql.SQL(
        "SELECT (SELECT count(*) FROM (SELECT * FROM {e} EXCEPT ALL SELECT * FROM {a}) x),"
        " (SELECT count(*) FROM (SELECT * FROM {a} EXCEPT ALL SELECT * FROM {e}) y),"
        " (SELECT count(*) FROM {e}), (SELECT count(*) FROM {a})"
    ).format(e=ident(expected), a=ident(actual))
    row = db.execute(query.as_string(None))[0]
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def audit_problems(expected: Path, actual: Path) -> list[str]:
    """How the audit at ``actual`` differs from ``expected`` row by row (run metadata aside)."""
    problems: list[str] = []
    if not actual.is_file():
        siblings = sorted(p.name for p in actual.parent.glob(actual.name + "*"))
        return [f"the audit {actual.name} does not exist (beside it: {siblings})"]
    e, a = pq.read_table(expected), pq.read_table(actual)
    if a.schema.names != e.schema.names:
        return [f"columns differ: {a.schema.names} != {e.schema.names}"]
    if a.num_rows != e.num_rows:
        problems.append(f"{a.num_rows} rows, the reference has {e.num_rows}")
    seqs = a.column("seq").to_pylist()
    if seqs != list(range(len(seqs))):
        duplicated = [s for s, n in Counter(seqs).items() if n > 1]
        problems.append(f"seq is not 0..{len(seqs) - 1} (duplicated: {duplicated[:5]})")
    if not problems:
        for name in e.schema.names:
            left, right = e.column(name), a.column(name)
            if left.equals(right):
                continue
            first = next(
                i
                for i, (x, y) in enumerate(zip(left.to_pylist(), right.to_pylist(), strict=True))
                if x != y
            )
            problems.append(
                f"column {name} first differs at seq {first}: {right[first].as_py()!r}, "
                f"reference {left[first].as_py()!r}"
            )
    leftovers = [
        p.name
        for p in actual.parent.iterdir()
        if p.name.startswith(actual.name) and p.name.endswith((".parts", ".partial", ".tmp"))
    ]
    if leftovers:
        problems.append(f"work files left beside the audit: {leftovers}")
    return problems


def live_images(audit: pa.Table) -> Counter[str]:
    """The after-images an audit says survive (final outcome ``applied``, insert or update), as
    canonical JSON, counted."""
    found: Counter[str] = Counter()
    for op, outcome, new in zip(
        audit.column("op").to_pylist(),
        audit.column("outcome").to_pylist(),
        audit.column("new_values").to_pylist(),
        strict=True,
    ):
        if outcome == "applied" and op in ("insert", "update"):
            found[json.dumps(json.loads(new), sort_keys=True)] += 1
    return found


def table_images(dsn: str, table: str) -> Counter[str]:
    """The rows of ``table`` as canonical JSON of their text values, counted."""
    with session(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(ident(table)))
        names = [d.name for d in cur.description or ()]
        cur.execute(
            sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(n)) for n in names),
                ident(table),
            )
        )
        return Counter(
            json.dumps(dict(zip(names, row, strict=True)), sort_keys=True) for row in cur.fetchall()
        )


# -- the source --------------------------------------------------------------------------------


def copy_slots(dsn: str) -> list[tuple[str, bool]]:
    """walrecover's copy slots on the server: (name, active)."""
    with session(dsn) as conn:
        rows = conn.execute(
            "SELECT slot_name::text, active FROM pg_replication_slots"
            " WHERE slot_name LIKE 'walrecover\\_%' ORDER BY 1"
        ).fetchall()
    return [(str(r[0]), bool(r[1])) for r in rows]


def walrecover_backends(dsn: str, database: str) -> list[tuple[int, str, str]]:
    """walrecover's sessions in ``database``: (pid, state, last query)."""
    with session(dsn) as conn:
        rows = conn.execute(
            "SELECT pid, coalesce(state, ''), coalesce(query, '') FROM pg_stat_activity"
            " WHERE application_name = 'walrecover' AND datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


def terminate(dsn: str, pid: int) -> bool:
    with session(dsn) as conn:
        row = conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
    return bool(row and row[0])


def peek_capture(
    dsn: str,
    slot: str,
    plugin: str,
    path: Path,
    *,
    tables: Sequence[str] = (),
    options: Mapping[str, str] | None = None,
) -> list[bytes]:
    """Write what ``pg_recvlogical --start -f PATH`` would: each message, then a newline.

    The slot is only peeked (never moved), in a session with walrecover's settings, with the
    options walrecover itself asks the server for. Returns the messages.
    """
    pairs = plugin_options(plugin, tables, dict(options or {}))
    flat = [item for pair in pairs for item in pair]
    function = (
        "pg_logical_slot_peek_binary_changes"
        if plugin == "pgoutput"
        else "pg_logical_slot_peek_changes"
    )
    with walrecover_connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL("SELECT data FROM {}(%s, NULL, NULL, VARIADIC %s::text[])").format(
                sql.Identifier(function)
            ),
            (slot, flat),
        ).fetchall()
    messages = [r[0] if isinstance(r[0], bytes) else str(r[0]).encode() for r in rows]
    path.write_bytes(b"".join(m + b"\n" for m in messages))
    return messages


def restart_server(cluster: Cluster, timeout: float = 60.0) -> None:
    """``pg_ctl restart -m fast`` on a throwaway cluster, logging to its server log.

    Not :meth:`Cluster.restart`: that one gives pg_ctl no ``-l``, so the restarted postmaster
    inherits the pipes its caller captures and the call waits for them until its timeout
    (see ``test_cluster_restart_returns``).
    """
    assert cluster.directory is not None, "start the cluster first"
    args = [
        str(cluster.installation.bindir / "pg_ctl"),
        "-D",
        str(cluster.data),
        "-l",
        str(cluster.directory / "server.log"),
        "-w",
        "-m",
        "fast",
        "restart",
    ]
    if cluster.run_as:
        entry = pwd.getpwnam(cluster.run_as)
        subprocess.run(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=True,
            cwd=cluster.directory,
            user=entry.pw_uid,
            group=entry.pw_gid,
            extra_groups=[],
        )
    else:
        subprocess.run(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=True,
            cwd=cluster.directory,
        )
