"""Reconcile recovered totals against the ledger, exactly, with memory bounded by the keys.

The recovered side is either the rebuilt table, whose per-key sums PostgreSQL computes
(``GROUP BY``, streamed back through a server-side cursor), or an audit file or dataset, whose
live rows (outcome ``applied``, op insert or update: see :mod:`walrecover.audit.outcomes`) Arrow
sums batch by batch. Either way only per-key totals reach Python, never the rows, so a
10-million-row table reconciles in the memory of its keys. The ledger is a SQL query on any
database, a CSV or Parquet file, or a pandas DataFrame, returning ``key..., [period], total``;
opening balances come the same ways (``key..., total``) and are added to the recovered side.

Money is exact end to end: sums are read as text and compared as :class:`~decimal.Decimal`;
float totals are refused; the result's DataFrames hold Arrow ``decimal128`` columns (``Decimal``
values). Keys compare as text (PostgreSQL's ``::text`` of the key columns), so a ledger whose ids
are ``bigint`` matches a table whose ids are ``integer``. A key missing on one side counts as a
total of 0 there, and a key matches when ``|recovered + opening - ledger| <= tolerance``
(default 0).

When an audit is at hand, each differing key is explained: the audit rows of that key, with what
replay did with each (applied, superseded, removed, no row, after the stop point) and whether
it counts in the recovered total.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ..audit import outcomes
from ..audit.pgarrow import typed_column
from ..audit.writer import audit_dataset, read_metadata
from ..errors import AuditError, LedgerError
from ..stream.model import TableName
from .totals import (
    PERIOD_FORMAT,
    Key,
    LedgerFile,
    LedgerQuery,
    LedgerSource,
    Period,
    RecoveredAudit,
    RecoveredTable,
    audit_totals,
    connection,
    key_names,
    key_text,
    ledger_source,
    ledger_totals,
    period_label,
    plain,
    show_key,
    table_totals,
    to_decimal,
)

#: The library's reconciliation API; the sources and totals live in :mod:`walrecover.ledger.totals`.
__all__ = [
    "MATCHED",
    "MISMATCHED",
    "MISSING_IN_LEDGER",
    "MISSING_IN_RECOVERED",
    "STATUSES",
    "Explanation",
    "LedgerFile",
    "LedgerQuery",
    "LedgerSource",
    "Period",
    "Reconciliation",
    "RecoveredAudit",
    "RecoveredTable",
    "audit_totals",
    "compare_totals",
    "explain_keys",
    "ledger_totals",
    "plain",
    "reconcile",
    "reconcile_table",
    "table_totals",
]

#: Status of one key in a reconciliation.
MATCHED = "matched"
MISMATCHED = "mismatched"
MISSING_IN_RECOVERED = "missing_in_recovered"
MISSING_IN_LEDGER = "missing_in_ledger"
STATUSES = (MATCHED, MISMATCHED, MISSING_IN_RECOVERED, MISSING_IN_LEDGER)
_MONEY = ("recovered", "opening", "ledger", "delta")


def _sort_key(key: Key) -> tuple[tuple[int, int, str], ...]:
    """Keys in a person's order: numbers numerically, then text, NULL last."""
    parts = []
    for value in key:
        if value is None:
            parts.append((2, 0, ""))
        elif value.lstrip("-").isdigit() and len(value) < 19:
            parts.append((0, int(value), ""))
        else:
            parts.append((1, 0, value))
    return tuple(parts)


# -- where the totals come from ------------------------------------------------------------------


