"""Micro-benchmark: decoding a wal2json format-version 2 stream, client CPU only.

Usage::

    .venv/bin/python bench/wal2json_decode.py [--messages 200000] [--repeat 3]

The stream is synthetic but shaped like the ``bench/pipeline.py`` workload as the server prints
it with walrecover's options (xids, LSNs, timestamps, type OIDs and typmods, primary keys):
ten inserts into ``transactions`` (bigint, integer, numeric(12,2), text, timestamptz, text,
jsonb) per transaction, framed by B/C. It is built in memory, then decoded with
``Wal2JsonV2Decoder`` and timed with ``time.process_time`` (best of ``--repeat``).
"""

from __future__ import annotations

import argparse
import json
import time

from walrecover.stream.decoders.wal2json import Wal2JsonV2Decoder
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import RawMessage

_COLUMNS = (
    ("id", "bigint", 20),
    ("account_id", "integer", 23),
    ("amount", "numeric(12,2)", 1700),
    ("kind", "text", 25),
    ("created_at", "timestamp with time zone", 1184),
    ("note", "text", 25),
    ("meta", "jsonb", 3802),
)


def _change(row: int, xid: int, lsn: str) -> str:
    values = (
        str(row),
        str(row % 1000 + 1),
        f"{(row * 7919) % 100000 / 100:.2f}",
        json.dumps("payment"),
        json.dumps("2026-12-06 23:50:31.123456+00"),
        "null" if row % 3 else json.dumps(f"note {row}"),
        json.dumps(json.dumps({"ref": row})),
    )
    columns = ",".join(
        f'{{"name":"{name}","type":"{type_name}","typeoid":{oid},"value":{value}}}'
        for (name, type_name, oid), value in zip(_COLUMNS, values, strict=True)
    )
    return (
        f'{{"action":"I","xid":{xid},"lsn":"{lsn}","schema":"public","table":"transactions",'
        f'"columns":[{columns}],"pk":[{{"name":"id","type":"bigint","typeoid":20}}]}}'
    )


def stream(messages: int, per_commit: int = 10) -> list[RawMessage]:
    """About ``messages`` messages: B, ``per_commit`` inserts, C, repeated."""
    out: list[RawMessage] = []
    position, row, xid = 0x16B0000, 0, 1000
    while len(out) < messages:
        xid += 1
        commit = Lsn(position + 200 * (per_commit + 1))
        end = Lsn(int(commit) + 48)
        frame = (
            f'"xid":{xid},"lsn":"{commit}","nextlsn":"{end}",'
            '"timestamp":"2026-12-06 23:50:31.123456+00"'
        )
        out.append(RawMessage(f'{{"action":"B",{frame}}}', Lsn(position), xid))
        for _ in range(per_commit):
            position += 200
            row += 1
            out.append(RawMessage(_change(row, xid, str(Lsn(position))), Lsn(position), xid))
        out.append(RawMessage(f'{{"action":"C",{frame}}}', end, xid))
        position = int(end) + 8
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    messages = stream(args.messages)
    best = float("inf")
    for _ in range(args.repeat):
        decoder = Wal2JsonV2Decoder()
        started = time.process_time()
        events = 0
        for message in messages:
            events += len(decoder.decode(message))
        events += len(decoder.finish())
        best = min(best, time.process_time() - started)
    rate = len(messages) / best
    print(f"{len(messages)} messages, {events} events: {best:.2f} CPU s, {rate:,.0f} messages/s")


if __name__ == "__main__":
    main()
