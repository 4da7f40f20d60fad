"""Reading capture files: a last line without its newline is never read into memory.

pg_recvlogical stopped in the middle of a message leaves a last line without a newline; a
message can be gigabytes long. walrecover finds that line from the end of the file when it opens
the capture and stops before it, so memory stays small however long it is (before, a 2 GB line
was read whole: 4.4 GB before the error). Peak memory is measured in a subprocess
(``ru_maxrss``), against the same command on a small cut capture.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli

from walrecover.errors import StreamCutShort
from walrecover.stream.decoders import make_decoder
from walrecover.stream.sources import CaptureSource

LINES = [
    b"BEGIN 700",
    b"table public.t: INSERT: id[integer]:1 note[text]:'one'",
    b"COMMIT 700",
]

MEASURE = """
import resource, sys
from walrecover.cli import main
try:
    main(["decode", "--from-file", sys.argv[1], "--plugin", "test_decoding"])
except SystemExit as exc:
    code = exc.code
print(code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def _cut_capture(path: Path, tail: int) -> Path:
    """Three complete lines, then ``tail`` bytes of a message without its newline."""
    with open(path, "wb") as out:
        out.write(b"\n".join(LINES) + b"\n")
        out.write(b"table public.t: INSERT: id[integer]:2 note[text]:'")
        block = b"x" * (1 << 20)
        left = tail
        while left > 0:
            out.write(block[: min(left, len(block))])
            left -= len(block)
    return path


def _peak_kib(path: Path) -> tuple[int, int, str]:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    last = done.stderr.strip().splitlines()[-1]
    code, peak = last.split()
    return int(code), int(peak), done.stderr


def test_a_huge_cut_line_is_not_read(tmp_path: Path) -> None:
    """A 200 MB last line without a newline: the same warning, in the memory of a small one."""
    small = _cut_capture(tmp_path / "small.capture", 1000)
    huge = _cut_capture(tmp_path / "huge.capture", 200 << 20)
    small_code, small_peak, _ = _peak_kib(small)
    huge_code, huge_peak, stderr = _peak_kib(huge)
    assert small_code == huge_code == 0
    assert f"{huge} ends inside a transaction whose first message is cut at line 4" in stderr
    # Reading the line would need 200 MB at least; allow 20 MB of noise.
    assert huge_peak - small_peak < 20 * 1024, (small_peak, huge_peak)


def test_complete_lines_before_the_cut_are_read(tmp_path: Path) -> None:
    """What comes before the cut is read; decoding then says the file ends inside a message."""
    path = _cut_capture(tmp_path / "cut.capture", 10)
    source = CaptureSource(path, "test_decoding")
    with source:
        assert source.cut is not None and source.cut.length > 10
        read = [message.data for message in source.messages()]
        assert read == [line.decode() for line in LINES]
        assert source.position == 4
        with pytest.raises(StreamCutShort, match=r"ends inside .* at line 4"):
            list(source.decoded(make_decoder("test_decoding")))


@pytest.mark.parametrize("content", [b"\n".join(LINES) + b"\n", b"\n".join(LINES)])
def test_a_capture_without_any_cut_or_only_a_cut(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "c.capture"
    path.write_bytes(content)
    result = cli("decode", "--from-file", str(path), "--plugin", "test_decoding")
    if content.endswith(b"\n"):
        assert result.exit_code == 0, result.stderr
        assert '"new": {"id": "1", "note": "one"}' in result.stdout
    else:  # a cut COMMIT line: the transaction never completes, so it is left out
        assert result.exit_code == 0, result.stderr
        assert result.stdout == ""
        assert "ends inside transaction 700 (begun at line 1) at line 3" in result.stderr


def test_a_file_that_is_one_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "one.capture"
    path.write_bytes(b"x" * (3 << 20))  # longer than one backwards read
    source = CaptureSource(path, "wal2json")
    source.open()
    assert source.cut is not None and (source.cut.offset, source.cut.length) == (0, 3 << 20)
    assert list(source.messages()) == []
    with pytest.raises(StreamCutShort, match=r"at line 1; its last 3145728 bytes"):
        list(source.decoded(make_decoder("wal2json")))
