"""Fuzzing: whatever the decoders and the capture framing are fed, they raise only DecodeError.

CI runs a bounded number of examples per test (200); a long run is one command:

    WALRECOVER_FUZZ_EXAMPLES=100000 .venv/bin/pytest tests/test_fuzz.py

The decoder test files already fuzz random text and bytes, truncated real rows, and (pgoutput)
random bodies behind real type bytes and byte-damaged sequences of real messages. This module
covers what they do not:

- wal2json format 2, which had no fuzzing: random JSON, and real messages whose fields are
  replaced by random JSON, deleted or duplicated;
- structure-aware *streams* for every decoder: windows of real recorded streams with messages
  dropped, duplicated, swapped and moved, one message damaged at its own level (a JSON field for
  wal2json 1 and 2, a token for test_decoding, an integer field for pgoutput), LSN and xid kept
  or lost as in a capture file;
- the capture framing: :func:`walrecover.stream.decoders.pgoutput.split_capture` on random bytes and
  on damaged real captures, and :class:`walrecover.stream.sources.CaptureSource` reading random and
  damaged files (newline framing, UTF-8, then the decoder) for every plugin;
- JSON nested deeper than Python's recursion limit.

The inputs come from the recorded real plugin output in ``fixtures/``.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from helpers import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walrecover.errors import DecodeError
from walrecover.stream.decoders import decode_all, make_decoder
from walrecover.stream.decoders.pgoutput import split_capture
from walrecover.stream.lsn import Lsn
from walrecover.stream.model import RawMessage
from walrecover.stream.sources import CaptureSource

EXAMPLES = int(os.environ.get("WALRECOVER_FUZZ_EXAMPLES", "200"))
#: The fuzzing profile: ``max_examples`` from WALRECOVER_FUZZ_EXAMPLES, no deadline (a long
#: run on a busy machine must not fail on timing), every health check off (large inputs are
#: the point).
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
settings.register_profile("walrecover-fuzz", FUZZ)

#: Scratch files for CaptureSource (one directory for the whole run; examples overwrite it).
SCRATCH = Path(tempfile.mkdtemp(prefix="walrecover-fuzz-"))


def only_decode_errors(run: Callable[[], object]) -> None:
    """Run ``run``; a DecodeError is a correct answer, anything else fails the example."""
    with contextlib.suppress(DecodeError):
        run()


def decode(plugin: str, options: dict[str, str], messages: Sequence[RawMessage]) -> None:
    decoder = make_decoder(plugin, options)
    for _ in decode_all(decoder, messages):
        pass


# -- recorded real output ----------------------------------------------------------------------


def _jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _text_stream(name: str) -> list[RawMessage]:
    return [
        RawMessage(row["data"], Lsn.parse(row["lsn"]), int(row["xid"]))
        for row in _jsonl(FIXTURES / name / "workload.jsonl")
    ]


def _pgoutput_stream(version: int) -> list[RawMessage]:
    return [
        RawMessage(bytes.fromhex(row["hex"]), Lsn.parse(row["lsn"]), int(row["xid"]))
        for row in _jsonl(FIXTURES / "pgoutput" / f"v{version}.jsonl.gz")
    ]


W2J = _text_stream("wal2json")
W2J_V1 = _text_stream("wal2json_v1")
TD = _text_stream("test_decoding")
PGO = {version: _pgoutput_stream(version) for version in (1, 2, 3)}

#: (plugin, options, stream) for every decoder and protocol the fixtures hold.
STREAMS: dict[str, tuple[str, dict[str, str], list[RawMessage]]] = {
    "wal2json-v2": ("wal2json", {}, W2J),
    "wal2json-v1": ("wal2json", {"format-version": "1"}, W2J_V1),
    "test_decoding": ("test_decoding", {}, TD),
    **{f"pgoutput-v{v}": ("pgoutput", {"proto_version": str(v)}, PGO[v]) for v in sorted(PGO)},
}


def test_the_fixtures_decode_cleanly() -> None:
    """The control: undamaged, every recorded stream decodes without error."""
    for plugin, options, stream in STREAMS.values():
        assert len(stream) > 20
        decode(plugin, options, stream)
    assert len(W2J_V1_DOCUMENTS) > 10
    decode("wal2json", {"format-version": "1"}, [RawMessage(d) for d in W2J_V1_DOCUMENTS])


# -- strategies ----------------------------------------------------------------------------------

W2J_KEYS = (
    "action",
    "xid",
    "lsn",
    "nextlsn",
    "timestamp",
    "schema",
    "table",
    "columns",
    "identity",
    "pk",
    "name",
    "type",
    "typeoid",
    "value",
    "change",
    "kind",
    "columnnames",
    "columntypes",
    "columnvalues",
    "oldkeys",
    "keynames",
    "keytypes",
    "keyvalues",
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["B", "C", "I", "U", "D", "T", "M", "0/0", "FFFFFFFF/FFFFFFFF", "1/2/3", ""])
    | st.sampled_from(["2024-05-01 10:00:00+00", "infinity", "integer", "numeric(12,2)", "text"])
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(W2J_KEYS) | st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=20,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON value (the root included)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _mutate_json(draw: st.DrawFn, value: Any) -> Any:
    """One structural change to a JSON value: replace, delete or duplicate what a path names."""
    path = draw(st.sampled_from(_paths(value)))
    if not path:
        return draw(JSON_VALUES)
    parent = value
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    action = draw(st.sampled_from(["replace", "delete", "duplicate", "retype"]))
    if action == "replace":
        parent[last] = draw(JSON_VALUES)
    elif action == "retype":
        parent[last] = draw(
            st.sampled_from([[], {}, "", 0, None, [parent[last]], str(parent[last])])
        )
    elif action == "delete":
        del parent[last]
    elif isinstance(parent, list):
        parent.insert(last, parent[last])
    else:
        parent[draw(st.sampled_from(W2J_KEYS))] = parent[last]
    return value


@st.composite
def mutated_json_text(draw: st.DrawFn, text: str) -> str:
    """``text`` (one JSON document) with one to three structural changes."""
    value = json.loads(text)
    for _ in range(draw(st.integers(1, 3))):
        value = _mutate_json(draw, value)
    return json.dumps(value, ensure_ascii=draw(st.booleans()))


TD_TOKENS = st.sampled_from(
    [
        "null",
        "'",
        "''",
        "[",
        "]",
        ":",
        '"',
        "unchanged-toast-datum",
        "old-key:",
        "new-tuple:",
        "INSERT:",
        "UPDATE:",
        "DELETE:",
        "TRUNCATE:",
        "(no-flags)",
        "table",
        "BEGIN",
        "COMMIT",
        "(at",
        "2024-05-01 10:00:00+00)",
        "[integer]",
        "[text]",
        "[numeric]",
        "-1",
        "99999999999999999999",
    ]
)


@st.composite
def mutated_test_decoding_line(draw: st.DrawFn, line: str) -> str:
    """A test_decoding line with tokens (between spaces, colons, brackets, quotes) replaced,
    deleted or duplicated."""
    parts = re.split(r"([ :\[\]'\"])", line)
    for _ in range(draw(st.integers(1, 3))):
        if not parts:
            break
        index = draw(st.integers(0, len(parts) - 1))
        action = draw(st.sampled_from(["replace", "delete", "duplicate"]))
        if action == "replace":
            parts[index] = draw(TD_TOKENS | st.text(max_size=8))
        elif action == "delete":
            del parts[index]
        else:
            parts.insert(index, parts[index])
    return "".join(parts)


#: Integers that break parsers: zero, one, signs, sizes, limits.
def _boundaries(width: int) -> list[int]:
    top = (1 << (8 * width)) - 1
    return [0, 1, 2, 0x7F, 0x80, top >> 1, (top >> 1) + 1, top - 1, top]


@st.composite
def mutated_pgoutput_message(draw: st.DrawFn, message: bytes) -> bytes:
    """A pgoutput message with integer fields overwritten by boundary values, or bytes cut,
    inserted or dropped."""
    data = bytearray(message)
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["integer", "integer", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "integer":
            width = draw(st.sampled_from([1, 2, 4, 8]))
            value = draw(st.sampled_from(_boundaries(width)) | st.integers(0, (1 << 8 * width) - 1))
            data[at : at + width] = value.to_bytes(width, "big")
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=6))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 6))]
        else:
            del data[at:]
    return bytes(data)


def _mutate_message(
    draw: st.DrawFn, plugin: str, options: dict[str, str], data: str | bytes
) -> str | bytes:
    if isinstance(data, bytes):
        return draw(mutated_pgoutput_message(data))
    if plugin == "test_decoding":
        return draw(mutated_test_decoding_line(data))
    try:
        json.loads(data)
    except ValueError:  # a wal2json format-1 chunk is no whole JSON document
        cut = draw(st.integers(0, len(data)))
        return data[:cut] + draw(st.text(max_size=8)) + data[cut:]
    return draw(mutated_json_text(data))


@st.composite
def damaged_stream(draw: st.DrawFn, name: str) -> list[RawMessage]:
    """A window of a real stream with messages dropped, duplicated, swapped or moved, one of
    them damaged at its own level, and LSNs and xids kept, lost or shifted."""
    plugin, options, stream = STREAMS[name]
    start = draw(st.integers(0, len(stream) - 1))
    window = list(stream[start : start + draw(st.integers(1, 60))])
    for _ in range(draw(st.integers(0, 4))):
        if not window:
            break
        i = draw(st.integers(0, len(window) - 1))
        j = draw(st.integers(0, len(window) - 1))
        action = draw(st.sampled_from(["drop", "duplicate", "swap", "move"]))
        if action == "drop":
            del window[i]
        elif action == "duplicate":
            window.insert(j, window[i])
        elif action == "swap":
            window[i], window[j] = window[j], window[i]
        else:
            window.insert(j, window.pop(i))
    damage_one: bool = draw(st.booleans())
    if window and damage_one:
        i = draw(st.integers(0, len(window) - 1))
        message = window[i]
        window[i] = RawMessage(
            _mutate_message(draw, plugin, options, message.data), message.lsn, message.xid
        )
    framing = draw(st.sampled_from(["as-read", "capture", "shifted"]))
    if framing == "capture":  # a pg_recvlogical file carries no LSN and no xid
        window = [RawMessage(m.data) for m in window]
    elif framing == "shifted":
        delta = draw(st.integers(-(1 << 20), 1 << 20))
        window = [
            RawMessage(m.data, Lsn(max(0, min(int(m.lsn or 0) + delta, (1 << 64) - 1))), m.xid)
            for m in window
        ]
    return window


# -- wal2json format 2 (no fuzzing elsewhere) ------------------------------------------------------

W2J_TEXTS = [str(m.data) for m in W2J]


@FUZZ
@given(value=JSON_VALUES, framed=st.booleans())
def test_wal2json_v2_random_json(value: Any, framed: bool) -> None:
    text = json.dumps(value)
    messages = [text]
    if framed:
        messages = ['{"action":"B","xid":1,"lsn":"0/10","nextlsn":"0/20"}', text, '{"action":"C"}']
    only_decode_errors(
        lambda: decode("wal2json", {}, [RawMessage(m, Lsn(16), 1) for m in messages])
    )


@FUZZ
@given(data=st.data(), index=st.integers(0, len(W2J_TEXTS) - 1), framed=st.booleans())
def test_wal2json_v2_real_messages_with_mutated_fields(
    data: st.DataObject, index: int, framed: bool
) -> None:
    text = data.draw(mutated_json_text(W2J_TEXTS[index]))
    begin = next(t for t in W2J_TEXTS if '"action":"B"' in t)
    messages = [begin, text, '{"action":"C"}'] if framed else [text]
    only_decode_errors(lambda: decode("wal2json", {}, [RawMessage(m) for m in messages]))


@FUZZ
@given(text=st.text(max_size=200), raw=st.binary(max_size=200))
def test_wal2json_v2_random_text_and_bytes(text: str, raw: bytes) -> None:
    only_decode_errors(lambda: decode("wal2json", {}, [RawMessage(text, Lsn(1), 1)]))
    only_decode_errors(lambda: decode("wal2json", {}, [RawMessage(raw)]))


def _v1_documents() -> list[str]:
    """The format-1 stream's whole documents (its rows are chunks of one per transaction)."""
    documents, chunks = [], []
    for message in W2J_V1:
        chunks.append(str(message.data))
        try:
            json.loads("".join(chunks))
        except ValueError:
            continue
        documents.append("".join(chunks))
        chunks = []
    return documents