# -- the result ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Explanation:
    """Why one key differs: its audit rows and what replay did with each."""

    key: Key
    #: The key's audit rows in seq order (at most ``explain_rows``): seq, commit time, LSN,
    #: xid, op, outcome, the row's identity, amount (after, before), and ``counted``: whether
    #: that row version is in the recovered total.
    rows: pd.DataFrame
    #: Per outcome and op (one group for the counted rows): how many rows and the sum of
    #: their amounts, over all of them.
    by_outcome: pd.DataFrame
    #: True if the key had more rows than ``rows`` shows.
    truncated: bool

    def text(self) -> str:
        """One line: ``3 counted (30.00); 1 superseded insert (4.00); 1 after_stop insert
        (5.00); 1 applied delete``: rows per outcome and op, with the sum of their amounts."""
        if self.by_outcome.empty:
            return "no audit rows for this key"
        parts = []
        for row in self.by_outcome.to_dict("records"):
            label = "counted" if row["counted"] else f"{row['outcome']} {row['op']}"
            amount = Decimal(row["amount"])
            shown = "" if row["op"] in ("delete", "truncate") else f" ({plain(amount)})"
            parts.append(f"{row['rows']} {label}{shown}")
        return "; ".join(parts)

    def to_dict(self, limit: int = 50) -> dict[str, Any]:
        return {
            "key": list(self.key),
            "summary": self.text(),
            "rows": [_jsonable(r) for r in self.rows.head(limit).to_dict("records")],
            "truncated": self.truncated or len(self.rows) > limit,
        }


