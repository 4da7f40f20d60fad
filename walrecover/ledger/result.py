"""A reconciliation's result: per-key totals compared with the ledger's, exactly, and what a
person or a notebook reads from them (frames by status, explanations, the differences file).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import LedgerError
from ..report import reconciliation_text
from .totals import (
    Key,
    key_text,
    plain,
    to_decimal,
)

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
        """The result for a person: counts, totals, the first differences and why
        (:func:`walrecover.report.reconciliation_text`)."""
        return reconciliation_text(self, limit)

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
    columns = _empty_columns(names, per_period=bool(period), with_opening=opening is not None)
    counts = dict.fromkeys(STATUSES, 0)
    total = Decimal(0)
    for key in everything:
        ours, rows = rec.get(key, (Decimal(0), 0))
        start = opn.get(key, Decimal(0))
        theirs = led.get(key, Decimal(0))
        delta = ours + start - theirs
        total += delta
        status = _status(delta, tol, in_recovered=key in rec or key in opn, in_ledger=key in led)
        counts[status] += 1
        _add_row(
            columns,
            key,
            names,
            (rows, ours, start if opening is not None else None, theirs),
            per_period=bool(period),
        )
        columns["delta"].append(delta)
        columns["status"].append(status)
    frame = pd.DataFrame({name: _column(name, values) for name, values in columns.items()})
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


def _empty_columns(
    names: Sequence[str], *, per_period: bool, with_opening: bool
) -> dict[str, list[Any]]:
    """The comparison frame's columns, in order, each an empty list to append to."""
    return {
        "key": [],
        **{name: [] for name in names if name != "key"},
        **({"period": []} if per_period else {}),
        "rows": [],
        "recovered": [],
        **({"opening": []} if with_opening else {}),
        "ledger": [],
        "delta": [],
        "status": [],
    }


def _status(delta: Decimal, tolerance: Decimal, *, in_recovered: bool, in_ledger: bool) -> str:
    """A key's status: matched within the tolerance, else missing on a side, else mismatched."""
    if abs(delta) <= tolerance:
        return MATCHED
    if not in_recovered:
        return MISSING_IN_RECOVERED
    if not in_ledger:
        return MISSING_IN_LEDGER
    return MISMATCHED


def _add_row(
    columns: dict[str, list[Any]],
    key: Key,
    names: tuple[str, ...],
    cells: tuple[int, Decimal, Decimal | None, Decimal],
    *,
    per_period: bool,
) -> None:
    """One key's cells (rows, recovered, opening or None without openings, ledger), but its
    delta and status, in the comparison's columns."""
    rows, recovered, opening, ledger = cells
    key_part = key[: len(names)]
    columns["key"].append(
        key_part[0] if len(key_part) == 1 else "(" + ", ".join(map(str, key_part)) + ")"
    )
    for name, value in zip(names, key_part, strict=False):
        if name != "key":
            columns[name].append(value)
    if per_period:
        columns["period"].append(key[-1])
    columns["rows"].append(rows)
    columns["recovered"].append(recovered)
    if opening is not None:
        columns["opening"].append(opening)
    columns["ledger"].append(ledger)


def _column(name: str, values: list[Any]) -> pd.Series:
    """A comparison column with its exact Arrow type."""
    if name in ("recovered", "opening", "ledger", "delta"):
        return _decimal_column(values)
    if name == "rows":
        return pd.Series(values, dtype=pd.ArrowDtype(pa.int64()))
    return pd.Series(values, dtype=pd.ArrowDtype(pa.string()))


def _as_key(key: Any) -> Key:
    if isinstance(key, tuple):
        return tuple(key_text(v) for v in key)
    return (key_text(key),)
