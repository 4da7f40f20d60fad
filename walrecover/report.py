"""What a person reads: each result of walrecover as text, in one place.

The command line prints these; a notebook or a script can too (``Reconciliation.report()`` and
``Verification.report()`` are these functions). The results themselves carry facts and
``to_dict()`` for JSON; how they read to a tired engineer is decided here, and only here.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .stream.lsn import Lsn

if TYPE_CHECKING:
    from .audit.verify import Verification
    from .drill.rehearsal import RehearsalResult
    from .ledger.result import Reconciliation
    from .rebuild.plan import Plan
    from .rebuild.recover import AuditSummary, RecoveryResult
    from .rebuild.swap import SwapResult

#: The money columns of a reconciliation's differences, shown right-aligned and exact.
_MONEY = ("recovered", "opening", "ledger", "delta")


def recovery_text(result: RecoveryResult) -> str:
    """A recovery's result: what was rebuilt from where, the LSNs, the reconciliation, the audit."""
    if result.capture:
        source = f"capture {result.capture}"
    else:
        source = f"slot {result.slot}" if result.slot else "a capture"
    kind = "end LSNs of the commits" if result.lsn_kind == "end" else "commit LSNs"
    if result.first_lsn is None and result.last_lsn is None and result.transactions:
        lsns = f"the {'capture' if result.capture else 'slot'} carries no LSNs"
    else:
        lsns = f"{kind} {result.first_lsn or '-'} .. {result.last_lsn or '-'}"
    plugin = f" ({result.plugin})" if result.plugin else ""
    lines = [
        f"Already complete: {result.into} was rebuilt from {source}{plugin} by an earlier run "
        "of this command; nothing was read or written. Its result:"
        if result.already_complete
        else f"Rebuilt {result.table} as {result.into} from {source}{plugin}.",
        f"  {result.transactions} transactions, {result.changes} row changes applied, "
        f"{result.rows} rows in {result.into}.",
        f"  {lsns}; stop point: {result.stop}.",
    ]
    if result.stop_event is not None:
        lines.append(f"  stopped before the {result.stop_event.describe()}.")
    if result.stopped_before:
        lines.append(f"  stopped before {_transaction(*result.stopped_before, result.lsn_kind)}.")
    if result.resumed_from:
        one = "end LSN" if result.lsn_kind == "end" else "commit LSN"
        lines.append(f"  resumed after {one} {result.resumed_from}.")
    if result.baseline is not None:
        lines.extend(_baseline(result.baseline))
    if result.no_row:
        lines.append(
            f"  {result.no_row} updates/deletes found no row (rows older than the slot): "
            "see the audit's outcome column."
        )
    if result.reconciliation is not None:
        lines.extend(_reconciled(result.reconciliation))
    if result.audit is not None:
        lines.extend(_audit(result.audit))
    seconds = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
    lines.append(f"  time: {seconds}.")
    return "\n".join(lines)


def _baseline(base: dict[str, Any]) -> list[str]:
    """The baseline a recovery started from, and the recovery point that held it."""
    point = f"LSN {base['lsn']}" if base.get("lsn") else "an unknown point"
    lines = [
        f"  started from the baseline {base['source']} ({base['rows']} rows at {point}, "
        f"replayed {base['mode']}; rows sha256 {base['rows_sha256']})."
    ]
    made = base.get("recovery_point")
    if made:
        lines.append(
            f"  recovery point: {made['slot']} of {made['directory']} (taken "
            f"{made['snapshot_time']})."
        )
    return lines


def _audit(audit: AuditSummary) -> list[str]:
    """A recovery's audit: its rows and file, and the chain head to record."""
    lines = [f"  audit: {audit.rows} rows in {audit.path}."]
    if audit.chain_head:
        lines.append(
            f"  audit chain head {audit.chain_head} (record it; check with "
            "walrecover audit verify --chain-head); manifest "
            f"{audit.manifest}."
        )
    return lines


def _reconciled(rec: Reconciliation) -> list[str]:
    """A recovery's reconciliation in a few lines: matched, or the first differences."""
    from .ledger.totals import plain  # noqa: PLC0415 - a recovery's text needs no pyarrow otherwise

    if rec.matched:
        return [f"  reconciled: all {rec.keys} keys match the ledger exactly."]
    lines = [
        f"  NOT reconciled: {rec.mismatched} keys differ, {rec.missing_in_recovered} "
        f"missing in the rebuilt table, {rec.missing_in_ledger} missing in the ledger; "
        f"total difference {plain(rec.total_difference)}."
    ]
    for row in rec.differences.head(10).to_dict("records"):
        lines.append(
            f"    {row['key']}: recovered {plain(row['recovered'])}, ledger "
            f"{plain(row['ledger'])}, delta {plain(row['delta'])} ({row['status']})"
        )
    return lines