W2J_V1_DOCUMENTS = _v1_documents()


@FUZZ
@given(data=st.data(), index=st.integers(0, len(W2J_V1_DOCUMENTS) - 1))
def test_wal2json_v1_documents_with_mutated_fields(data: st.DataObject, index: int) -> None:
    text = data.draw(mutated_json_text(W2J_V1_DOCUMENTS[index]))
    options = {"format-version": "1"}
    only_decode_errors(lambda: decode("wal2json", options, [RawMessage(text)]))
    only_decode_errors(lambda: decode("wal2json", options, [RawMessage(text, Lsn(1), 7)]))


# -- every decoder: damaged real streams ---------------------------------------------------------


@pytest.mark.parametrize("name", STREAMS)
def test_damaged_real_streams(name: str) -> None:
    @FUZZ
    @given(messages=damaged_stream(name))
    def check(messages: list[RawMessage]) -> None:
        plugin, options, _ = STREAMS[name]
        only_decode_errors(lambda: decode(plugin, options, messages))

    check()


# -- deep nesting ----------------------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("plugin", "options", "text"),
    [
        pytest.param("wal2json", {}, DEEP, id="wal2json-v2"),
        pytest.param("wal2json", {}, '{"action":"B","xid":' + DEEP + "}", id="wal2json-v2-field"),
        pytest.param(
            "wal2json", {"format-version": "1"}, '{"change":' + DEEP + "}", id="wal2json-v1"
        ),
    ],
)
def test_json_nested_deeper_than_the_recursion_limit(
    plugin: str, options: dict[str, str], text: str
) -> None:
    with pytest.raises(DecodeError):
        decode(plugin, options, [RawMessage(text, Lsn(1), 1)])


