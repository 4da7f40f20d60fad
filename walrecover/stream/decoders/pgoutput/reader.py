"""The fields of one pgoutput message, read with every length, count and terminator checked."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta
from typing import Final

from ....errors import DecodeError
from ...lsn import Lsn
from .messages import UNCHANGED, Datum, TupleData

#: Where pgoutput's timestamps (microseconds) count from.
PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH: Final = PG_EPOCH
_U8 = struct.Struct(">B")
_I16 = struct.Struct(">h")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")


def where(lsn: Lsn | None) -> str:
    return f" at LSN {lsn}" if lsn is not None else ""


class Reader:
    """Reads the fields of one message, failing with :class:`DecodeError` on any shortfall."""

    __slots__ = ("data", "in_stream", "lsn", "pos", "version", "what")

    def __init__(
        self,
        data: bytes,
        *,
        what: str,
        lsn: Lsn | None,
        version: int,
        in_stream: bool,
        start: int = 0,
    ) -> None:
        self.data = data
        self.pos = start + 1  # after the type byte
        self.what = what
        self.lsn = lsn
        self.version = version
        self.in_stream = in_stream

    def fail(
        self, problem: str, why: str = "the stream is damaged or is not pgoutput output"
    ) -> DecodeError:
        return DecodeError(
            f"pgoutput {self.what}{where(self.lsn)} {problem} (byte {self.pos} of "
            f"{len(self.data)}): {why}",
            lsn=self.lsn,
            offset=self.pos,
        )

    def _take(self, size: int) -> int:
        start = self.pos
        if start + size > len(self.data):
            error = self.fail(f"is truncated: {size} more bytes expected")
            error.overrun = True  # type: ignore[attr-defined]
            raise error
        self.pos = start + size
        return start

    def u8(self) -> int:
        return int(_U8.unpack_from(self.data, self._take(1))[0])

    def i16(self) -> int:
        return int(_I16.unpack_from(self.data, self._take(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack_from(self.data, self._take(4))[0])

    def i32(self) -> int:
        return int(_I32.unpack_from(self.data, self._take(4))[0])

    def lsn_field(self) -> Lsn:
        return Lsn(int(_U64.unpack_from(self.data, self._take(8))[0]))

    def time(self) -> datetime:
        start = self.pos
        micros = int(_I64.unpack_from(self.data, self._take(8))[0])
        try:
            return _PG_EPOCH + timedelta(microseconds=micros)
        except OverflowError:
            self.pos = start
            raise self.fail(f"has a timestamp out of range ({micros} µs since 2000)") from None

    def flag(self) -> bool:
        value = self.u8()
        if value > 1:
            self.pos -= 1
            raise self.fail(f"has {value} where a boolean (0 or 1) belongs")
        return value == 1

    def count(self, size: int, noun: str, per_item: int = 1) -> int:
        """A non-negative count or length (Int16 or Int32) whose items fit in the message."""
        start = self.pos
        value = self.i16() if size == 2 else self.i32()
        if value < 0 or value * per_item > self.remaining():
            self.pos = start
            error = self.fail(f"has an impossible {noun} {value}")
            # Past the end of the data: where a capture's end cut the message (or damage).
            error.overrun = value >= 0  # type: ignore[attr-defined]
            raise error
        return value

    def raw(self, size: int) -> bytes:
        start = self._take(size)
        return self.data[start : start + size]

    def text(self, size: int) -> str:
        start = self._take(size)
        try:
            return self.data[start : start + size].decode("utf-8")
        except UnicodeDecodeError as exc:
            self.pos = start + exc.start
            raise self.fail(
                "has a value that is not UTF-8",
                "a SQL_ASCII database stores text in any encoding and pg_recvlogical writes its "
                "bytes as they are, but walrecover reads text as UTF-8 only, so it cannot be "
                "carried (or the stream is damaged)",
            ) from None

    def string(self) -> str:
        """A NUL-terminated UTF-8 string (PostgreSQL always writes the terminator)."""
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            error = self.fail("has a string without its NUL terminator")
            error.overrun = True  # type: ignore[attr-defined]
            raise error
        value = self.text(end - self.pos)
        self.pos += 1
        return value

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def xid_prefix(self) -> int | None:
        """The xid that messages inside a Stream Start/Stop block carry first (protocol 2+)."""
        return self.u32() if self.in_stream else None

    def tuple_data(self) -> TupleData:
        """A TupleData: its column count, then each column's kind and text.

        Read in one loop over the bytes (:func:`tuple_fast`); anything it does not accept
        (a short message, a bad length, non-UTF-8, a binary or unknown kind) is read again by
        the checked reader, which names the problem and its byte."""
        fast = tuple_fast(self.data, self.pos)
        if fast is not None:
            values, self.pos = fast
            return values
        return self._tuple_data_checked()

    def _tuple_data_checked(self) -> TupleData:
        count = self.count(2, "column count")
        values: list[Datum] = []
        for _ in range(count):
            kind = self.u8()
            if kind == 0x74:  # 't'
                values.append(self.text(self.count(4, "value length")))
            elif kind == 0x6E:  # 'n'
                values.append(None)
            elif kind == 0x75:  # 'u'
                values.append(UNCHANGED)
            elif kind == 0x62:  # 'b'
                self.pos -= 1
                raise self.fail(
                    "carries a binary-format value: walrecover reads pgoutput's text mode, "
                    "read the slot with the option binary 'false'"
                )
            else:
                self.pos -= 1
                raise self.fail(f"has an unknown column kind {kind:#04x}")
        return tuple(values)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise self.fail(f"has {len(self.data) - self.pos} unexpected trailing bytes")


def tuple_fast(data: bytes, pos: int) -> tuple[TupleData, int] | None:
    """A TupleData at ``pos`` and the position after it, or None when anything is off (the
    checked reader then says what): the per-change hot path of pgoutput, so no method calls."""
    size = len(data)
    if pos + 2 > size:
        return None
    count = _I16.unpack_from(data, pos)[0]
    pos += 2
    if count < 0 or count > size - pos:
        return None
    values: list[Datum] = []
    append = values.append
    unpack = _I32.unpack_from
    try:
        for _ in range(count):
            kind = data[pos]
            if kind == 0x74:  # 't'
                length = unpack(data, pos + 1)[0]
                start = pos + 5
                pos = start + length
                if length < 0 or pos > size:
                    return None
                append(data[start:pos].decode("utf-8"))
            elif kind == 0x6E:  # 'n'
                append(None)
                pos += 1
            elif kind == 0x75:  # 'u'
                append(UNCHANGED)
                pos += 1
            else:
                return None
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    return tuple(values), pos


def row_fast(data: bytes, pos: int, names: tuple[str, ...]) -> dict[str, str | None] | None:
    """The TupleData at ``pos``, which must end the message, as column name -> text when it has
    exactly ``names``' columns, each text or NULL; None when anything is off or a column is
    unchanged TOAST (the checked path then reads it). An Insert's new row, the per-change hot
    path of pgoutput: :func:`tuple_fast` and :func:`~.rows.image` in one loop."""
    size = len(data)
    if pos + 2 > size or _I16.unpack_from(data, pos)[0] != len(names):
        return None
    pos += 2
    row: dict[str, str | None] = {}
    unpack = _I32.unpack_from
    try:
        for name in names:
            kind = data[pos]
            if kind == 0x74:  # 't'
                length = unpack(data, pos + 1)[0]
                start = pos + 5
                pos = start + length
                if length < 0 or pos > size:
                    return None
                row[name] = data[start:pos].decode("utf-8")
            elif kind == 0x6E:  # 'n'
                row[name] = None
                pos += 1
            else:
                return None
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    return row if pos == size else None
