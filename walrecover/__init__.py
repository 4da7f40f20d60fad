"""walrecover: rebuild a dropped PostgreSQL table from logical decoding.

The library is the product; the ``walrecover`` command is a thin shell over it::

    from walrecover import recover, TableName
    result = recover("dbname=bank", slot="audit_slot", table=TableName.parse("public.transactions"))
"""

from __future__ import annotations

__version__ = "0.1.0"