def _jsonable(row: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in row.items():
        shown: Any = value
        if isinstance(value, Decimal):
            shown = plain(value)
        elif value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            shown = None
        elif hasattr(value, "isoformat"):
            shown = value.isoformat()
        out[str(name)] = shown
    return out


@dataclass(frozen=True)
class Reconciliation:
    """Per-key totals of the recovered side compared with the ledger.

    ``comparison`` has one row per key: ``key`` (a label), the key columns, ``period`` when
    there is one, ``rows`` (recovered rows), ``recovered``, ``opening`` (when given),
    ``ledger``, ``delta`` (recovered + opening - ledger) and ``status``.
    """

    #: True when every key matches (within the tolerance).
    matched: bool
    #: Keys compared (the union of both sides).
    keys: int
    matched_keys: int
    mismatched: int
    missing_in_recovered: int
    missing_in_ledger: int
    #: Sum of every key's delta.
    total_difference: Decimal
    tolerance: Decimal
    key_columns: tuple[str, ...]
    period: str | None
    recovered_total: Decimal
    ledger_total: Decimal
    opening_total: Decimal | None
    comparison: pd.DataFrame
    explanations: Mapping[Key, Explanation] = field(default_factory=dict)
    source: str = ""

    @property
    def differences(self) -> pd.DataFrame:
        """The keys that do not match."""
        return self.frame(MISMATCHED, MISSING_IN_RECOVERED, MISSING_IN_LEDGER)

    def frame(self, *statuses: str) -> pd.DataFrame:
        """The rows of ``comparison`` with one of ``statuses``."""
        if not statuses:
            return self.comparison
        mask = self.comparison["status"].isin(list(statuses))
        return self.comparison[mask].reset_index(drop=True)

    @property
    def matched_frame(self) -> pd.DataFrame:
        return self.frame(MATCHED)

    @property
    def mismatched_frame(self) -> pd.DataFrame:
        return self.frame(MISMATCHED)

    @property
    def missing_in_recovered_frame(self) -> pd.DataFrame:
        return self.frame(MISSING_IN_RECOVERED)

    @property
    def missing_in_ledger_frame(self) -> pd.DataFrame:
        return self.frame(MISSING_IN_LEDGER)

    def explain(self, *key: Any) -> Explanation:
        """The explanation of one differing key: ``rec.explain(7)``, ``rec.explain(1, "EUR")``."""
        wanted = tuple(key_text(k) for k in key)
        try:
            return self.explanations[wanted]
        except KeyError:
            raise KeyError(
                f"no explanation for key {wanted}: only differing keys are explained, and only "
                "when an audit was given"
            ) from None

    def summary(self) -> dict[str, Any]:
        """The counts and totals, JSON-ready (Decimals as strings, so nothing is rounded)."""
        return {
            "matched": self.matched,
            "source": self.source,
            "key_columns": list(self.key_columns),
            "period": self.period,
            "keys": self.keys,
            "matched_keys": self.matched_keys,
            "mismatched": self.mismatched,
            "missing_in_recovered": self.missing_in_recovered,
            "missing_in_ledger": self.missing_in_ledger,
            "tolerance": plain(self.tolerance),
            "recovered_total": plain(self.recovered_total),
            "opening_total": None if self.opening_total is None else plain(self.opening_total),
            "ledger_total": plain(self.ledger_total),
            "total_difference": plain(self.total_difference),
        }

    def to_dict(self, limit: int = 1000) -> dict[str, Any]:
        """The summary, the first ``limit`` differences and the explanations, JSON-ready."""
        differences = self.differences
        return {
            **self.summary(),
            "differences": [_jsonable(r) for r in differences.head(limit).to_dict("records")],
            "differences_truncated": len(differences) > limit,
            "explanations": [e.to_dict() for e in self.explanations.values()],
        }

    def report(self, limit: int = 20) -> str:
        """The result for a person: counts, totals, the first differences and why."""
        what = ", ".join(self.key_columns) + (f" per {self.period}" if self.period else "")
        lines = [f"Reconciled the {self.source} against the ledger, per {what}."]
        if self.matched:
            tolerance = f" within {plain(self.tolerance)}" if self.tolerance else " exactly"
            lines.append(f"  all {self.keys} keys match{tolerance}.")
        else:
            lines.append(
                f"  {self.keys} keys: {self.matched_keys} match, {self.mismatched} differ, "
                f"{self.missing_in_recovered} missing in the recovered side, "
                f"{self.missing_in_ledger} missing in the ledger"
                + (f" (tolerance {plain(self.tolerance)})" if self.tolerance else "")
                + "."
            )
        opening = (
            f" + opening {plain(self.opening_total)}" if self.opening_total is not None else ""
        )
        lines.append(
            f"  recovered {plain(self.recovered_total)}{opening}, ledger "
            f"{plain(self.ledger_total)}; total difference {plain(self.total_difference)}."
        )
        differences = self.differences
        if len(differences):
            header = ["key", *(["period"] if self.period else []), "rows", "recovered"]
            header += [*(["opening"] if self.opening_total is not None else []), "ledger"]
            header += ["delta", "status"]
            table = [header]
            for row in differences.head(limit).to_dict("records"):
                table.append(
                    [plain(Decimal(row[c])) if c in _MONEY else str(row[c]) for c in header]
                )
            widths = [max(len(r[i]) for r in table) for i in range(len(header))]
            for row_text in table:
                lines.append(
                    "    "
                    + "  ".join(
                        cell.rjust(width)
                        if i and header[i] in (*_MONEY, "rows")
                        else cell.ljust(width)
                        for i, (cell, width) in enumerate(zip(row_text, widths, strict=True))
                    ).rstrip()
                )
            if len(differences) > limit:
                lines.append(f"    ... {len(differences) - limit} more (--out writes them all)")
        for explanation in list(self.explanations.values())[:limit]:
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

    def write_differences(self, path: str | Path) -> Path:
        """Write the differences to ``path``: ``.csv`` (exact decimal text) or ``.parquet``.

        The key appears once, as its own column(s); the comparison's display column ``key``
        (the key as one text) is left out when it only repeats them.
        """
        path = Path(path)
        differences = self.differences
        if any(name != "key" for name in self.key_columns):
            differences = differences.drop(columns=["key"])
        suffix = path.suffix.lower()
        try:
            if suffix == ".csv":
                with path.open("w", newline="", encoding="utf-8") as handle:
                    writer = csv.writer(handle, lineterminator="\n")
                    writer.writerow(differences.columns)
                    for row in differences.itertuples(index=False):
                        writer.writerow(
                            _csv_cell(name, value)
                            for name, value in zip(differences.columns, row, strict=True)
                        )
            elif suffix in (".parquet", ".pq"):
                pq.write_table(pa.Table.from_pandas(differences, preserve_index=False), path)
            else:
                raise LedgerError(f"--out {path}: give a .csv or .parquet path")
        except OSError as exc:
            raise LedgerError(f"cannot write {path}: {exc}") from None
        return path


def _csv_cell(name: str, value: Any) -> str:
    """A cell of the differences CSV: amounts as plain exact decimals, NULL as empty."""
    if value is None or value is pd.NA:
        return ""
    if name in ("recovered", "opening", "ledger", "delta"):
        return plain(Decimal(value))
    return str(value)


def _decimal_column(values: Sequence[Decimal]) -> pd.Series:
    """Decimals as an Arrow-backed decimal column, exact (object dtype if none fits)."""
    if not values:
        return pd.Series([], dtype=pd.ArrowDtype(pa.decimal128(38, 0)))
    scale = max(max(-int(v.as_tuple().exponent), 0) for v in values)
    integer = max(max(v.adjusted() + 1, 1) for v in values)
    for kind, limit in ((pa.decimal128, 38), (pa.decimal256, 76)):
        if integer + scale <= limit:
            return pd.Series(
                pa.array(values, kind(limit, scale)), dtype=pd.ArrowDtype(kind(limit, scale))
            )
    return pd.Series(list(values), dtype=object)


def compare_totals(
    recovered: Mapping[Key, tuple[Decimal, int]] | Mapping[Any, Decimal],
    ledger: Mapping[Any, Decimal],
    *,
    opening: Mapping[Any, Decimal] | None = None,
    tolerance: Decimal | int | str = 0,
    key_columns: Sequence[str] = ("key",),
    period: str | None = None,
    source: str = "",
) -> Reconciliation:
    """Compare per-key totals; a key missing on one side counts as 0 there.

    ``recovered`` maps a key to ``(total, rows)`` (or just a total); keys are tuples of text
    (a bare value is taken as a one-column key). The delta is ``recovered + opening - ledger``.
    """
    tol = to_decimal(tolerance, "the tolerance")
    if tol < 0:
        raise LedgerError("the tolerance must not be negative")
    rec = {_as_key(k): (v if isinstance(v, tuple) else (v, 0)) for k, v in recovered.items()}
    led = {_as_key(k): v for k, v in ledger.items()}
    opn = {_as_key(k): v for k, v in (opening or {}).items()}
    names = tuple(key_columns)
    everything = sorted(set(rec) | set(led) | set(opn), key=_sort_key)
    columns: dict[str, list[Any]] = {
        "key": [],
        **{name: [] for name in names if name != "key"},
        **({"period": []} if period else {}),
        "rows": [],
        "recovered": [],
        **({"opening": []} if opening is not None else {}),
        "ledger": [],
        "delta": [],
        "status": [],
    }
    counts = dict.fromkeys(STATUSES, 0)
    total = Decimal(0)
    for key in everything:
        ours, rows = rec.get(key, (Decimal(0), 0))
        start = opn.get(key, Decimal(0))
        theirs = led.get(key, Decimal(0))
        delta = ours + start - theirs
        total += delta
        if abs(delta) <= tol:
            status = MATCHED
        elif key not in rec and key not in opn:
            status = MISSING_IN_RECOVERED
        elif key not in led:
            status = MISSING_IN_LEDGER
        else:
            status = MISMATCHED
        counts[status] += 1
        key_part = key[: len(names)]
        columns["key"].append(
            key_part[0] if len(key_part) == 1 else "(" + ", ".join(map(str, key_part)) + ")"
        )
        for name, value in zip(names, key_part, strict=False):
            if name != "key":
                columns[name].append(value)
        if period:
            columns["period"].append(key[-1])
        columns["rows"].append(rows)
        columns["recovered"].append(ours)
        if opening is not None:
            columns["opening"].append(start)
        columns["ledger"].append(theirs)
        columns["delta"].append(delta)
        columns["status"].append(status)
    frame = pd.DataFrame(
        {
            name: (
                _decimal_column(values)
                if name in ("recovered", "opening", "ledger", "delta")
                else pd.Series(values, dtype=pd.ArrowDtype(pa.int64()))
                if name == "rows"
                else pd.Series(values, dtype=pd.ArrowDtype(pa.string()))
            )
            for name, values in columns.items()
        }
    )
    return Reconciliation(
        matched=counts[MATCHED] == len(everything),
        keys=len(everything),
        matched_keys=counts[MATCHED],
        mismatched=counts[MISMATCHED],
        missing_in_recovered=counts[MISSING_IN_RECOVERED],
        missing_in_ledger=counts[MISSING_IN_LEDGER],
        total_difference=total,
        tolerance=tol,
        key_columns=names,
        period=period,
        recovered_total=sum((v[0] for v in rec.values()), Decimal(0)),
        ledger_total=sum(led.values(), Decimal(0)),
        opening_total=sum(opn.values(), Decimal(0)) if opening is not None else None,
        comparison=frame,
        source=source,
    )


def _as_key(key: Any) -> Key:
    if isinstance(key, tuple):
        return tuple(key_text(v) for v in key)
    return (key_text(key),)


# -- explanations --------------------------------------------------------------------------------


def explain_keys(
    path: str | Path,
    keys: Sequence[Key],
    key_columns: Sequence[str],
    amount: str,
    *,
    period: Period | None = None,
    time_column: str | None = None,
    explain_rows: int = 500,
) -> dict[Key, Explanation]:
    """The audit rows of each key in ``keys``, and what became of them.

    Two filtered reads of the audit: the row identities (primary keys) of rows whose after- or
    before-image carries one of the keys, then every row of those keys or identities. A row
    belongs to a key when its own images carry the key, or when it updates or deletes a version
    of a row that did: so a delete whose before-image holds only the primary key still shows,
    but a row that merely reuses a primary key later (another row inserted under it after a
    delete, or in a table dropped and re-created under the same name) is not pulled in. A row
    *counts* for a key when it is live and its after-image carries that key (and period).
    """
    if not keys:
        return {}
    dataset = audit_dataset(path)
    schema = dataset.schema
    names = tuple(key_columns)
    n = len(names)
    new_fields = [typed_column(schema, k, "new") for k in names]
    old_fields = [typed_column(schema, k, "old") for k in names]
    amount_new = typed_column(schema, amount, "new")
    amount_old = typed_column(schema, amount, "old")
    time_new = typed_column(schema, time_column, "new") if time_column else None
    if any(f is None for f in new_fields) or amount_new is None:
        return {}
    first_values = sorted({k[0] for k in keys if k[0] is not None})
    match = ds.field(new_fields[0]).cast(pa.string()).isin(first_values)
    if old_fields[0] is not None:
        match = match | ds.field(old_fields[0]).cast(pa.string()).isin(first_values)
    identities = dataset.to_table(columns=["key"], filter=match).column("key").drop_null()
    if len(identities):
        match = match | ds.field("key").isin(sorted(set(identities.to_pylist())))
    base = ["seq", "commit_time", "commit_lsn", "xid", "op", "outcome", "relation", "key"]
    extra = [f for f in (*new_fields, *old_fields, amount_new, amount_old, time_new) if f]
    wanted = list(dict.fromkeys([*base, *extra]))
    table = dataset.to_table(columns=wanted, filter=match).sort_by("seq")
    records = table.to_pylist()

    def image_key(record: Mapping[str, Any], fields: Sequence[str | None]) -> Key | None:
        if any(f is None for f in fields):
            return None
        return tuple(_cell_text(record[f]) for f in fields if f)

    wanted_keys = set(keys)
    members: dict[Key, list[int]] = {k: [] for k in keys}
    counted: dict[Key, list[bool]] = {k: [] for k in keys}
    #: The keys whose versions each row identity (per relation) holds now, in seq order: an
    #: insert starts a row's life, a delete ends it, an update carries it on.
    versions: dict[tuple[str, str], set[Key]] = {}
    for i, record in enumerate(records):
        op = record["op"]
        after = image_key(record, new_fields) if op in outcomes.LIVE_OPS else None
        if after is not None and period is not None:
            stamp = record[time_new] if time_new else None
            after = (*after, None if stamp is None else period_label(stamp, period))
        before = image_key(record, old_fields) if op in ("update", "delete") else None
        if before is not None and all(v is None for v in before):
            before = None  # the before-image does not carry the key columns
        carries = {k for k in wanted_keys if after is not None and k[:n] == after[:n]}
        found = carries | {k for k in wanted_keys if before is not None and k[:n] == before}
        identity = (record["relation"], record["key"]) if record["key"] is not None else None
        if identity is not None:
            if op in ("update", "delete"):
                found |= versions.get(identity, set())  # the version it changes
            if op == "delete":
                versions.pop(identity, None)
            elif op in outcomes.LIVE_OPS:
                versions[identity] = carries
        live = outcomes.is_live(op, record["outcome"])
        for key in found:
            members[key].append(i)
            counted[key].append(live and after == key)
    rename = {amount_new: "amount", **({amount_old: "old_amount"} if amount_old else {})}
    result: dict[Key, Explanation] = {}
    for key in keys:
        rows = table.take(pa.array(members[key], pa.int64()))
        rows = rows.rename_columns([rename.get(c, c) for c in rows.column_names])
        rows = rows.append_column("counted", pa.array(counted[key], pa.bool_()))
        rows = rows.append_column(
            "meaning",
            pa.array(
                [
                    outcomes.describe(outcome, op)
                    for outcome, op in zip(
                        rows.column("outcome").to_pylist(),
                        rows.column("op").to_pylist(),
                        strict=True,
                    )
                ]
            ),
        )
        result[key] = Explanation(
            key=key,
            rows=rows.slice(0, explain_rows).to_pandas(types_mapper=pd.ArrowDtype),
            by_outcome=_by_outcome(
                rows.column("outcome").to_pylist(),
                rows.column("op").to_pylist(),
                counted[key],
                rows.column("amount").to_pylist(),
            ),
            truncated=rows.num_rows > explain_rows,
        )
    return result


def _cell_text(value: Any) -> str | None:
    return None if value is None else key_text(value)


def _by_outcome(
    outcome_values: Sequence[str],
    ops: Sequence[str],
    counted: Sequence[bool],
    amounts: Sequence[Any],
) -> pd.DataFrame:
    """Rows and amounts per outcome and op (one group for the counted rows), counted first."""
    groups: dict[tuple[str, str, bool], tuple[int, Decimal]] = {}
    for outcome, op, live, amount in zip(outcome_values, ops, counted, amounts, strict=True):
        value = Decimal(0) if amount is None else Decimal(str(amount))
        group = (outcome, "" if live else op, live)  # counted rows: inserts and updates alike
        n, total = groups.get(group, (0, Decimal(0)))
        groups[group] = (n + 1, total + value)
    order = {o: i for i, o in enumerate(outcomes.ALL)}
    items = sorted(groups.items(), key=lambda kv: (not kv[0][2], order.get(kv[0][0], 99), kv[0][1]))
    return pd.DataFrame(
        {
            "outcome": pd.Series([g[0] for g, _ in items], dtype=pd.ArrowDtype(pa.string())),
            "op": pd.Series([g[1] for g, _ in items], dtype=pd.ArrowDtype(pa.string())),
            "counted": pd.Series([g[2] for g, _ in items], dtype=pd.ArrowDtype(pa.bool_())),
            "rows": pd.Series([v[0] for _, v in items], dtype=pd.ArrowDtype(pa.int64())),
            "amount": _decimal_column([v[1] for _, v in items]),
        }
    )


# -- the whole reconciliation ------------------------------------------------------------------


def reconcile(
    recovered: RecoveredTable | RecoveredAudit | str | Path,
    ledger: LedgerSource,
    *,
    key: str | Sequence[str],
    amount: str,
    period: Period | None = None,
    time_column: str | None = None,
    opening: LedgerSource | None = None,
    tolerance: Decimal | int | str = 0,
    audit: str | Path | None = None,
    explain: int = 20,
    explain_rows: int = 500,
) -> Reconciliation:
    """Reconcile the recovered table (or an audit: a path) against a ledger.

    ``key`` is one column or several (composite keys); ``period`` (``"day"`` or ``"month"``
    on ``time_column``) compares totals per key per period; ``opening`` balances (key ->
    opening total) are added to the recovered totals; ``tolerance`` is an exact amount.
    ``audit`` (default: the audit being reconciled) explains up to ``explain`` differing keys.
    """
    if isinstance(recovered, str | Path):
        recovered = RecoveredAudit(recovered)
    keys = key_names(key)
    if period is not None and period not in PERIOD_FORMAT:
        raise LedgerError(f"--period {period!r}: give day or month")
    if period is not None and opening is not None:
        raise LedgerError(
            "opening balances apply to totals per key, not per period: drop --period or the "
            "opening balances"
        )
    default_conn: Any = None
    if isinstance(recovered, RecoveredAudit):
        _refuse_baseline(recovered.path)
        totals = audit_totals(recovered.path, keys, amount, period=period, time_column=time_column)
        audit = audit if audit is not None else recovered.path
        default_conn = None
        ledger_totals_ = _ledger_or_error(ledger, keys, period, None)
        opening_totals = (
            _ledger_or_error(opening, keys, None, None, "opening") if opening is not None else None
        )
    else:
        with connection(recovered.connection, "target") as conn:
            totals = table_totals(
                conn, recovered.name, keys, amount, period=period, time_column=time_column
            )
            default_conn = conn
            ledger_totals_ = _ledger_or_error(ledger, keys, period, default_conn)
            opening_totals = (
                _ledger_or_error(opening, keys, None, default_conn, "opening")
                if opening is not None
                else None
            )
    result = compare_totals(
        totals,
        ledger_totals_,
        opening=opening_totals,
        tolerance=tolerance,
        key_columns=keys,
        period=period,
        source=recovered.describe(),
    )
    if audit is not None and not result.matched and explain > 0:
        differing = [
            _row_key(row, keys, period)
            for row in result.differences.head(explain).to_dict("records")
        ]
        explanations = explain_keys(
            audit,
            differing,
            keys,
            amount,
            period=period,
            time_column=time_column,
            explain_rows=explain_rows,
        )
        result = _with_explanations(result, explanations)
    return result


def _refuse_baseline(path: str | Path) -> None:
    """An audit of a recovery from a baseline holds the changes replayed on top of the
    baseline, not the baseline's rows: its totals are not the table's, so it cannot be
    reconciled alone (the rebuilt table can)."""
    try:
        metadata = read_metadata(path)
    except AuditError:
        return  # not a walrecover audit's metadata: the totals say what they can read
    base = metadata.get("baseline")
    if not isinstance(base, dict):
        return
    into = metadata.get("into") or "the rebuilt table"
    raise LedgerError(
        f"the audit {path} starts from a baseline ({base.get('source')}, {base.get('rows')} "
        f"rows, rows sha256 {base.get('rows_sha256')}) whose rows it does not hold, only the "
        "changes replayed on top of them, so its totals are not the table's: reconcile the "
        f"rebuilt table (-d DATABASE --table {into}, with --audit to explain differences)"
    )


def _ledger_or_error(
    source: LedgerSource | None,
    keys: Sequence[str],
    period: Period | None,
    default_connection: Any,
    what: str = "ledger",
) -> dict[Key, Decimal]:
    assert source is not None
    source = ledger_source(source)
    if isinstance(source, LedgerQuery) and source.connection is None and default_connection is None:
        raise LedgerError(
            f"the {what} query needs a database: give --ledger-dsn (reconciling an audit has "
            "no table database to default to)"
        )
    return ledger_totals(
        source, keys, period=period, default_connection=default_connection, what=what
    )


def _row_key(row: Mapping[Any, Any], keys: Sequence[str], period: Period | None) -> Key:
    values = [row["key"]] if keys == ("key",) else [row[k] for k in keys]
    key: Key = tuple(None if v is None or v is pd.NA else str(v) for v in values)
    if period is not None:
        value = row["period"]
        key = (*key, None if value is None or value is pd.NA else str(value))
    return key


def _with_explanations(
    result: Reconciliation, explanations: Mapping[Key, Explanation]
) -> Reconciliation:
    return replace(result, explanations=dict(explanations))


def reconcile_table(
    target: Any,
    into: TableName,
    *,
    key: str | Sequence[str],
    amount: str,
    ledger: Any,
    ledger_query: str,
    period: Period | None = None,
    time_column: str | None = None,
    tolerance: Decimal | int | str = 0,
    audit: str | Path | None = None,
) -> Reconciliation:
    """Compare ``sum(amount)`` per ``key`` of the rebuilt table with a ledger query's totals
    (run on the ``ledger`` connection): what ``walrecover recover --ledger-query`` does."""
    return reconcile(
        RecoveredTable(target, into),
        LedgerQuery(ledger_query, ledger),
        key=key,
        amount=amount,
        period=period,
        time_column=time_column,
        tolerance=tolerance,
        audit=audit,
    )
