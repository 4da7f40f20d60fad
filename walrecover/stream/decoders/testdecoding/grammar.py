"""test_decoding's text grammar: the row kinds, quoted identifiers, type names, literals, a
row's columns, and the markers and exceptions a row's parse ends with (names private to the
package keep their underscore)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from ...lsn import Lsn
from ...model import Op

#: Types whose values test_decoding prints bare (``print_literal``), by ``format_type_be`` name.
_NUMBER_TYPES = frozenset(
    {"smallint", "integer", "bigint", "oid", "real", "double precision", "numeric"}
)
_BIT_TYPES = frozenset({"bit", "bit varying"})
_BARE_TYPES = _NUMBER_TYPES | _BIT_TYPES | {"boolean"}

#: What an integer, float or numeric output function can print.
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|NaN|-?Infinity")
_BITS = re.compile(r"[01]*")
#: ``quote_identifier`` leaves exactly these bare.
_BARE_IDENT = re.compile(r"[a-z_][a-z0-9_]*")
_BEGIN = re.compile(r"BEGIN(?: (\d+))?")
_COMMIT = re.compile(r"COMMIT(?: (\d+))?(?: \(at (.+)\))?")
_MESSAGE = re.compile(r"message: transactional: [01] prefix: .*?, sz: (\d+) content:", re.DOTALL)
_OPS = {"INSERT": Op.INSERT, "UPDATE": Op.UPDATE, "DELETE": Op.DELETE, "TRUNCATE": Op.TRUNCATE}
_TRUNCATE_FLAGS = {"(no-flags)", "restart_seqs", "cascade", "restart_seqs cascade"}
_STREAMING = (
    "opening a streamed block",
    "closing a streamed block",
    "streaming change",
    "streaming truncate",
    "streaming message",
    "committing streamed transaction",
    "aborting streamed",
    "preparing streamed transaction",
)
_TWO_PHASE = ("PREPARE TRANSACTION ", "COMMIT PREPARED ", "ROLLBACK PREPARED ")
#: ``PREPARE TRANSACTION 'gid'``, ``COMMIT PREPARED``, ``ROLLBACK PREPARED``: the gid through
#: ``quote_literal_cstr`` (``E'...'`` when it holds a backslash), then ``, txid N``, `` (at T)``.
_DECIDE = re.compile(
    r"(PREPARE TRANSACTION|COMMIT PREPARED|ROLLBACK PREPARED) (E?)'((?:[^']|'')*)'"
    r"(?:, txid (\d+))?(?: \(at (.+)\))?",
    re.DOTALL,
)
_NO_TUPLE = " (no-tuple-data)"
_NEW_TUPLE = " new-tuple:"
_OLD_KEY = " old-key:"


class _Unchanged:
    """The ``unchanged-toast-datum`` marker: the column kept its (TOASTed) value."""

    def __repr__(self) -> str:
        return "unchanged-toast-datum"


_UNCHANGED = _Unchanged()

#: One printed column: name, type name, canonical text (or None, or the unchanged marker).
_Item = tuple[str, str, str | _Unchanged | None]


class _Malformed(Exception):
    """The row does not follow test_decoding's grammar (the reason is the message)."""


class _Incomplete(Exception):
    """The row ends inside a quote: in a capture file, the rest is on the next lines."""

    def __init__(self, quote: str) -> None:
        super().__init__(f"the row ends inside a {quote}-quoted text")
        self.quote = quote


def _identifier(text: str, pos: int) -> tuple[str, int]:
    """One ``quote_identifier`` output starting at ``pos``: (name, position after it)."""
    if pos < len(text) and text[pos] == '"':
        parts: list[str] = []
        start = pos + 1
        while True:
            end = text.find('"', start)
            if end < 0:
                raise _Incomplete('"')
            if text.startswith('""', end):
                parts.append(text[start : end + 1])
                start = end + 2
                continue
            parts.append(text[start:end])
            name = "".join(parts)
            if not name:
                raise _Malformed(f"an empty quoted identifier at character {pos}")
            return name, end + 1
    match = _BARE_IDENT.match(text, pos)
    if match is None:
        raise _Malformed(f"an identifier was expected at character {pos}")
    return match.group(), match.end()


def _qualified(text: str, pos: int) -> tuple[tuple[str, str], int]:
    """``schema.table`` as ``quote_qualified_identifier`` prints it."""
    schema, pos = _identifier(text, pos)
    if not text.startswith(".", pos):
        raise _Malformed(f"'.' between schema and table was expected at character {pos}")
    name, pos = _identifier(text, pos + 1)
    return (schema, name), pos


def _type_name(text: str, pos: int) -> tuple[str, int]:
    """The type between ``[`` and ``]:`` (it may hold brackets and quoted parts)."""
    i, n = pos, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            end = i + 1
            while True:
                end = text.find('"', end)
                if end < 0:
                    raise _Incomplete('"')
                if text.startswith('""', end):
                    end += 2
                    continue
                break
            i = end + 1
        elif ch == "]" and text.startswith("]:", i):
            if i == pos:
                raise _Malformed(f"an empty type name at character {pos}")
            return text[pos:i], i + 2
        elif ch == "\n":
            break
        else:
            i += 1
    raise _Malformed(f"the type name starting at character {pos} is not closed by ']:'")


