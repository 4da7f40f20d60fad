"""A ``pg_recvlogical -f`` capture of pgoutput, cut into its messages by their structure."""

from __future__ import annotations

from collections.abc import Iterator

from ....errors import DecodeError
from .reader import Reader
from .wire import PARSERS


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
        name = _message_name(kind, pos, proto_version)
        where = f"at byte {pos} of the capture"
        end = _message_end(data, pos, proto_version, in_stream)
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


def _message_name(kind: int, pos: int, proto_version: int) -> str:
    """The name of the message type ``kind`` at ``pos``; refuse one unknown or too new."""
    entry = PARSERS.get(kind)
    if entry is None:
        raise DecodeError(
            f"pgoutput capture has an unknown message type byte {kind:#04x} at byte {pos} of "
            "the capture: the file is damaged, or was not written by pg_recvlogical with "
            "pgoutput",
            offset=pos,
        )
    name, since, _ = entry
    if proto_version < since:
        raise DecodeError(
            f"pgoutput {name} message at byte {pos} of the capture needs protocol version "
            f"{since}: give the proto_version the capture was made with (-o proto_version=N)",
            offset=pos,
        )
    return name


def _message_end(data: bytes, pos: int, proto_version: int, in_stream: bool) -> int:
    """Where the message at ``pos`` ends, measured by parsing it (the data's size when it runs
    past the end)."""
    kind, size = data[pos], len(data)
    if kind == 0x41 and proto_version >= 4:  # Stream Abort: 9 or 25 bytes, by its layout
        return pos + 25 if pos + 25 < size and data[pos + 25] == 0x0A else pos + 9
    name, _, parse = PARSERS[kind]
    reader = Reader(
        data,
        what=f"{name} message at byte {pos} of the capture",
        lsn=None,
        version=proto_version,
        in_stream=in_stream,
        start=pos,
    )
    try:
        parse(reader)
    except DecodeError as exc:
        if not getattr(exc, "overrun", False):
            raise
        return size
    return reader.pos