# -- the capture framing ---------------------------------------------------------------------------


def _capture_of(messages: Sequence[RawMessage]) -> bytes:
    """What pg_recvlogical -f writes: each message, then a newline."""
    return b"".join(
        (m.data if isinstance(m.data, bytes) else m.data.encode()) + b"\n" for m in messages
    )


CAPTURES: dict[str, tuple[str, dict[str, str], bytes]] = {
    "wal2json-v2": ("wal2json", {}, _capture_of(W2J)),
    "wal2json-v1": (
        "wal2json",
        {"format-version": "1"},
        (FIXTURES / "wal2json_v1" / "capture.txt").read_bytes(),
    ),
    "test_decoding": (
        "test_decoding",
        {},
        (FIXTURES / "test_decoding" / "capture.txt").read_bytes(),
    ),
    **{
        f"pgoutput-v{v}": ("pgoutput", {"proto_version": str(v)}, _capture_of(PGO[v]))
        for v in sorted(PGO)
    },
}


def read_capture(path: Path, plugin: str, options: dict[str, str]) -> None:
    """Everything ``walrecover recover --from-file`` does with a file before replay."""
    decoder = make_decoder(plugin, options)
    with CaptureSource(path, plugin, options=options) as source:
        for _ in decode_all(decoder, source.messages()):
            pass