def _transaction(xid: int | None, lsn: Lsn | None, lsn_kind: str) -> str:
    """A transaction as people can find it: its xid and the LSN the stream gives, if any."""
    kind = "end LSN" if lsn_kind == "end" else "commit LSN"
    if xid is None:
        return f"the transaction at {kind} {lsn}" if lsn is not None else "a transaction"
    return f"transaction {xid}" + (f" ({kind} {lsn})" if lsn is not None else "")


def plan_text(plan: Plan) -> str:
    """A plan (``check``, ``recover --dry-run``): what would be read and created, each check."""
    size = plan.bytes_to_read
    mb = "unknown" if size is None else f"{size} bytes" if size < 10**6 else f"{size / 1e6:.1f} MB"
    lines = [
        f"Plan: rebuild {plan.table} as {plan.into} in {plan.target}"
        f" ({'all checks passed' if plan.ok else f'{len(plan.failures)} checks failed'}).",
        f"  source: {plan.source}" + (f" ({plan.plugin})" if plan.plugin and plan.slot else ""),
        f"  LSN range: {plan.start_lsn or '-'} .. {plan.end_lsn or '-'}; stop point: "
        f"{plan.stop}; to read: {mb}.",
    ]
    if plan.estimated_changes is not None:
        seconds = plan.estimated_seconds or 0.0
        lines.append(
            f"  estimated: about {plan.estimated_changes} row changes of {plan.table}, about "
            f"{_duration(seconds)} ({plan.estimate})."
        )
    lines.append(f"  target table: {plan.target_state}.")
    if plan.creates:
        lines.append(f"  would create: {'; '.join(plan.creates)}.")
    else:
        lines.append("  would create: nothing.")
    lines.append(
        "  publications: "
        + (", ".join(plan.publications) if plan.publications else "none would publish it")
        + "."
    )
    lines.append("  checks:")
    for check in plan.checks:
        lines.append(f"    [{'ok' if check.ok else 'FAILED'}] {check.name}: {check.detail}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    """A duration as people say it: seconds, minutes or hours."""
    if seconds < 90:
        return f"{max(seconds, 0.1):.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def rehearsal_text(result: RehearsalResult) -> str:
    """A rehearsal: the workload, the DROP, whether the recovery matched, the times."""
    seconds = result.seconds
    lines = [
        f"Rehearsal: {result.transactions} ledger transactions over {result.accounts} accounts, "
        f"slot plugin {result.plugin}.",
        f"  DROP TABLE transactions at LSN {result.stop_lsn}; recovered {result.rows} rows "
        f"from {result.changes} row changes.",
        f"  identical to the dropped table: {'yes' if result.identical else 'NO'}; "
        f"reconciled with accounts.balance: {'yes' if result.reconciled else 'NO'}; "
        f"audit rows: {result.audit_rows}.",
        f"  time: {_phases(result)}.",
    ]
    if result.baseline is not None:
        lines.insert(
            2,
            f"  recovery point (walrecover protect, {seconds.get('baseline_export', 0):.1f}s): "
            f"{result.baseline.get('exported_rows')} rows at the slot's consistent point "
            f"{result.baseline.get('slot_point')}, before the other half of the workload.",
        )
        if result.baseline.get("found"):
            lines.insert(3, f"  inspect found the {result.baseline['found']}; recovered up to it.")
        lines.append(f"  RTO (table gone -> back and reconciled): {seconds['rto']:.1f}s.")
    if result.kept_dsn:
        lines.append(f'  the cluster is still running: psql "{result.kept_dsn}"')
    if result.audit_path:
        lines.append(f"  audit: {result.audit_path}")
    return "\n".join(lines)


#: The rehearsal's phases as its text names them, in order.
_PHASES = (
    ("cluster_start", "cluster start"),
    ("setup", "setup"),
    ("workload", "workload"),
    ("baseline_export", "recovery point"),
    ("drop", "DROP"),
    ("inspect", "find the DROP"),
    ("recover", "recover"),
    ("verify", "verify"),
    ("teardown", "teardown"),
)


def _phases(result: RehearsalResult) -> str:
    """Seconds per phase, the recovery's own split in brackets, and the total."""
    seconds, parts = result.seconds, []
    for key, name in _PHASES:
        if key not in seconds:
            continue
        part = f"{name} {seconds[key]:.1f}s"
        inner = result.recovery.seconds
        if key == "recover" and "replay" in inner and "reconcile" in inner:
            part += (
                f" (replay {inner['replay']:.1f}s, audit and reconcile {inner['reconcile']:.1f}s)"
            )
        parts.append(part)
    return f"{', '.join(parts)}; total {seconds['total']:.1f}s"


def swap_text(result: SwapResult) -> str:
    """A swap: what was put in place, with what constraints, indexes, sequences, grants."""
    lines = [
        f"Swapped {result.source} into place as {result.table} ({result.rows} rows), "
        "in one transaction."
    ]
    if result.moved_existing_to:
        lines.append(f"  the table that had the name is now {result.moved_existing_to}")
    if result.constraints:
        lines.append(f"  constraints (validated): {', '.join(result.constraints)}")
    if result.indexes:
        lines.append(f"  indexes: {', '.join(result.indexes)}")
    for name, following in result.sequences:
        lines.append(f"  sequence {name}: the next value is {following}")
    lines.append(
        f"  grants: {result.grants}; owner: {result.owner or 'unchanged'}; "
        f"comments: {result.comments}; analyzed."
    )
    for item in result.ignored:
        if not item.about_table:
            lines.append(f"  ignored: {item.statement} ({item.reason})")
    for note in result.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def reconciliation_text(rec: Reconciliation, limit: int = 20) -> str:
    """The result for a person: counts, totals, the first differences and why."""
    import pandas as pd  # noqa: PLC0415 - loaded only with a reconciliation

    from .ledger.totals import plain, show_key  # noqa: PLC0415

    what = ", ".join(rec.key_columns) + (f" per {rec.period}" if rec.period else "")
    lines = [f"Reconciled the {rec.source} against the ledger, per {what}."]
    if rec.matched:
        tolerance = f" within {plain(rec.tolerance)}" if rec.tolerance else " exactly"
        lines.append(f"  all {rec.keys} keys match{tolerance}.")
    else:
        lines.append(
            f"  {rec.keys} keys: {rec.matched_keys} match, {rec.mismatched} differ, "
            f"{rec.missing_in_recovered} missing in the recovered side, "
            f"{rec.missing_in_ledger} missing in the ledger"
            + (f" (tolerance {plain(rec.tolerance)})" if rec.tolerance else "")
            + "."
        )
    opening = f" + opening {plain(rec.opening_total)}" if rec.opening_total is not None else ""
    lines.append(
        f"  recovered {plain(rec.recovered_total)}{opening}, ledger "
        f"{plain(rec.ledger_total)}; total difference {plain(rec.total_difference)}."
    )
    differences = rec.differences
    if len(differences):
        header = ["key", *(["period"] if rec.period else []), "rows", "recovered"]
        header += [*(["opening"] if rec.opening_total is not None else []), "ledger"]
        header += ["delta", "status"]
        table = [header]
        for row in differences.head(limit).to_dict("records"):
            table.append([plain(Decimal(row[c])) if c in _MONEY else str(row[c]) for c in header])
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        for row_text in table:
            lines.append(
                "    "
                + "  ".join(
                    cell.rjust(width) if i and header[i] in (*_MONEY, "rows") else cell.ljust(width)
                    for i, (cell, width) in enumerate(zip(row_text, widths, strict=True))
                ).rstrip()
            )
        if len(differences) > limit:
            lines.append(f"    ... {len(differences) - limit} more (--out writes them all)")
    for explanation in list(rec.explanations.values())[:limit]:
        lines.append(f"  why {show_key(explanation.key)}: {explanation.text()}")
        # The rows that explain a difference first: those not counted, then the counted.
        rows = explanation.rows
        ordered = pd.concat([rows[~rows["counted"]], rows[rows["counted"]]])
        for row in ordered.head(8).to_dict("records"):
            amount = row.get("amount")
            shown = "-" if amount is None or amount is pd.NA else plain(Decimal(amount))
            flag = "counted" if row["counted"] else "not counted"
            lines.append(
                f"      seq {row['seq']} {row['op']} xid {row['xid']} at {row['commit_lsn']}"
                f": {shown}, {row['outcome']}: {row['meaning']} ({flag})"
            )
        if len(explanation.rows) > 8 or explanation.truncated:
            lines.append("      ... (--json lists more rows)")
    return "\n".join(lines)


def verification_text(result: Verification) -> str:
    """The result for a person: what was checked, and OK or the problems."""
    lines = [
        f"Audit {result.path}: {result.rows} rows in {result.files} file(s); chain head "
        f"{result.chain_head}.",
        f"  checked: {', '.join(result.checked)}.",
    ]
    if result.ok:
        lines.append("  OK: no row was edited, deleted, added or moved.")
        return "\n".join(lines)
    first = f"; first bad row: {result.first_bad_row}" if result.first_bad_row is not None else ""
    lines.append(f"  NOT OK: {result.bad_rows} bad row(s){first}.")
    lines.extend(f"    {problem}" for problem in result.problems)
    return "\n".join(lines)
