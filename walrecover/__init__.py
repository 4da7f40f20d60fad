"""walrecover: rebuild a dropped PostgreSQL table from logical decoding.

The library is the product; the ``walrecover`` command is a thin shell over it::

    from walrecover import recover, TableName
    result = recover("dbname=bank", slot="audit_slot", table=TableName.parse("public.transactions"))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .audit import read_audit
    from .verify import verify_audit

__all__ = ["__version__", "read_audit", "verify_audit"]


def __getattr__(name: str) -> Any:
    """``read_audit`` and ``verify_audit``, imported on first use (they pull in pyarrow)."""
    if name == "read_audit":
        from .audit import read_audit  # noqa: PLC0415 - lazy on purpose

        return read_audit
    if name == "verify_audit":
        from .verify import verify_audit  # noqa: PLC0415 - lazy on purpose

        return verify_audit
    raise AttributeError(f"module 'walrecover' has no attribute {name!r}")
