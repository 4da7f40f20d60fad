"""Benchmark: walrecover against the floor, a hand-made skeleton and native logical replication.

Usage::

    .venv/bin/python bench/pipeline.py --changes 100000 --plugins wal2json,pgoutput [--json]
        [--fsync on|off] [--only STEP,...] [--profile DIR]

One run, one throwaway cluster (:class:`walrecover.drill.cluster.Cluster`). The workload is built
once: ``--changes`` ledger transactions, each an insert into ``transactions`` and a balance
update of ``accounts``, ten to a commit, then ``DROP TABLE transactions``; a slot per plugin
(and a ``FOR ALL TABLES`` publication) exists from before the first commit. Then, each step on
a fresh copy of its plugin's slot (``pg_copy_logical_replication_slot``) so the slots the
workload filled never move (checked at the end), it measures:

* ``decode``: ``pg_recvlogical`` streaming the copy to /dev/null (wal2json with walrecover's own
  options, pgoutput through the publication): the server's decoding alone, the floor;
* ``load``: a server-side ``COPY`` of the final rows into an empty keyed table: the floor for
  writing the result;
* ``skeleton``: ``pg_recvlogical`` piped into ``bench/skeleton.py``, which parses the stream and
  COPYs the inserts into a table: the least a hand-made recovery does, all streaming;
* ``native``: a second cluster subscribing to the publication from a copy of the pgoutput slot
  (``copy_data = false``), timed until the subscription has confirmed the last commit before the
  DROP; it applies both tables' changes (2 x ``--changes``);
* ``recover``: ``walrecover recover`` as a subprocess, bare;
* ``recover+``: the same with ``--key/--amount/--ledger-query`` and ``--audit``.

Rebuilt tables go to another database of the same cluster so no step's writes are in the
stream a later step decodes. For each step: wall seconds, client CPU seconds (``wait4`` of the
client processes), server CPU seconds (the clusters' processes, exited backends included through
the postmasters' children times), client peak RSS (the most a client's processes held at one
moment; the sum of each process's own peak is kept as an upper bound), and ratios of wall time
to the fastest skeleton of the run and to native replication.
``--json`` prints the whole run as JSON instead of the table, ``--save FILE`` writes it too.
``--profile DIR`` then runs ``recover+`` once more per plugin under py-spy (cProfile without
it) and prints where the time goes.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from walrecover.db import Connection, connect, one
from walrecover.drill.cluster import Cluster
from walrecover.drill.rehearsal import TABLES_SQL
from walrecover.stream.decoders.wal2json import server_options

HERE = Path(__file__).resolve().parent
PLUGINS = ("wal2json", "pgoutput")
STEPS = ("decode", "load", "skeleton", "native", "recover", "recover+")
PUBLICATION = "bench_pub"
PER_COMMIT = 10
LEDGER_QUERY = "SELECT id, balance FROM accounts"

#: The ledger workload of issue 12: an insert and a balance update per transaction, ten a commit.
WORKLOAD_SQL = """
CREATE PROCEDURE bench_ledger(first bigint, n integer, accounts integer, per_commit integer)
LANGUAGE plpgsql AS $$
DECLARE
    i bigint;
    acc integer;
    amt numeric(12,2);
BEGIN
    PERFORM setseed(0.42);
    FOR i IN first .. first + n - 1 LOOP
        acc := 1 + floor(random() * accounts)::integer;
        amt := round((random() * 2000 - 1000)::numeric, 2);
        INSERT INTO transactions (account_id, amount, kind, note, meta)
        VALUES (acc, amt, CASE WHEN amt < 0 THEN 'debit' ELSE 'credit' END, 'payment ' || i,
                jsonb_build_object('channel', (ARRAY['card', 'wire', 'cash'])[1 + i % 3],
                                   'seq', i));
        UPDATE accounts SET balance = balance + amt WHERE id = acc;
        IF i % per_commit = 0 THEN
            COMMIT;
        END IF;
    END LOOP;
    COMMIT;
