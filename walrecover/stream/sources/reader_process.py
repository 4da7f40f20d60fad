"""The replication stream read in a second process, so both cores work on a recovery.

One Python process is one core (the GIL): reading the walsender's frames (libpq's COPY data,
the Begin/Commit bookkeeping, keepalives, status updates) took about a fifth of a 1M-change
recovery's client CPU, on the same core that decodes, applies and audits. :class:`ProcessStream`
runs the very same :class:`~.replication.ReplicationStream` in a child process (``python -c``)
and hands its messages to this one through a pipe, a few hundred at a time as one pickle of a
few lists (C-speed on both sides), so reading overlaps the rest. For a pgoutput recovery the
child also drops the other tables' row changes replay does not need
(:mod:`..decoders.pgoutput.others`) before they cost this process anything.

**Same messages, same notices.** The child records each call the stream makes on the
:class:`~..notices.NoticeLog` (a page starts or ends, a notice arrives) in line with the
messages, and this side replays them as it consumes, so at every message the log holds what it
would hold had the stream run here. The child reads ahead (the pipe's buffer, then it blocks),
but nothing it read is seen here before it is consumed. Progress is reported as consumed.

**The child never outlives the read.** It is killed when the read ends early or fails, when
:meth:`ProcessStream.close` runs, and by the kernel if this process dies (``PR_SET_PDEATHSIG``,
Linux), so the slot copy's walsender is released and the copy can be dropped. It ignores
SIGINT and SIGTERM (a Ctrl-C reaches the whole process group): this process decides how a read
ends. What fails in the child (a server error, a lost connection, text that is not UTF-8) is
raised here as the same exception, after the messages that came before it.

Starting the child costs about half a second (Python and psycopg), so only reads of at least
:data:`PROCESS_MIN_BYTES` of WAL use it; ``WALRECOVER_READER_PROCESS=always|never`` overrides
that (tests use ``always``; ``never`` keeps walrecover to one process).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import pickle
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import IO, Any, Final

from psycopg.conninfo import make_conninfo

from ...db import connect
from ..decoders.pgoutput.others import thin_others
from ..lsn import Lsn
from ..making import raw_message
from ..model import RawMessage
from ..notices import NoticeLog
from .base import ProgressCallback
from .replication import ReplicationStream, StreamEnded, _Notice

#: Reads of less WAL than this stay in this process (the child costs ~0.5 s to start).
PROCESS_MIN_BYTES: Final = 32 << 20
#: ``always``, ``never`` or unset (by size): whether the stream is read in a child process.
ENVIRONMENT: Final = "WALRECOVER_READER_PROCESS"
#: The child sends what it holds once it holds this many messages (or before it waits).
SEND_AT: Final = 512
#: The pipe's buffer, bytes: the child reads this far ahead at most (plus one batch).
PIPE_BYTES: Final = 1 << 20
#: The child's program (``-c``, not ``-m``: the package imports this module first).
_CHILD_MAIN: Final = f"import sys; from {__name__} import _child; _child(int(sys.argv[1]))"
_LENGTH = struct.Struct(">I")
_new_lsn = int.__new__
#: A batch: the messages' data, LSNs and xids, and (index, kind, argument) calls among them.
_Batch = tuple[list[Any], list[int], list[int | None], list[tuple[int, str, Any]]]
_START, _END, _NOTICE, _DONE, _FAILED = "start", "end", "notice", "done", "failed"


def use_process(start: Lsn | None, end: Lsn | None) -> bool:
    """Whether a read from ``start`` to ``end`` goes through a child process."""
    chosen = os.environ.get(ENVIRONMENT, "").strip().lower()
    if chosen in ("always", "never"):
        return chosen == "always"
    return int(end or 0) - int(start or 0) >= PROCESS_MIN_BYTES


class ProcessStream:
    """A :class:`~.replication.ReplicationStream` run in a child process (see the module doc).

    Takes the replication stream's arguments, with the source's conninfo instead of an open
    replication connection: the child opens its own. ``thin``: the wanted tables, if the child
    is to thin the other tables' row changes (:func:`..decoders.pgoutput.others.thin_others`)
    before they are sent.
    """

    def __init__(
        self,
        dsn: str,
        copy: str,
        *,
        plugin: str,
        options: Sequence[tuple[str, str]],
        start: Lsn,
        end: Lsn,
        notices: NoticeLog,
        binary: bool,
        block_size: int = 8192,
        cuts: Sequence[Lsn] = (),
        page_size: int = 20_000,
        progress: ProgressCallback | None = None,
        thin: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        self.notices = notices
        self.progress = progress
        self.start, self.end = start, end
        self._arguments: dict[str, Any] = {
            "dsn": make_conninfo(dsn, replication="database"),
            "copy": copy,
            "plugin": plugin,
            "options": list(options),
            "start": int(start),
            "end": int(end),
            "binary": binary,
            "block_size": block_size,
            "cuts": [int(c) for c in cuts],
            "page_size": page_size,
            "thin": None if thin is None else [tuple(t) for t in thin],
        }
        self._child: subprocess.Popen[bytes] | None = None

    def messages(self) -> Iterator[RawMessage]:
        """The copy's messages up to the end LSN, whole transactions only, as the stream
        yields them."""
        pipe = self._spawn()
        notices, progress = self.notices, self.progress
        start, end = int(self.start), int(self.end)
        total = max(end - start, 0)
        try:
            while True:
                datas, lsns, xids, controls = _receive(pipe, self._child)
                done = 0
                for at, kind, argument in controls:
                    yield from _messages(datas, lsns, xids, done, at)
                    done = at
                    if kind == _NOTICE:
                        notices.handler(_Notice(*argument))
                    elif kind == _START:
                        notices.start_page(Lsn(argument))
                    elif kind == _END:
                        notices.end_page(Lsn(argument))
                    elif kind == _DONE:
                        if progress is not None:
                            progress("read", total, total)
                        return
                    else:
                        raise _failure(argument)
                yield from _messages(datas, lsns, xids, done, len(datas))
                if progress is not None and lsns:
                    progress("read", min(max(lsns[-1] - start, 0), total), total)
        finally:
            pipe.close()
            self.close()

    def _spawn(self) -> IO[bytes]:
        """Start the child; the read end of its pipe."""
        read, write = os.pipe()
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        try:
            self._child = subprocess.Popen(
                [sys.executable, "-c", _CHILD_MAIN, str(write)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                pass_fds=(write,),
                close_fds=True,
            )
        finally:
            os.close(write)
        assert self._child.stdin is not None
        try:
            self._child.stdin.write(pickle.dumps(self._arguments))
            self._child.stdin.close()
        except OSError:
            pass  # the child died at once: its exit code is reported at the first read
        return os.fdopen(read, "rb", buffering=PIPE_BYTES)

    def close(self) -> None:
        """Stop the child if it still runs (a read that ended early or failed)."""
        child, self._child = self._child, None
        if child is None:
            return
        if child.poll() is None:
            with contextlib.suppress(OSError):
                child.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=10)


def _receive(pipe: IO[bytes], child: subprocess.Popen[bytes] | None) -> _Batch:
    """The next batch the child sent."""
    head = pipe.read(_LENGTH.size)
    if len(head) == _LENGTH.size:
        (size,) = _LENGTH.unpack(head)
        body = pipe.read(size)
        if len(body) == size:
            batch: _Batch = pickle.loads(body)
            return batch
    code = child.wait() if child is not None else None
    raise StreamEnded(f"the replication stream's reader process ended early (exit code {code})")


def _messages(
    datas: list[Any], lsns: list[int], xids: list[int | None], start: int, stop: int
) -> Iterator[RawMessage]:
    """The batch's messages ``start`` to ``stop``."""
    for data, lsn, xid in zip(datas[start:stop], lsns[start:stop], xids[start:stop], strict=True):
        yield raw_message(data, _new_lsn(Lsn, lsn), xid)