def _literal(text: str, pos: int) -> tuple[str, int]:
    """A single-quoted literal at ``pos`` (``''`` stands for one quote): (content, end)."""
    parts: list[str] = []
    start = pos + 1
    while True:
        end = text.find("'", start)
        if end < 0:
            raise _Incomplete("'")
        if text.startswith("''", end):
            parts.append(text[start : end + 1])
            start = end + 2
            continue
        parts.append(text[start:end])
        return "".join(parts), end + 1


def _value(text: str, pos: int, type_name: str) -> tuple[str | _Unchanged | None, int]:
    """One printed value, as canonical text; checked against what its type can print."""
    if text.startswith("'", pos):
        if type_name in _BARE_TYPES:
            raise _Malformed(f"a quoted value for type {type_name} at character {pos}")
        return _literal(text, pos)
    if text.startswith("B'", pos):
        end = text.find("'", pos + 2)
        if end < 0 or not _BITS.fullmatch(text, pos + 2, end):
            raise _Malformed(f"a malformed bit string at character {pos}")
        if type_name not in _BIT_TYPES:
            raise _Malformed(f"a bit string for type {type_name} at character {pos}")
        return text[pos + 2 : end], end + 1
    end = text.find(" ", pos)
    end = len(text) if end < 0 else end
    token = text[pos:end]
    if token == "null":
        return None, end
    if token == "unchanged-toast-datum":
        return _UNCHANGED, end
    if token in ("true", "false"):
        if type_name != "boolean":
            raise _Malformed(f"{token} for type {type_name} at character {pos}")
        return ("t" if token == "true" else "f"), end
    if _NUMBER.fullmatch(token):
        if type_name not in _NUMBER_TYPES:
            raise _Malformed(f"a bare number for type {type_name} at character {pos}")
        return token, end
    raise _Malformed(f"no value at character {pos}")


def _tuple(text: str, pos: int, *, before_new_tuple: bool) -> tuple[list[_Item] | None, int]:
    """The columns printed from ``pos``; None for ``(no-tuple-data)``.

    With ``before_new_tuple`` (an UPDATE's old key) the tuple ends at `` new-tuple:``; otherwise
    it runs to the end of the row.
    """
    if text.startswith(_NO_TUPLE, pos) and (
        pos + len(_NO_TUPLE) == len(text)
        or (before_new_tuple and text.startswith(_NEW_TUPLE, pos + len(_NO_TUPLE)))
    ):
        return None, pos + len(_NO_TUPLE)
    items: list[_Item] = []
    seen: set[str] = set()
    n = len(text)
    while pos < n:
        if before_new_tuple and text.startswith(_NEW_TUPLE, pos):
            return items, pos
        if text[pos] != " ":
            raise _Malformed(f"a space before the next column was expected at character {pos}")
        name, pos = _identifier(text, pos + 1)
        if not text.startswith("[", pos):
            raise _Malformed(f"'[' after column {name!r} was expected at character {pos}")
        type_name, pos = _type_name(text, pos + 1)
        value, pos = _value(text, pos, type_name)
        if name in seen:
            raise _Malformed(f"column {name!r} is printed twice")
        seen.add(name)
        items.append((name, type_name, value))
    if before_new_tuple:
        raise _Malformed("the old key is not followed by 'new-tuple:'")
    return items, pos


def _xid(text: str | None, row_xid: int | None) -> int | None:
    """The printed xid (include-xids), else the one the SQL interface gave with the row."""
    return int(text) if text is not None else row_xid


def _commit_time(text: str) -> datetime:
    """``timestamptz_to_str`` output (always ISO, in the decoding session's time zone)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _Malformed(f"commit time {text!r} is not an ISO timestamp") from None
    if moment.tzinfo is None:
        raise _Malformed(f"commit time {text!r} has no time zone")
    return moment


def _utf8_length(text: str) -> int:
    """Bytes of ``text`` in UTF-8 (a message's ``sz`` counts bytes), whatever it holds."""
    try:
        return len(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return len(text.encode("utf-8", "surrogatepass"))


def _where(lsn: Lsn | None, line: int | None) -> str:
    if lsn is not None:
        return f"at LSN {lsn}"
    return f"at line {line}" if line is not None else "without LSN"


def _new_image(
    items: Sequence[_Item] | None, op: Op
) -> tuple[dict[str, str | None] | None, frozenset[str]]:
    """The new row as column -> text, and the columns an UPDATE left as unchanged TOAST."""
    if items is None:
        return None, frozenset()
    new: dict[str, str | None] = {}
    unchanged: set[str] = set()
    for column, _, value in items:
        if isinstance(value, _Unchanged):
            if op is not Op.UPDATE:
                raise _Malformed(f"{op.name} with an unchanged-toast-datum in {column!r}")
            unchanged.add(column)
        else:
            new[column] = value
    return new, frozenset(unchanged)