END $$;
"""

#: The rebuilt table for the skeleton and the load floor (walrecover builds its own).
TARGET_SQL = """
CREATE TABLE {name} (
    id bigint PRIMARY KEY,
    account_id integer NOT NULL,
    amount numeric(12,2) NOT NULL,
    kind text NOT NULL,
    created_at timestamptz NOT NULL,
    note text,
    meta jsonb
)
"""


@dataclass
class Measure:
    """One step's cost: wall and CPU seconds, client peak RSS."""

    step: str
    plugin: str
    wall: float
    client_cpu: float | None = None
    server_cpu: float | None = None
    rss_mib: float | None = None
    rows: int | None = None
    x_skeleton: float | None = None
    x_native: float | None = None
    note: str = ""
    #: Each client process's own peak, summed: an upper bound of ``rss_mib``.
    rss_summed_mib: float | None = None

    @classmethod
    def of_child(
        cls,
        step: str,
        plugin: str,
        wall: float,
        child: Child,
        server: float,
        *,
        rows: int | None = None,
        note: str = "",
    ) -> Measure:
        """A step that ran one client process (:func:`run_child`)."""
        return cls(
            step,
            plugin,
            wall,
            child.cpu,
            server,
            child.rss_mib,
            rows,
            note=note,
            rss_summed_mib=child.rss_summed_mib,
        )


@dataclass
class Run:
    """The whole run: the machine, the workload and the measures."""

    changes: int
    plugins: list[str]
    machine: dict[str, Any] = field(default_factory=dict)
    workload: dict[str, Any] = field(default_factory=dict)
    measures: list[Measure] = field(default_factory=list)
    profiles: dict[str, Any] = field(default_factory=dict)


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- CPU accounting ----------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _children(pid: int) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found[int(entry.name)] = fields
    return found


class ServerClock:
    """CPU seconds used by clusters between :meth:`start` and :meth:`stop`: their postmasters,
    live children, and (through the postmasters' children times) every backend that exited.

    :meth:`stop` first waits (up to 5 s) until the backends and walsenders that served the step
    have exited and been reaped, and two reads agree, so their time is counted.
    """

    def __init__(self, *clusters: Cluster) -> None:
        self.pids = [int((c.data / "postmaster.pid").read_text().split()[0]) for c in clusters]
        self.before: set[int] = set()
        self.used = 0.0

    def _read(self) -> tuple[float, set[int]]:
        ticks = 0
        pids: set[int] = set()
        for pid in self.pids:
            root = _stat(pid)
            if root is not None:
                ticks += sum(int(x) for x in root[11:15])
            for child, fields in _children(pid).items():
                ticks += sum(int(x) for x in fields[11:15])
                pids.add(child)
        return ticks / os.sysconf("SC_CLK_TCK"), pids

    def start(self) -> ServerClock:
        self.used, self.before = self._read()
        return self

    def stop(self) -> float:
        deadline = time.monotonic() + 5
        settled: float | None = None
        while True:
            used, pids = self._read()
            # A backend can leave the process list a moment before its time reaches the
            # postmaster's children times: only two equal reads with no new child count.
            if (pids <= self.before and used == settled) or time.monotonic() > deadline:
                return used - self.used
            settled = used if pids <= self.before else None
            time.sleep(0.1)