def _failure(sent: tuple[str, bytes | None]) -> BaseException:
    """The exception the child failed with, or a :class:`StreamEnded` saying what it was."""
    text, pickled = sent
    if pickled is not None:
        with contextlib.suppress(Exception):
            exc = pickle.loads(pickled)
            if isinstance(exc, BaseException):
                return exc
    return StreamEnded(text)


# -- the child -------------------------------------------------------------------------------


class _Outbox:
    """What the child sends: messages and, at their place among them, the notice log's calls.

    A batch goes as columns (the messages' data, LSNs and xids) plus the calls with the index
    of the message they precede: one pickle of a few lists, not one tuple per message, which
    made the parent's garbage collector walk every batch (a tenth of its reading time).
    """

    def __init__(self, fd: int) -> None:
        self.datas: list[bytes | str] = []
        self.lsns: list[int] = []
        self.xids: list[int | None] = []
        self.controls: list[tuple[int, str, Any]] = []
        self._out = os.fdopen(fd, "wb", buffering=0)

    def add(self, message: RawMessage) -> None:
        self.datas.append(message.data)
        self.lsns.append(int(message.lsn or 0))
        self.xids.append(message.xid)
        if len(self.datas) >= SEND_AT:
            self.send()

    def control(self, kind: str, argument: Any = None) -> None:
        self.controls.append((len(self.datas), kind, argument))

    def send(self) -> None:
        if self.datas or self.controls:
            batch = (self.datas, self.lsns, self.xids, self.controls)
            body = pickle.dumps(batch, pickle.HIGHEST_PROTOCOL)
            self._out.write(_LENGTH.pack(len(body)) + body)
            self.datas, self.lsns, self.xids, self.controls = [], [], [], []

    # The NoticeLog calls the stream makes, recorded in line with its messages.
    def start_page(self, lsn: Lsn) -> None:
        self.control(_START, int(lsn))

    def end_page(self, lsn: Lsn) -> None:
        self.control(_END, int(lsn))

    def handler(self, notice: Any) -> None:
        self.control(
            _NOTICE, (notice.severity_nonlocalized, notice.severity, notice.message_primary)
        )