def test_the_captures_read_cleanly() -> None:
    """The control: every undamaged capture frames and decodes without error."""
    for name, (plugin, options, data) in CAPTURES.items():
        path = SCRATCH / f"control-{name}"
        path.write_bytes(data)
        read_capture(path, plugin, options)


@FUZZ
@given(data=st.binary(max_size=300), version=st.integers(1, 4))
def test_split_capture_random_bytes(data: bytes, version: int) -> None:
    only_decode_errors(lambda: list(split_capture(data, version)))


@st.composite
def damaged_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with bytes overwritten, inserted or deleted, or cut short."""
    damaged = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(len(damaged) - 1, 0)))
        action = draw(st.sampled_from(["overwrite", "insert", "delete", "newline", "cut"]))
        if action == "overwrite":
            piece = draw(st.binary(min_size=1, max_size=8))
            damaged[at : at + len(piece)] = piece
        elif action == "insert":
            damaged[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del damaged[at : at + draw(st.integers(1, 16))]
        elif action == "newline":
            damaged[at:at] = b"\n"
        else:
            del damaged[at:]
    return bytes(damaged)


@pytest.mark.parametrize("name", [n for n in CAPTURES if n.startswith("pgoutput")])
def test_split_capture_damaged_real_captures(name: str) -> None:
    _, options, data = CAPTURES[name]
    version = int(options["proto_version"])

    @FUZZ
    @given(damaged=damaged_bytes(data))
    def check(damaged: bytes) -> None:
        only_decode_errors(lambda: list(split_capture(damaged, version)))

    check()


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_source_on_damaged_real_captures(name: str) -> None:
    plugin, options, data = CAPTURES[name]

    @FUZZ
    @given(damaged=damaged_bytes(data))
    def check(damaged: bytes) -> None:
        path = SCRATCH / f"damaged-{name}"
        path.write_bytes(damaged)
        only_decode_errors(lambda: read_capture(path, plugin, options))

    check()


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_source_on_random_files(name: str) -> None:
    plugin, options, _ = CAPTURES[name]

    @FUZZ
    @given(content=st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
    def check(content: bytes) -> None:
        path = SCRATCH / f"random-{name}"
        path.write_bytes(content)
        only_decode_errors(lambda: read_capture(path, plugin, options))

    check()