class PeakRss:
    """Peak resident memory of client processes and their descendants (walrecover's reader
    process), polled from ``/proc/PID/status`` every ``interval`` seconds.

    A client's peak is the most its processes held **at one moment**: the largest sum of their
    ``VmRSS`` over the polls, or any one process's ``VmHWM`` if larger (a process's own peak is
    exact; a sum is as fine as the polls). Summing each process's ``VmHWM`` instead would add
    peaks that never coexist: the reader process has exited before walrecover closes the audit,
    its peak. That sum is kept too (:meth:`summed_mib`), an upper bound.

    ``wait4``'s ``ru_maxrss`` would not do: a child forked from this (larger) Python process
    inherits its high-water mark up to the ``exec``; ``VmHWM`` belongs to the exec'd image.
    """

    def __init__(self, pids: list[int], interval: float = 0.05) -> None:
        self.pids = pids
        self.interval = interval
        #: Per tracked pid, the peak (``VmHWM``) of it and of each descendant seen.
        self.peak_kib: dict[int, dict[int, int]] = {pid: {} for pid in pids}
        #: Per tracked pid, the largest sum of its tree's ``VmRSS`` in one poll.
        self.together_kib: dict[int, int] = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            parents: dict[int, int] = {}
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    fields = _stat(int(entry.name))
                    if fields is not None:
                        parents[int(entry.name)] = int(fields[1])
            for root in self.pids:
                now = 0
                for pid in _descendants(root, parents):
                    rss, hwm = _memory(pid)
                    now += rss
                    peaks = self.peak_kib[root]
                    peaks[pid] = max(peaks.get(pid, 0), hwm)
                self.together_kib[root] = max(self.together_kib[root], now)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def mib(self, pid: int) -> float:
        """The peak of ``pid``'s processes together."""
        return max(self.together_kib[pid], *self.peak_kib[pid].values(), 0) / 1024

    def summed_mib(self, pid: int) -> float:
        """The sum of each process's own peak: an upper bound of :meth:`mib`."""
        return sum(self.peak_kib[pid].values()) / 1024


def _descendants(root: int, parents: dict[int, int]) -> list[int]:
    """``root`` and every process below it."""
    found, frontier = [root], [root]
    while frontier:
        below = [pid for pid, parent in parents.items() if parent in frontier]
        found += below
        frontier = below
    return found


def _memory(pid: int) -> tuple[int, int]:
    """A process's ``VmRSS`` and ``VmHWM`` in KiB (zeros if it is gone)."""
    rss = hwm = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


@dataclass
class Child:
    """A finished client process: its exit status, output and resource usage."""

    rc: int
    out: bytes
    cpu: float
    rss_mib: float
    rss_summed_mib: float


def _wait(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """Reap ``proc`` with ``wait4``: its exit code and CPU seconds (user + system)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def run_child(args: list[str]) -> Child:
    """Run one client process to the end, with its CPU time and peak RSS."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err)
        with PeakRss([proc.pid]) as peak:
            rc, cpu = _wait(proc)
        out.seek(0)
        err.seek(0)
        child = Child(rc, out.read(), cpu, peak.mib(proc.pid), peak.summed_mib(proc.pid))
        if rc != 0:
            raise SystemExit(f"bench: {args[0]} exited {rc}: {err.read().decode()[-2000:]}")
    return child


# -- the cluster and its slots -----------------------------------------------------------------


@contextlib.contextmanager
def slot_copy(dsn: str, source: str, name: str) -> Iterator[str]:
    """A fresh persistent copy of ``source`` (a streaming client needs one), dropped after."""
    with connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_copy_logical_replication_slot(%s, %s, false)", (source, name))
    try:
        yield name
    finally:
        with connect(dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE slot_name = %s",
                (name,),
            )


def slot_positions(dsn: str) -> dict[str, tuple[str, str]]:
    with connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT slot_name, restart_lsn::text, confirmed_flush_lsn::text"
            " FROM pg_replication_slots WHERE slot_name LIKE 'bench\\_%' ORDER BY 1"
        ).fetchall()
    return {name: (restart, flush) for name, restart, flush in rows}


def open_accounts(conn: Connection, plugins: list[str], accounts: int) -> None:
    """The bank's ``accounts``, the ``FOR ALL TABLES`` publication and a ``bench_<plugin>`` slot
    per plugin (pgoutput's always), made before the workload's first commit."""
    conn.execute(
        "INSERT INTO accounts (id, owner) SELECT g, 'owner ' || g FROM generate_series(1, %s) g",
        (accounts,),
    )
    conn.execute(f"CREATE PUBLICATION {PUBLICATION} FOR ALL TABLES")
    for plugin in sorted({*plugins, "pgoutput"}):
        conn.execute(
            "SELECT pg_create_logical_replication_slot(%s, %s)", (f"bench_{plugin}", plugin)
        )