class _ChildStream(ReplicationStream):
    """The stream, sending what it holds before it waits for the server."""

    outbox: _Outbox

    def _wait(self) -> None:
        self.outbox.send()
        super()._wait()


def _die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (a SIGKILLed walrecover)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl
            os._exit(1)


def _child(fd: int) -> None:
    """Read the stream described on stdin and send it through ``fd``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    arguments = pickle.loads(sys.stdin.buffer.read())
    outbox = _Outbox(fd)
    stream: _ChildStream | None = None
    try:
        thin = arguments.pop("thin")
        conn = connect(arguments.pop("dsn"), autocommit=True, role="source")
        stream = _ChildStream(
            conn,
            arguments.pop("copy"),
            notices=outbox,  # type: ignore[arg-type]
            start=Lsn(arguments.pop("start")),
            end=Lsn(arguments.pop("end")),
            cuts=[Lsn(c) for c in arguments.pop("cuts")],
            **arguments,
        )
        stream.outbox = outbox
        add = outbox.add
        messages = stream.messages()
        for message in messages if thin is None else thin_others(messages, thin):
            add(message)
        outbox.control(_DONE)
    except BaseException as exc:  # every failure is the parent's to report
        try:
            pickled: bytes | None = pickle.dumps(exc)
        except Exception:
            pickled = None
        outbox.control(_FAILED, (str(exc) or type(exc).__name__, pickled))
    with contextlib.suppress(OSError):
        outbox.send()
    if stream is not None:
        stream.close()
