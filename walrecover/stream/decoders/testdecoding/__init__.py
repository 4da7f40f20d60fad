"""test_decoding: PostgreSQL's own example output plugin, one line of text per event.

test_decoding ships with every PostgreSQL (``contrib``), so it is often the only plugin a server
has. Its rows look like this (``include-xids`` and ``include-timestamp`` on)::

    BEGIN 745
    table public.accounts: INSERT: id[bigint]:1 owner[text]:'O''Brien' active[boolean]:true
    table public.accounts: UPDATE: old-key: id[bigint]:1 new-tuple: id[bigint]:20 ...
    table public.accounts: DELETE: id[bigint]:20
    table public.staging, public.scratch: TRUNCATE: restart_seqs
    COMMIT 745 (at 2024-03-01 10:00:00.123456+00)

The grammar, as ``contrib/test_decoding/test_decoding.c`` writes it:

- Table and column names go through ``quote_identifier``: bare when they are lower-case ASCII
  letters, digits and ``_`` (and not a reserved word), else double-quoted with ``"`` doubled.
- ``name[type]:value``: the type is ``format_type_be`` (no modifier: ``numeric``, ``character
  varying[]``, ``timestamp with time zone``, ``"My Type"``; ``char(5)`` prints as ``character``,
  which in DDL means ``char(1)``; types not on the reading session's search_path are
  schema-qualified, and ``pg_recvlogical`` empties it, so a capture file says ``public.mood``
  where the SQL interface says ``mood``). The value is ``null``,
  ``unchanged-toast-datum``, or the type's output text: bare for integers, oid, floats and
  numeric; ``true``/``false`` for boolean; ``B'101'`` for bit strings; otherwise single-quoted
  with ``'`` doubled (backslashes and newlines are left as they are).
- Old images (``old-key:`` of an UPDATE, the tuple of a DELETE) skip NULL columns.

Values come out as PostgreSQL's text form, the same text every decoder yields: booleans ``t`` /
``f``, bit strings without ``B'...'``, quoted literals unquoted and un-doubled, numbers as
printed. Nothing is converted to a float.

What test_decoding does not say, and what the decoder does about it:

- **Which columns are the key.** The columns an old image prints are the replica identity, so
  the key is learnt from a relation's first DELETE or UPDATE ``old-key:``, and relations carry
  ``Column.is_key`` from then on, marked ``Relation.key_inferred``: an old image of a
  ``REPLICA IDENTITY FULL`` row skips its NULL columns too, so the guess may not be a key.
  Before that point a relation's key is unknown (no column is marked): a consumer that needs
  it earlier must take it from the table's definition. When a
  later old image prints a different set of columns, the identity cannot be a key (a key's
  columns are never NULL, so always printed): it is ``REPLICA IDENTITY FULL``, whose old images
  skip NULL columns. From then on every column is the key and old images are completed with
  NULL for the columns they skip. A definition change that loses a key column (a rename, a
  drop) makes the key unknown again until the next old image.
- **Positions.** test_decoding prints no LSN. Through the SQL interface each row has one: the
  change rows carry their record's position, and the COMMIT row sits at the *end* of the commit
  record, so it becomes :attr:`Commit.end_lsn`; the start of the commit record
  (:attr:`Commit.commit_lsn`) is never known. A ``pg_recvlogical -f`` capture has no positions.
- **Commit time** is printed only at COMMIT (``include-timestamp``), so :class:`Begin` has none.
- **A DELETE from a table without replica identity** prints ``(no-tuple-data)``: the change is
  passed on with ``old=None`` (a row went away, nobody can say which); a consumer rebuilding that
  table must refuse it.

Refused with :class:`DecodeError`, because the stream does not hold the data:
``stream-changes`` output (test_decoding prints "streaming change for transaction" instead of the
rows). Two-phase output (``PREPARE TRANSACTION 'gid'`` / ``COMMIT PREPARED`` / ``ROLLBACK
PREPARED``, a slot made with ``pg_recvlogical --two-phase``) is read with ``two_phase=True``:
a transaction's end (COMMIT or PREPARE) is only known at its last row, so every transaction is
held until then (in memory up to ``spill_threshold`` changes, the rest in a temporary file, as
pgoutput's are); a prepared one is held until COMMIT PREPARED, where it comes out in that
commit's order, or dropped at ROLLBACK PREPARED. One still undecided at the end of the stream is
left out and named in :attr:`TestDecodingDecoder.notes`. Without ``two_phase`` such rows are
refused (the changes before them were already passed on as committed).

Capture files: ``pg_recvlogical -f`` writes each row followed by a newline, and a row may itself
contain newlines (inside a quoted value or identifier, or a message's content). Given one line at
a time *without LSN*, the decoder joins a line that ends inside a quote with the following lines
until the quote closes (a message's content is joined until it holds its ``sz`` bytes). A row that
comes with an LSN is a whole row from the SQL interface; an open quote there is damage. Lines
must be split at ``\n`` only and given without it (a value may hold a lone carriage return).
"""

from __future__ import annotations

from collections.abc import Iterable

from ...model import TableName
from .decoder import PLUGIN, TestDecodingDecoder

__all__ = ["PLUGIN", "TestDecodingDecoder", "server_options"]


def server_options(tables: Iterable[TableName | str] = ()) -> list[tuple[str, str]]:
    """Options for ``pg_logical_slot_get_changes`` on a test_decoding slot.

    xids and commit times are needed for stop points; empty transactions are kept because a
    DDL-only transaction (the ``DROP TABLE`` that caused the incident) shows up only as an empty
    BEGIN/COMMIT pair, and its xid and time are what a user stops before. test_decoding cannot
    filter tables on the server: ``tables`` is accepted for symmetry and ignored.
    """
    del tables
    return [("include-xids", "1"), ("include-timestamp", "1"), ("skip-empty-xacts", "0")]