def build_workload(
    cluster: Cluster, run: Run, plugins: list[str], accounts: int, sub: Cluster | None
) -> dict[str, str]:
    """The bank, the slots, the ledger workload, ``sub``'s subscription, the DROP: the LSNs."""
    dsn = cluster.dsn()
    with connect(dsn, autocommit=True) as conn:
        for name in ("bench", "rebuild", "floor"):
            conn.execute(f"CREATE DATABASE {name}")
    bench = cluster.dsn("bench")
    with connect(bench, autocommit=True) as conn:
        conn.execute(TABLES_SQL)
        conn.execute(WORKLOAD_SQL)
        open_accounts(conn, plugins, accounts)
        (before,) = one(conn, "SELECT pg_current_wal_insert_lsn()")
        t0 = time.monotonic()
        done = 0
        while done < run.changes:
            n = min(50_000, run.changes - done)
            conn.execute("CALL bench_ledger(%s, %s, %s, %s)", (done + 1, n, accounts, PER_COMMIT))
            done += n
        workload = time.monotonic() - t0
        # The truth: unlogged, so it is not in the stream (nor in the publication's).
        conn.execute("CREATE UNLOGGED TABLE final AS SELECT * FROM transactions")
        if sub is not None:
            prepare_native(sub, cluster.dsn("bench"), accounts)
        (stop,) = one(conn, "SELECT pg_current_wal_insert_lsn()::text")
        conn.execute("DROP TABLE transactions")
        (end,) = one(conn, "SELECT pg_current_wal_insert_lsn()::text")
        (wal,) = one(conn, "SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)::bigint", (end, before))
        (rows,) = one(conn, "SELECT count(*) FROM final")
    run.workload = {
        "transactions": run.changes,
        "inserts": run.changes,
        "balance_updates": run.changes,
        "per_commit": PER_COMMIT,
        "accounts": accounts,
        "rows": rows,
        "wal_mib": round(wal / 2**20, 1),
        "build_seconds": round(workload, 1),
        "stop_lsn": stop,
        "end_lsn": end,
    }
    return {"stop": stop, "end": end}


def _recvlogical(cluster: Cluster, slot: str, plugin: str, end: str, out: str) -> list[str]:
    binary = str(cluster.installation.bindir / "pg_recvlogical")
    args = [binary, "-d", cluster.dsn("bench"), "-S", slot, "--start", "--no-loop"]
    args += ["-E", end, "-F", "0", "-f", out]
    if plugin == "wal2json":
        # The floor decodes with walrecover's options; the skeleton asks for the least.
        options = server_options(["public.transactions"])
        if out != "/dev/null":
            options = [("format-version", "2"), ("add-tables", "public.transactions")]
    else:
        options = [("proto_version", "1"), ("publication_names", PUBLICATION)]
    for name, value in options:
        args += ["-o", f"{name}={value}"]
    return args


# -- the steps ---------------------------------------------------------------------------------


def measure_decode(cluster: Cluster, plugin: str, lsns: dict[str, str]) -> Measure:
    with slot_copy(cluster.dsn("bench"), f"bench_{plugin}", "m_decode") as slot:
        clock, t0 = ServerClock(cluster).start(), time.monotonic()
        child = run_child(_recvlogical(cluster, slot, plugin, lsns["end"], "/dev/null"))
        wall = time.monotonic() - t0
        server = clock.stop()
    return Measure.of_child("decode", plugin, wall, child, server, note="to /dev/null")


def measure_load(cluster: Cluster) -> Measure:
    path = cluster.data / "bench_final.copy"
    with connect(cluster.dsn("bench"), autocommit=True) as conn:
        conn.execute(f"COPY final TO '{path}'")
    with connect(cluster.dsn("floor"), autocommit=True) as conn:
        conn.execute(TARGET_SQL.format(name="loaded"))
        clock, t0 = ServerClock(cluster).start(), time.monotonic()
        conn.execute(f"COPY loaded FROM '{path}'")
        wall = time.monotonic() - t0
        server = clock.stop()
        (rows,) = one(conn, "SELECT count(*) FROM loaded")
        conn.execute("DROP TABLE loaded")
    path.unlink()
    return Measure("load", "-", wall, None, server, None, rows, note="server-side COPY FROM")


