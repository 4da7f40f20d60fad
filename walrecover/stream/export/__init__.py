"""Export decoded changes: JSON lines, redo SQL, or undo SQL (``walrecover decode``).

All three stream: JSON lines and redo SQL are written as the changes arrive; undo SQL, which
must come out newest first, is written per transaction to a temporary file and read back in
reverse, so memory stays bounded whatever the stream's length.

What is decoded is chosen by a start (:class:`~walrecover.stream.model.StartPoint`: from an LSN, a
transaction or a time on, or one transaction only), a stop point and a table filter. Undo SQL
without a start would reverse everything the slot ever saw, so :func:`decode_to` refuses it.
Both SQL scripts begin with a header saying what they redo or undo: the source, the tables,
the first and last transaction, the changes per operation and those the script cannot carry.

Undo SQL can only restore what the WAL holds: a deleted or updated row's old values are in the
stream only when the table has ``REPLICA IDENTITY FULL``. Where they are not, the undo script
says so in a comment instead of guessing.

The package: :mod:`.selection` chooses the events, :mod:`.statements` makes one change's SQL or
JSON, :mod:`.writers` writes a format, :mod:`.decode` reads a source into a writer.
"""

from __future__ import annotations

from .decode import DecodeResult, check_request, decode, decode_to
from .selection import select
from .statements import change_record, redo_statement, undo_statement
from .writers import FORMATS, Selection, Summary, TransactionRef, write

__all__ = [
    "FORMATS",
    "DecodeResult",
    "Selection",
    "Summary",
    "TransactionRef",
    "change_record",
    "check_request",
    "decode",
    "decode_to",
    "redo_statement",
    "select",
    "undo_statement",
    "write",
]
