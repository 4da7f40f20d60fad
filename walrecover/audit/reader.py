"""Reading an audit back: as a pandas DataFrame (exact, Arrow-backed), a pyarrow dataset, or
its run metadata. The layouts are described in :mod:`walrecover.audit.format`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ..errors import AuditError
from .format import DATASET_MANIFEST, NO_DATE, PARTITION, kv_metadata, load_manifest
from .pgarrow import INTERVAL_TYPE


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The run metadata of an audit file, or of a partitioned audit (from its manifest)."""
    path = Path(path)
    if path.is_dir():
        manifest = load_manifest(path / DATASET_MANIFEST)
        return dict(manifest.get("metadata", {}))
    try:
        return kv_metadata(pq.ParquetFile(path).metadata.metadata)
    except (OSError, pa.ArrowException) as exc:
        raise AuditError(f"cannot read the audit {path}: {exc}", path=str(path)) from None


def audit_dataset(path: str | os.PathLike[str]) -> ds.Dataset:
    """The audit at ``path`` (a file or a partitioned directory) as a pyarrow dataset."""
    path = Path(path)
    if not path.exists():
        raise AuditError(f"the audit {path} does not exist", path=str(path))
    try:
        if path.is_dir():
            return ds.dataset(
                path,
                format="parquet",
                partitioning=ds.partitioning(pa.schema([(PARTITION, pa.string())]), flavor="hive"),
            )
        return ds.dataset(path, format="parquet")
    except (OSError, pa.ArrowException) as exc:
        raise AuditError(f"cannot read the audit {path}: {exc}", path=str(path)) from None


def read_audit(
    path: str | os.PathLike[str],
    *,
    columns: Sequence[str] | None = None,
    filter: ds.Expression | None = None,
) -> pd.DataFrame:
    """The audit at ``path`` (file or partitioned directory) as a pandas DataFrame, in seq order.

    Every column is Arrow-backed (``pd.ArrowDtype``): numeric stays ``decimal128(p, s)``
    (exact ``Decimal`` values, never floats), timestamptz stays ``timestamp[us, tz=UTC]``, and
    intervals become ``month_day_nano_interval``. ``columns`` and ``filter`` (a
    ``pyarrow.dataset`` expression) read only part of a large audit.
    """
    dataset = audit_dataset(path)
    wanted = list(columns) if columns is not None else None
    read: list[str] | None = wanted
    if wanted is not None and "seq" not in wanted and "seq" in dataset.schema.names:
        read = [*wanted, "seq"]
    try:
        table = dataset.to_table(columns=read, filter=filter)
    except (OSError, pa.ArrowException) as exc:
        raise AuditError(f"cannot read the audit {path}: {exc}", path=str(path)) from None
    if "seq" in table.column_names:
        table = table.sort_by("seq")
        if wanted is not None and "seq" not in wanted:
            table = table.drop_columns(["seq"])
    for index, item in enumerate(table.schema):
        if item.name == PARTITION and pa.types.is_string(item.type):
            column = table.column(index)
            dates = pc.cast(pc.if_else(pc.equal(column, NO_DATE), None, column), pa.date32())
            table = table.set_column(index, pa.field(PARTITION, pa.date32()), dates)
        elif item.type == INTERVAL_TYPE:
            converted = _as_month_day_nano(table.column(index))
            table = table.set_column(index, pa.field(item.name, converted.type), converted)
    frame: pd.DataFrame = table.to_pandas(types_mapper=pd.ArrowDtype)
    return frame


def _as_month_day_nano(column: pa.ChunkedArray) -> pa.Array:
    return pa.array(
        [
            None
            if v is None
            else pa.MonthDayNano([v["months"], v["days"], v["microseconds"] * 1000])
            for v in column.to_pylist()
        ],
        pa.month_day_nano_interval(),
    )
