"""A ``pg_recvlogical -f`` capture of pgoutput, cut into its messages by their structure."""

from __future__ import annotations

from collections.abc import Iterator

from ....errors import DecodeError
from .wire import PARSERS, Reader


class CaptureEndsMidMessage(DecodeError):
    """The capture's last message runs past the end of the file, or lacks its newline:
    pg_recvlogical was stopped while writing it. ``offset`` is where that message starts."""


def split_capture(data: bytes, proto_version: int = 1) -> Iterator[bytes]:
    """Cut a ``pg_recvlogical -f`` capture of pgoutput into its messages.

    pg_recvlogical writes each message followed by a newline and no length, and a message can
    itself contain newline bytes, so each message is measured by parsing its structure.
    ``data`` may be an ``mmap`` of the file, so a large capture is not read into memory.
    A last message that the file's end cuts raises :class:`CaptureEndsMidMessage` after every
    whole message was yielded; one cut by anything else is damage (:class:`DecodeError`).
    """
    pos, size, in_stream = 0, len(data), False
    while pos < size:
        kind = data[pos]
        entry = PARSERS.get(kind)
        where = f"at byte {pos} of the capture"
        if entry is None:
            raise DecodeError(
                f"pgoutput capture has an unknown message type byte {kind:#04x} {where}: the "
                "file is damaged, or was not written by pg_recvlogical with pgoutput",
                offset=pos,
            )
        name, since, parse = entry
        if proto_version < since:
            raise DecodeError(
                f"pgoutput {name} message {where} needs protocol version {since}: give the "
                "proto_version the capture was made with (-o proto_version=N)",
                offset=pos,
            )
        reader = Reader(
            data,
            what=f"{name} message {where}",
            lsn=None,
            version=proto_version,
            in_stream=in_stream,
            start=pos,
        )
        if kind == 0x41 and proto_version >= 4:  # Stream Abort: 9 or 25 bytes, by its layout
            end = pos + 25 if pos + 25 < size and data[pos + 25] == 0x0A else pos + 9
        else:
            try:
                parse(reader)
            except DecodeError as exc:
                if not getattr(exc, "overrun", False):
                    raise
                end = size
            else:
                end = reader.pos
        if end >= size:
            raise CaptureEndsMidMessage(
                f"the capture ends inside the {name} message {where} ({size - pos} bytes, "
                "without its newline): pg_recvlogical was stopped while writing it",
                offset=pos,
            )
        if data[end] != 0x0A:
            raise DecodeError(
                f"pgoutput capture is truncated or damaged after the {name} message {where}: "
                "pg_recvlogical ends every message with a newline",
                offset=end,
            )
        if kind == 0x53:  # Stream Start
            in_stream = True
        elif kind == 0x45:  # Stream Stop
            in_stream = False
        yield bytes(data[pos:end])
        pos = end + 1
