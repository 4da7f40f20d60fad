"""The real case, rehearsed: a table older than its slot, rebuilt from a baseline plus the slot.

:func:`rehearse_baseline` fills the bank's ``transactions`` *before* the slot exists (half the
workload), then creates the slot over the replication protocol with an exported snapshot
(``CREATE_REPLICATION_SLOT ... (SNAPSHOT 'export')``, as logical replication's initial copy does)
and, in that snapshot, exports the table to Parquet with the slot's consistent point in its
``walrecover.lsn`` metadata: the baseline. The rest of the workload runs, the table is dropped,
and ``recover --baseline`` rebuilds it from the Parquet file plus the slot's changes after that
point, reconciles it, and is checked row by row against the real table. The RTO is measured from
"the table is gone" (the DROP) to "the table is back and reconciled" (recover's return).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from ..db import Connection, connect, one
from ..errors import AuditError, ClusterError
from ..rebuild.baseline import BaselineOptions
from ..rebuild.recover import LedgerCheck, recover
from ..stream.decoders import PLUGINS
from ..stream.lsn import Lsn
from ..stream.model import StopPoint, TableName
from ..stream.sources import ProgressCallback
from .cluster import Cluster
from .rehearsal import RECOVERED_DDL, SLOT, RehearsalResult, create_bank, run_workload

#: Rows per Parquet row group of the baseline.
_BATCH = 50_000


def export_at_slot(dsn: str, slot: str, plugin: str, table: str, path: Path) -> tuple[Lsn, int]:
    """Create ``slot`` with an exported snapshot and write ``table`` as it is in that snapshot
    to the Parquet file ``path`` (every column as PostgreSQL's text, exact), with the slot's
    consistent point as ``walrecover.lsn``: (that point, rows written)."""
    replication = connect(f"{dsn} replication=database", autocommit=True, role="rehearsal")
    try:
        created = replication.pgconn.exec_(
            sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL {} (SNAPSHOT 'export')")
            .format(sql.Identifier(slot), sql.Identifier(plugin))
            .as_bytes(replication)
        )
        if created.ntuples != 1:
            message = (created.error_message or b"").decode(errors="replace").strip()
            raise ClusterError(f"cannot create slot {slot} with a snapshot: {message}")
        point = Lsn.parse(bytes(created.get_value(0, 1) or b"").decode())
        snapshot = bytes(created.get_value(0, 2) or b"").decode()
        with connect(dsn, role="rehearsal") as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            rows = _write_parquet(conn, table, path, point)
            conn.rollback()
    finally:
        replication.close()
    return point, rows


def _write_parquet(conn: Connection, table: str, path: Path, point: Lsn) -> int:
    names = [
        str(r[0])
        for r in conn.execute(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = %s::regclass"
            " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (table,),
        ).fetchall()
    ]
    schema = pa.schema(
        [pa.field(name, pa.string()) for name in names],
        metadata={b"walrecover.lsn": str(point).encode()},
    )
    count = 0
    with (
        pq.ParquetWriter(path, schema) as writer,
        conn.cursor() as cur,
        cur.copy(sql.SQL("COPY {} TO STDOUT").format(sql.Identifier(table))) as copy,
    ):
        copy.set_types(["text"] * len(names))
        batch: list[tuple[object, ...]] = []
        for row in copy.rows():
            batch.append(row)
            if len(batch) >= _BATCH:
                writer.write_table(_table(batch, schema))
                count, batch = count + len(batch), []
        if batch:
            writer.write_table(_table(batch, schema))
            count += len(batch)
    return count


def _table(rows: list[tuple[object, ...]], schema: pa.Schema) -> pa.Table:
    columns = list(zip(*rows, strict=True))
    return pa.table([pa.array(column, pa.string()) for column in columns], schema=schema)


def rehearse_baseline(
    transactions: int = 5_000,
    accounts: int = 100,
    *,
    keep: bool = False,
    audit_path: str | Path | None = None,
    progress: ProgressCallback | None = None,
    plugin: str = "pgoutput",
) -> RehearsalResult:
    """The drill with half the workload before the slot: baseline + changes (see module)."""
    if transactions < 2 or accounts < 1:
        raise ClusterError("a baseline rehearsal needs two transactions and one account")
    if plugin not in PLUGINS:
        raise ClusterError(f"--plugin {plugin!r} is not one of {', '.join(PLUGINS)}")
    if audit_path is not None and (Path(audit_path).exists() or Path(audit_path).is_symlink()):
        raise AuditError(
            f"--audit {audit_path} already exists: give a new path (the rehearsal never "
            "replaces a file)",
            path=str(audit_path),
        )
    started = time.monotonic()
    cluster = Cluster(keep=keep, require_plugins=(plugin,))
    cluster.start()
    workdir = tempfile.TemporaryDirectory(prefix="walrecover-rehearsal-")
    try:
        dsn = cluster.dsn()
        keep_dir = cluster.directory if keep and cluster.directory else Path(workdir.name)
        baseline_path = keep_dir / "transactions-baseline.parquet"
        before = transactions // 2
        with connect(dsn, autocommit=True, role="rehearsal") as conn:
            create_bank(conn, accounts)
            if plugin == "pgoutput":
                conn.execute("CREATE PUBLICATION bank_pub FOR ALL TABLES")
            t0 = time.monotonic()
            run_workload(conn, before, accounts, progress=progress)
            workload = time.monotonic() - t0
            t0 = time.monotonic()
            point, baseline_rows = export_at_slot(dsn, SLOT, plugin, "transactions", baseline_path)
            exported = time.monotonic() - t0
            t0 = time.monotonic()
            run_workload(conn, transactions - before, accounts, progress=progress, first=before)
            workload += time.monotonic() - t0
            conn.execute("CREATE UNLOGGED TABLE rehearsal_truth AS SELECT * FROM transactions")
            (stop_text,) = one(conn, "SELECT pg_current_wal_insert_lsn()::text")
            conn.execute("DROP TABLE transactions")
            gone = time.monotonic()
            for shard in range(5):  # the application keeps running
                conn.execute("UPDATE accounts SET last_seen = now() WHERE id %% 5 = %s", (shard,))
        stop_lsn = Lsn.parse(stop_text)
        path = Path(audit_path) if audit_path else keep_dir / "transactions.parquet"
        t0 = time.monotonic()
        result = recover(
            dsn,
            SLOT,
            TableName("public", "transactions"),
            stop=StopPoint(lsn=stop_lsn),
            ledger=LedgerCheck("account_id", "amount", "SELECT id, balance FROM accounts"),
            audit_path=path,
            progress=progress,
            options={"publication_names": "bank_pub"} if plugin == "pgoutput" else None,
            ddl=RECOVERED_DDL if plugin == "test_decoding" else None,
            baseline=BaselineOptions(file=baseline_path),
        )
        back = time.monotonic()
        with connect(dsn, role="rehearsal") as conn:
            identical = bool(
                one(
                    conn,
                    "SELECT (SELECT count(*) FROM (SELECT * FROM rehearsal_truth EXCEPT ALL"
                    " SELECT * FROM transactions_recovered) a) = 0"
                    " AND (SELECT count(*) FROM (SELECT * FROM transactions_recovered EXCEPT ALL"
                    " SELECT * FROM rehearsal_truth) b) = 0",
                )[0]
            )
        verify = time.monotonic() - back
        reconciled = result.reconciliation is not None and result.reconciliation.matched
        return RehearsalResult(
            transactions=transactions,
            accounts=accounts,
            changes=result.changes,
            rows=result.rows,
            identical=identical and result.exact,
            reconciled=reconciled,
            audit_rows=result.audit.rows if result.audit else 0,
            plugin=result.plugin,
            stop_lsn=str(stop_lsn),
            seconds={
                "workload": workload,
                "baseline_export": exported,
                "recover": back - t0,
                "rto": back - gone,
                "verify": verify,
                "total": time.monotonic() - started,
            },
            recovery=result,
            kept_dsn=dsn if keep else None,
            audit_path=str(path) if audit_path or keep else None,
            baseline={
                **(result.baseline or {}),
                "slot_point": str(point),
                "exported_rows": baseline_rows,
            },
        )
    finally:
        if not keep:
            cluster.stop()
        else:
            cluster.detach()
        with contextlib.suppress(OSError):
            workdir.cleanup()
