"""The one family of errors walrecover raises, and the exit code each maps to.

Every error carries the facts a tired engineer needs (slot, LSN, table) as attributes and a
message that says what is wrong and what to do, on one line. The CLI maps them to exit codes in
one place (:data:`EXIT_CODES`); library users catch :class:`WalrecoverError`.
"""

from __future__ import annotations

from typing import Any


class WalrecoverError(Exception):
    """Base of every error walrecover raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, **facts: Any) -> None:
        super().__init__(message)
        self.message = message
        self.facts = facts
        for name, value in facts.items():
            setattr(self, name, value)

    def __str__(self) -> str:
        return self.message

    def extend(self, text: str) -> None:
        """Add ``text`` to the message (what a caller knows that the raiser did not)."""
        self.message += text
        self.args = (self.message,)


class ConnectionFailed(WalrecoverError):
    """A database could not be reached or the connection was lost."""


class SlotError(WalrecoverError):
    """The replication slot is missing, of the wrong plugin, or cannot be read."""


class PrivilegeError(WalrecoverError):
    """The role lacks a privilege the command needs."""


class ConfigurationError(WalrecoverError):
    """The server is not configured for logical decoding (wal_level, plugin missing)."""


class DecodeError(WalrecoverError):
    """A plugin message could not be decoded."""


class StreamCutShort(DecodeError):
    """The stream ends inside a transaction, as a capture does when pg_recvlogical was stopped
    (``--endpos``, killed) while writing one. Everything committed before it is whole: a capture
    reader leaves that transaction out with a warning; anything else treats it as damage.

    Facts: ``xid`` (None when the plugin does not print it), ``begun`` (where the transaction
    began: ``line N``, ``LSN X``, ``byte N``) and ``what`` (``transaction 745``).
    """


class CaptureSettingError(DecodeError):
    """A capture's value contradicts the output settings it was said to be printed with, or
    cannot be carried exactly under them (``--capture-setting``)."""


class TableNotInStream(WalrecoverError):
    """The requested table has no change in the stream."""


class TargetExists(WalrecoverError):
    """The target table exists and --force was not given."""


class TargetBusy(WalrecoverError):
    """Another recovery holds the target table."""


class PublishedTarget(WalrecoverError):
    """A publication in the target database publishes (or would publish) what walrecover
    builds there, and it cannot be built out of the publication's reach."""


class StopPointError(WalrecoverError):
    """The stop point is malformed or outside the stream."""


class WalUnavailable(WalrecoverError):
    """The source's WAL cannot be read (pg_walinspect missing, not allowed, or WAL removed).

    Raised by :mod:`walrecover.stream.walinspect`; recovery turns it into advice, not a failure.
    """


class ReplayError(WalrecoverError):
    """A change could not be applied to the rebuilt table."""


class LostChanges(WalrecoverError):
    """The plugin left changes of the rebuilt table out of the stream (and said so)."""


class BaselineError(WalrecoverError):
    """The baseline (``recover --baseline``) cannot be read, or its coverage by the stream
    cannot be proven."""


class LedgerError(WalrecoverError):
    """The ledger query or file is unusable."""


class ReconcileFailed(LedgerError):
    """The recovery finished, but its reconciliation could not run (the error names the
    ``walrecover reconcile`` command that runs it alone)."""


class AuditError(WalrecoverError):
    """The audit file could not be written or failed verification."""


class SwapError(WalrecoverError):
    """The rebuilt table cannot be put in place of the original (nothing was changed)."""


class ClusterError(WalrecoverError):
    """A throwaway PostgreSQL cluster could not be set up."""


class ProtectError(WalrecoverError):
    """``walrecover protect`` cannot keep a recovery point (a directory of another database or
    not walrecover's, a slot it cannot create), or a protect directory cannot be read."""


class MigrationParseError(WalrecoverError):
    """``walrecover guard``: the migration is not SQL PostgreSQL's parser accepts.

    Facts: ``line`` and ``column`` (1-based) of the position the parser names.
    """


class Interrupted(WalrecoverError):
    """The user interrupted the run (Ctrl-C, SIGTERM); what was committed is kept."""

    exit_code = 130


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libpq's can span several), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


#: Exit codes, documented in the README. 2 is click's usage error; 130 is Ctrl-C.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
#: The command finished, and its result differs: a reconciliation that does not match the
#: ledger, an audit that does not verify.
EXIT_DIFFERENCES = 3
#: The table was rebuilt, but walrecover cannot prove it equals the table at the stop point
#: (a plugin dropped changes, a value or column the plugin cannot carry, a default the WAL does
#: not hold): each reason is printed as a warning naming the table, the LSN or xid and what to do.
EXIT_UNPROVEN = 4
#: ``walrecover doctor``: every table is recoverable, but something needs attention soon (a
#: slot without a baseline, WAL about to be removed, a publication younger than the changes).
EXIT_WARNING = 5
#: ``walrecover doctor``: at least one table could not be recovered now.
EXIT_CRITICAL = 6
#: ``walrecover guard``: the migration destroys data of a table no recovery point is proven to
#: cover (or guard was not given ``-d`` to check it).
EXIT_DESTRUCTIVE = 7
EXIT_INTERRUPTED = 130


class Verdict(Exception):
    """A command that finished, printed its result, and is not a clean success.

    The library never raises one: it returns the result (``Reconciliation.matched``,
    ``RecoveryResult.exact``, ``Verification.ok``, ``Plan.ok``) and lets its caller decide.
    The command line raises one after printing the result, so that every exit code, errors and
    verdicts alike, is mapped in one place. ``lines`` go to stderr, each after ``walrecover: ``
    (none when the result printed on stdout already says it, as ``--json`` does).
    """

    exit_code: int = EXIT_ERROR

    def __init__(self, *lines: str, exit_code: int | None = None) -> None:
        super().__init__(*lines)
        self.lines = lines
        if exit_code is not None:
            self.exit_code = exit_code


class Failed(Verdict):
    """The result says the command did not do what was asked (checks that failed, a rehearsal
    whose recovery did not match): exit 1."""


class Differences(Verdict):
    """The result differs from what it is checked against (the ledger, the audit's own hashes):
    exit 3."""

    exit_code = EXIT_DIFFERENCES


class NotProvenExact(Verdict):
    """The table was rebuilt, but walrecover cannot prove it equals the table at the stop point
    (``RecoveryResult.unproven`` says why): exit 4."""

    exit_code = EXIT_UNPROVEN