def measure_skeleton(cluster: Cluster, plugin: str, lsns: dict[str, str]) -> Measure:
    table = f"skeleton_{plugin}"
    with connect(cluster.dsn("rebuild"), autocommit=True) as conn:
        conn.execute(TARGET_SQL.format(name=table))
    with slot_copy(cluster.dsn("bench"), f"bench_{plugin}", "m_skeleton") as slot:
        clock, t0 = ServerClock(cluster).start(), time.monotonic()
        with tempfile.TemporaryFile() as result:
            reader = subprocess.Popen(
                _recvlogical(cluster, slot, plugin, lsns["end"], "-"), stdout=subprocess.PIPE
            )
            parser = [sys.executable, str(HERE / "skeleton.py"), plugin, cluster.dsn("rebuild")]
            sink = subprocess.Popen(
                [*parser, "public.transactions", f"public.{table}"],
                stdin=reader.stdout,
                stdout=result,
            )
            assert reader.stdout is not None
            reader.stdout.close()
            with PeakRss([reader.pid, sink.pid]) as peak:
                first, reader_cpu = _wait(reader)
                second, sink_cpu = _wait(sink)
            wall = time.monotonic() - t0
            server = clock.stop()
            result.seek(0)
            out = result.read()
    if first != 0 or second != 0:
        raise SystemExit(f"bench: the {plugin} skeleton failed ({first}, {second})")
    rows = json.loads(out)["rows"]
    with connect(cluster.dsn("rebuild"), autocommit=True) as conn:
        conn.execute(f"DROP TABLE {table}")
    parser_name = "orjson" if _has("orjson") else "json"
    return Measure(
        "skeleton",
        plugin,
        wall,
        reader_cpu + sink_cpu,
        server,
        # Both run the whole time: each one's peak, summed, is near what they held together.
        peak.mib(reader.pid) + peak.mib(sink.pid),
        rows,
        note=f"pg_recvlogical piped to {parser_name if plugin == 'wal2json' else 'binary'} + COPY",
        rss_summed_mib=peak.summed_mib(reader.pid) + peak.summed_mib(sink.pid),
    )


