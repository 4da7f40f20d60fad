"""Log sequence numbers: parse and print ``16/B374D848``, compare as integers."""

from __future__ import annotations

import re

from ..errors import StopPointError

_HEX = frozenset("0123456789abcdefABCDEF")
_LSN_RE = re.compile(r"^\s*([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\s*$")
#: ``int.__new__``, called directly on the per-change path (no ``super()`` look-up).
_new = int.__new__


class Lsn(int):
    """A WAL position. An ``int`` subclass, so it orders, hashes and subtracts as one."""

    __slots__ = ()

    def __new__(cls, value: int | str) -> Lsn:
        if isinstance(value, str):
            return cls.parse(value)
        if value < 0 or value >= 1 << 64:
            raise StopPointError(f"LSN {value} is out of range: an LSN is a 64-bit position")
        return super().__new__(cls, value)

    @classmethod
    def parse(cls, text: str) -> Lsn:
        """Parse PostgreSQL's ``X/X`` notation; raise :class:`StopPointError` if malformed."""
        high_text, slash, low_text = text.partition("/")
        if (
            slash
            and 0 < len(high_text) <= 8
            and 0 < len(low_text) <= 8
            and _HEX.issuperset(high_text)
            and _HEX.issuperset(low_text)
        ):
            try:
                return _new(cls, (int(high_text, 16) << 32) | int(low_text, 16))
            except ValueError:
                pass
        match = _LSN_RE.match(text)
        if match is None:
            raise StopPointError(
                f"{text!r} is not an LSN: write it as PostgreSQL prints it, e.g. 16/B374D848"
            )
        high, low = (int(part, 16) for part in match.groups())
        return super().__new__(cls, (high << 32) | low)

    def __str__(self) -> str:
        return f"{self >> 32:X}/{self & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"Lsn('{self}')"


def parse_optional(text: str | None) -> Lsn | None:
    """Parse an LSN that may be missing (None or empty)."""
    return Lsn.parse(text) if text else None
