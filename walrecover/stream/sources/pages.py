"""Read a slot copy in SQL pages: ``pg_logical_slot_get_changes`` through a server-side cursor.

The fallback of :class:`~.slot.SlotSource` when a replication connection cannot be opened (no
``replication`` line in ``pg_hba.conf``), or when the plugin's options leave out what the stream
needs (:func:`.replication.streamable`); ``SlotSource(read="pages")`` asks for it.

Consuming (not peeking) the copy is what keeps the work linear: each page starts where the
previous one ended, while repeated peeks would re-decode from the start every time. Rows of a
page are fetched through a server-side cursor, so client memory stays bounded even for one
enormous transaction. With a stop LSN (or a baseline's point) inside the stream, pages first run
up to it and then on to the end, so the transactions of a page lie all before the point or all
after it (the server ends a call after the WAL record that reaches its ``upto_lsn``: a commit that
starts before the point is in, one that starts at it is not). Each page's notices are kept in the
source's :class:`~..notices.NoticeLog`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from ...db import Connection
from ..decoders import is_binary
from ..lsn import Lsn
from ..making import raw_message
from ..model import RawMessage

if TYPE_CHECKING:
    from .slot import SlotSource


def read_pages(source: SlotSource, conn: Connection, copy: str) -> Iterator[RawMessage]:
    """Every message of ``copy`` up to ``source.end_lsn``, page by page."""
    flat = [item for pair in source.options for item in pair]
    start = int(source.start_lsn or 0)
    total = max(int(source.end_lsn or 0) - start, 0)
    function = (
        "pg_logical_slot_get_binary_changes"
        if is_binary(source.plugin)
        else "pg_logical_slot_get_changes"
    )
    stop = [source.stop_lsn] if source.stop_lsn is not None else []
    cuts = {*source.split_lsns, *stop}
    inside = sorted(c for c in cuts if start < c < int(source.end_lsn or 0))
    bounds: list[Lsn | None] = [*inside, source.end_lsn]
    done = 0
    last: Lsn | None = source.start_lsn
    for upto in bounds:
        query = sql.SQL(
            "SELECT (lsn - '0/0'::pg_lsn)::bigint, xid::text::bigint, data"
            " FROM {}("
            "{}, {}::pg_lsn, {}, VARIADIC {}::text[])"
        ).format(
            sql.Identifier(function),
            sql.Literal(copy),
            sql.Literal(str(upto)),
            source.page_size,
            sql.Literal(flat),
        )
        rows = source.page_size
        while rows >= source.page_size:
            rows = 0
            source.notices.start_page(last)
            try:
                with conn.transaction(), conn.cursor(name="walrecover_page") as cur:
                    cur.itersize = source.fetch_size
                    cur.execute(query)
                    for position, xid, data in cur:
                        rows += 1
                        lsn = last = Lsn(position)
                        if source.progress is not None and rows % 2000 == 0:
                            done = min(max(int(lsn) - start, done), total)
                            source.progress("read", done, total)
                        yield raw_message(data, lsn, xid)
                source.notices.end_page(last)
            except psycopg.Error as exc:
                raise source.read_error(exc, conn, last) from None
    if source.progress is not None:
        source.progress("read", total, total)