def prepare_native(sub: Cluster, publisher: str, accounts: int) -> None:
    """The subscriber's tables and a subscription, disabled and slotless, made before the DROP
    (a subscription learns its tables from the publication when it is created; one made after
    the DROP would not apply ``transactions``)."""
    with connect(sub.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE bench")
    with connect(sub.dsn("bench"), autocommit=True) as conn:
        conn.execute(TABLES_SQL)
        conn.execute(
            "INSERT INTO accounts (id, owner)"
            " SELECT g, 'owner ' || g FROM generate_series(1, %s) g",
            (accounts,),
        )
        conn.execute(
            f"CREATE SUBSCRIPTION bench_sub CONNECTION '{publisher}' PUBLICATION {PUBLICATION}"
            " WITH (copy_data = false, create_slot = false, enabled = false, slot_name = NONE)"
        )


def measure_native(cluster: Cluster, sub: Cluster, lsns: dict[str, str]) -> Measure:
    """The subscription applies the backlog from a copy of the pgoutput slot, timed until it has
    confirmed the last commit before the DROP."""
    publisher = cluster.dsn("bench")
    with (
        slot_copy(publisher, "bench_pgoutput", "m_native") as slot,
        connect(sub.dsn("bench"), autocommit=True) as conn,
        connect(publisher, autocommit=True) as pub,
    ):
        conn.execute(f"ALTER SUBSCRIPTION bench_sub SET (slot_name = '{slot}')")
        clock = ServerClock(cluster, sub).start()
        t0 = time.monotonic()
        conn.execute("ALTER SUBSCRIPTION bench_sub ENABLE")
        while True:
            (caught_up,) = one(
                pub,
                "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots"
                " WHERE slot_name = %s",
                (lsns["stop"], slot),
            )
            if caught_up:
                break
            time.sleep(0.05)
        wall = time.monotonic() - t0
        server = clock.stop()
        conn.execute("ALTER SUBSCRIPTION bench_sub DISABLE")
        (rows,) = one(conn, "SELECT count(*) FROM transactions")
        (balances,) = one(conn, "SELECT sum(balance)::text FROM accounts")
        (expected,) = one(pub, "SELECT sum(balance)::text FROM accounts")
        # The walsender lets go of the slot a moment after the apply worker stops.
        for _ in range(200):
            (active,) = one(
                pub, "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            )
            if not active:
                break
            time.sleep(0.05)
    if balances != expected:
        raise SystemExit(f"bench: native replication left balances {balances}, not {expected}")
    return Measure(
        "native", "pgoutput", wall, None, server, None, rows, note="both tables, 2 changes/txn"
    )


def measure_recover(
    cluster: Cluster, plugin: str, full: bool, workdir: Path, *, profile: Path | None = None
) -> Measure:
    into = f"public.rec_{plugin}_{'full' if full else 'bare'}{'_prof' if profile else ''}"
    args = [str(Path(sys.executable).parent / "walrecover"), "recover"]
    args += ["-d", cluster.dsn("bench"), "--target", cluster.dsn("rebuild")]
    args += ["--table", "public.transactions", "--into", into, "--json"]
    if plugin == "pgoutput":
        args += ["-o", f"publication_names={PUBLICATION}"]
    if full:
        args += ["--key", "account_id", "--amount", "amount", "--ledger-query", LEDGER_QUERY]
        audit = workdir / f"{into}.parquet"
        args += ["--audit", str(audit)]
    if profile is not None:
        args = _profiled(args, profile)
    with slot_copy(cluster.dsn("bench"), f"bench_{plugin}", "m_recover") as slot:
        args[args.index("--table") : args.index("--table")] = ["--slot", slot]
        clock, t0 = ServerClock(cluster).start(), time.monotonic()
        child = run_child(args)
        wall = time.monotonic() - t0
        server = clock.stop()
    lines = [line for line in child.out.decode().splitlines() if line.startswith("{")]
    result = json.loads(lines[-1])
    if full and not (result.get("reconciliation") or {}).get("matched"):
        raise SystemExit(f"bench: recover {plugin} did not reconcile: {result}")
    with connect(cluster.dsn("rebuild"), autocommit=True) as conn:
        conn.execute(f"DROP TABLE {into}")
    for leftover in workdir.glob(f"{into}.parquet*"):
        leftover.unlink()
    return Measure.of_child(
        "recover+" if full else "recover",
        plugin,
        wall,
        child,
        server,
        rows=result.get("rows"),
        note="--key/--amount/--ledger-query --audit" if full else "bare",
    )


# -- profiling ---------------------------------------------------------------------------------


def _profiled(args: list[str], out: Path) -> list[str]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if Path(spy).exists():
        # --idle: waits on the server count too, so shares are of wall time, not CPU time.
        record = [spy, "record", "--idle", "--format", "raw", "--rate", "100", "-o", str(out)]
        return [*record, "--", *args]
    code = "import sys; from walrecover.cli import main; sys.argv[0] = 'walrecover'; main()"
    return [sys.executable, "-m", "cProfile", "-o", str(out), "-c", code, *args[1:]]


#: Phases of a recovery, by the first of these functions found in a sample's stack.
PHASES = (
    ("start-up imports", "_find_and_load"),
    ("audit: close (final outcomes, hashes, manifest)", "AuditWriter.close"),
    ("audit: rows", "AuditWriter.write"),
    ("audit: rows", "AuditWriter.commit"),
    ("replay: apply to the target (COPY, SQL)", "Replayer._commit_batch"),
    ("decode: read the slot and parse", "decode_all"),
    ("reconcile", "reconcile"),
    ("replay: other", "Replayer.run"),
)


def summarize_collapsed(path: Path, top: int = 15) -> dict[str, Any]:
    """Where the time goes, from py-spy's collapsed stacks: the share of samples per phase of a
    recovery (:data:`PHASES`), spent in each function itself, and under each walrecover function
    (inclusive, start-up imports left out). The progress bar's monitor thread is left out."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    phases: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or "TMonitor.run" in stack:
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        names = {f.split(" (")[0] for f in frames}
        total += count
        own[frames[-1]] += count
        phase = next((name for name, function in PHASES if function in names), "other")
        phases[phase] += count
        if phase == "start-up imports":
            continue
        for frame in set(frames):
            if "(walrecover/" in frame and "(walrecover/cli.py)" not in frame:
                inclusive[frame] += count
    total = max(total, 1)
    return {
        "samples": total,
        "phases": [(f, round(100 * c / total, 1)) for f, c in phases.most_common()],
        "self": [(f, round(100 * c / total, 1)) for f, c in own.most_common(top)],
        "inclusive": [(f, round(100 * c / total, 1)) for f, c in inclusive.most_common(top)],
    }


def _frame(frame: str) -> str:
    # py-spy: "function (path/to/file.py:line)"; keep the function and the file's tail.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    parts = Path(file).parts
    tail = "/".join(parts[parts.index("walrecover") :]) if "walrecover" in parts else parts[-1:]
    return f"{name} ({tail if isinstance(tail, str) else '/'.join(tail)})"


def summarize_cprofile(path: Path, top: int = 15) -> dict[str, Any]:
    import pstats  # noqa: PLC0415

    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    rows = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    return {
        "seconds": round(total, 1),
        "self": [
            (f"{fn} ({Path(file).name}:{line})", round(100 * v[2] / total, 1))
            for (file, line, fn), v in rows
        ],
    }


# -- the report --------------------------------------------------------------------------------


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def machine(cluster: Cluster) -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with connect(cluster.dsn(), autocommit=True) as conn:
        (version,) = one(conn, "SELECT version()")
        (fsync,) = one(conn, "SHOW fsync")
        (sync_commit,) = one(conn, "SHOW synchronous_commit")
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "postgres": version.split(" on ")[0],
        "fsync": fsync,
        "synchronous_commit": sync_commit,
        "python": platform.python_version(),
        "orjson": _has("orjson"),
        "load_before": os.getloadavg(),
    }


def ratios(measures: list[Measure]) -> None:
    """Wall time over the fastest skeleton's (the floor to approach) and native replication's."""
    skeletons = [m.wall for m in measures if m.step == "skeleton"]
    skeleton = min(skeletons) if skeletons else None
    native = next((m.wall for m in measures if m.step == "native"), None)
    for m in measures:
        if skeleton and m.step != "load":
            m.x_skeleton = round(m.wall / skeleton, 2)
        if native and m.step != "load":
            m.x_native = round(m.wall / native, 2)


def table(run: Run) -> str:
    def num(value: float | None, digits: int = 1) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    lines = [
        "| step | plugin | wall s | client CPU s | server CPU s | client peak RSS MiB "
        "| each process's peak, summed | x skeleton | x native | rows | what |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in run.measures:
        note = m.note.replace("|", r"\|")  # a bar inside a cell would end it
        lines.append(
            f"| {m.step} | {m.plugin} | {num(m.wall)} | {num(m.client_cpu)} | "
            f"{num(m.server_cpu)} | {num(m.rss_mib, 0)} | {num(m.rss_summed_mib, 0)} | "
            f"{num(m.x_skeleton, 2)} | "
            f"{num(m.x_native, 2)} | {'' if m.rows is None else f'{m.rows:,}'} | {note} |"
        )
    return "\n".join(lines)


def load_run(path: Path) -> Run:
    """A run saved with ``--save``, its ratios worked out again."""
    saved = json.loads(path.read_text())
    measures = [
        Measure(**{k: v for k, v in m.items() if k not in ("x_skeleton", "x_native")})
        for m in saved.pop("measures")
    ]
    run = Run(**saved)
    run.measures = measures
    ratios(run.measures)
    return run


def report(run: Run) -> str:
    """The run as text: the machine, the workload, the table, the profiles."""
    m = run.machine
    w = run.workload
    lines = [
        f"{m['nproc']} x {m['cpu']}, {m['postgres']}, fsync {m['fsync']}, "
        f"load {m['load_before'][0]:.1f} -> {m.get('load_after', [0.0])[0]:.1f}",
        f"workload: {w['transactions']:,} ledger transactions ({w['inserts']:,} inserts + "
        f"{w['balance_updates']:,} balance updates, {w['per_commit']} a commit), "
        f"{w['wal_mib']} MiB of WAL, built in {w['build_seconds']} s",
        table(run),
    ]
    for plugin, summary in run.profiles.items():
        lines.append(f"\nrecover+ {plugin} under py-spy: phases (% of samples)")
        lines += [f"  {share:5.1f}%  {name}" for name, share in summary.get("phases", [])]
        lines.append(f"recover+ {plugin}: top functions by own time")
        lines += [f"  {share:5.1f}%  {name}" for name, share in summary["self"]]
        if "inclusive" in summary:
            lines.append(f"recover+ {plugin}: under each walrecover function")
            lines += [f"  {share:5.1f}%  {name}" for name, share in summary["inclusive"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0912, PLR0915 (the steps, in order)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=100_000, help="ledger transactions")
    parser.add_argument("--plugins", default="wal2json,pgoutput")
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--fsync", choices=("on", "off"), default="on")
    parser.add_argument("--only", default=",".join(STEPS), help="steps to run, comma-separated")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="also profile recover+")
    parser.add_argument("--json", action="store_true", help="print the run as JSON")
    parser.add_argument("--save", type=Path, metavar="FILE", help="also write the JSON here")
    parser.add_argument(
        "--show", type=Path, metavar="FILE", help="print a --save'd run as the table, and stop"
    )
    args = parser.parse_args(argv)
    plugins = [p for p in args.plugins.split(",") if p]
    steps = [s for s in args.only.split(",") if s]
    unknown = [p for p in plugins if p not in PLUGINS] + [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown plugin or step: {', '.join(unknown)}")
    if args.show is not None:
        print(report(load_run(args.show)))
        return 0
    run = Run(changes=args.changes, plugins=plugins)
    settings = {"fsync": args.fsync}
    with (
        Cluster(settings=settings, require_plugins=tuple(plugins)) as cluster,
        Cluster(settings=settings) if "native" in steps else contextlib.nullcontext() as sub,
        tempfile.TemporaryDirectory(prefix="walrecover-bench-") as tmp,
    ):
        run.machine = machine(cluster)
        _log(f"building the workload: {args.changes:,} ledger transactions")
        lsns = build_workload(cluster, run, plugins, args.accounts, sub)
        before = slot_positions(cluster.dsn("bench"))

        def step(name: str, plugin: str | None = None) -> bool:
            wanted = name in steps
            if wanted:
                _log(f"{name} {plugin or ''}")
            return wanted

        for plugin in plugins:
            if step("decode", plugin):
                run.measures.append(measure_decode(cluster, plugin, lsns))
        if step("load"):
            run.measures.append(measure_load(cluster))
        for plugin in plugins:
            if step("skeleton", plugin):
                run.measures.append(measure_skeleton(cluster, plugin, lsns))
        if sub is not None and step("native"):
            run.measures.append(measure_native(cluster, sub, lsns))
        for full in (False, True):
            for plugin in plugins:
                if step("recover+" if full else "recover", plugin):
                    run.measures.append(measure_recover(cluster, plugin, full, Path(tmp)))
        if args.save is not None:  # the measures are kept even if profiling fails
            args.save.write_text(json.dumps(asdict(run), indent=2))
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            for plugin in plugins:
                _log(f"profiling recover+ {plugin}")
                out = args.profile / f"recover-{plugin}.prof"
                measure_recover(cluster, plugin, True, Path(tmp), profile=out)
                spy = (
                    out.read_text(errors="replace")[:1] != "\x00"
                    and " (" in out.read_text(errors="replace")[:2000]
                )
                run.profiles[plugin] = summarize_collapsed(out) if spy else summarize_cprofile(out)
        after = slot_positions(cluster.dsn("bench"))
        if before != after:
            raise SystemExit(f"bench: a workload slot moved: {before} -> {after}")
        run.machine["load_after"] = os.getloadavg()
    ratios(run.measures)
    if args.save is not None:
        args.save.write_text(json.dumps(asdict(run), indent=2))
    if args.json:
        print(json.dumps(asdict(run), indent=2))
    else:
        print(report(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
