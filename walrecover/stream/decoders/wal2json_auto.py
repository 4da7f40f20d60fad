"""wal2json output of either format, told from its first message.

A capture made with ``pg_recvlogical -P wal2json`` and no ``-o format-version`` is wal2json's
default, format 1; one made with ``-o format-version=2`` is format 2. The content tells them
apart, so a capture is read in the format it holds, and a stated format the content contradicts
is refused on the first message.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol

from ...errors import DecodeError
from ..model import Event, RawMessage
from . import wal2json, wal2json_v1


class _Inner(Protocol):
    def decode(self, message: RawMessage) -> Sequence[Event]: ...

    def finish(self) -> Sequence[Event]: ...


class Wal2JsonAnyFormat:
    """wal2json output whose format-version was not given (``pg_recvlogical -P wal2json``
    without ``-o format-version``, which writes wal2json's default, format 1): the first message
    tells. Format 2 writes one object per line, each with an ``action``; format 1 writes one
    document per transaction, which starts with ``{"xid"``, ``{"change"``, ``{"timestamp"`` or,
    pretty-printed or written in chunks, with a line that is not a whole object.

    ``stated`` is the format-version the user gave, if any: content of the other format is a
    contradiction, refused on its first message.
    """

    plugin = "wal2json"

    def __init__(self, stated: str | None = None) -> None:
        self.stated = stated
        self.version: str | None = None
        self._inner: _Inner | None = None
        self.notes: list[str] = []

    def decode(self, message: RawMessage) -> Sequence[Event]:
        if self._inner is None:
            self._inner = self._choose(message)
        return self._inner.decode(message)

    def _choose(self, message: RawMessage) -> _Inner:
        """The decoder for the format the first message shows."""
        self.version = _wal2json_format(message.data)
        if self.stated is not None and self.stated != self.version:
            at = f" at LSN {message.lsn}" if message.lsn is not None else ""
            raise DecodeError(
                f"the wal2json output{at} is format-version {self.version} (its first message "
                f"begins {_head(message.data)!r}), not format-version {self.stated} as "
                f"-o format-version={self.stated} says: give the options pg_recvlogical "
                "used (without -o format-version, wal2json writes format 1)",
                plugin="wal2json",
                lsn=message.lsn,
            )
        if self.version == "2":
            return wal2json.Wal2JsonV2Decoder()
        if self.stated is None:
            self.notes.append(
                "the capture is wal2json format-version 1 (no -o format-version was "
                "given: wal2json's default). " + wal2json_v1.LIMITATIONS
            )
        return wal2json_v1.Wal2JsonV1Decoder()

    def finish(self) -> Sequence[Event]:
        return self._inner.finish() if self._inner is not None else ()


def _head(data: str | bytes) -> str:
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    return text[:30]


def _wal2json_format(data: str | bytes) -> str:
    """``"2"`` when ``data`` is a whole JSON object with an ``action``, else ``"1"``."""
    text = (data if isinstance(data, str) else data.decode("utf-8", "replace")).lstrip()
    if text.startswith('{"action"'):
        return "2"
    if text.startswith("{") and '"action"' in text[:200]:
        try:
            obj = json.loads(text)
        except ValueError:
            return "1"
        return "2" if isinstance(obj, dict) and "action" in obj else "1"
    return "1"
