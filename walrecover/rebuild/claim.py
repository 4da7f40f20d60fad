"""Claiming the target for a recovery, and the resume policy.

:func:`claim` is the one call replay makes before it reads the stream: it takes the target's
lock, checks the role's privileges, sets up the progress table, and then decides from the
target's progress row whether this run starts afresh (dropping an existing table only with
``--force``), resumes an unfinished recovery of the same command and source (refusing a slot
copy that starts past what the interrupted run read), or only publishes the audit of a recovery
that finished. :class:`Resume` then tells, transaction by transaction, what the interrupted run
already applied (see "A resume must not start past what was read" and "Progress in the
target" in docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ReplayError, SlotError, TargetExists
from ..stream.lsn import Lsn
from ..stream.model import Begin
from .applied import Txn
from .preflight import command_differences
from .progress import Progress
from .target import Target


@dataclass(frozen=True, slots=True)
class Claimant:
    """The recovery that claims a target: a run resumes only the same one."""

    #: The source and the stop point, as the progress row records them.
    source: str
    #: The audit's path, or None.
    audit: str | None
    #: The command's identity (JSON, see :mod:`.preflight`).
    command: str | None
    #: Where this run's copy of the slot starts (None for a capture).
    stream_start: Lsn | None


@dataclass(frozen=True, slots=True)
class Claim:
    """How this run may use the target."""

    #: The unfinished (or finished, see ``finished``) recovery this run goes on from, or None
    #: for a fresh start.
    resumed: Progress | None = None
    #: Everything was applied by an earlier run: only its audit is left to publish.
    finished: bool = False
    #: What the user must know (a crash emptied an unlogged build, which starts again).
    warnings: tuple[str, ...] = ()

    @property
    def checkpoint(self) -> Lsn | None:
        """Where the committed work of the resumed recovery ends (the audit's resume point)."""
        if self.resumed is None:
            return None
        return self.resumed.last_commit_lsn or Lsn(self.resumed.position)


def claim(
    target: Target,
    claimant: Claimant,
    *,
    force: bool,
    audit_unpublished: Callable[[], bool] | None = None,
) -> Claim:
    """Lock the target, check it is free (or resumable), and set up the progress table.

    ``audit_unpublished`` tells whether the audit holds sealed parts an earlier run did not
    publish (None without an audit)."""
    target.lock()
    target.check_privileges(force=force)
    target.ensure_bookkeeping()
    exists = target.exists()
    progress = target.read_progress()
    warnings: tuple[str, ...] = ()
    if exists and progress is None and target.reset_by_crash():
        target.drop()
        target.conn.commit()
        exists = False
        warnings = (
            f"the server crashed (or stopped without a clean shutdown) during an earlier run,"
            f" which emptied the unlogged {target.into} it was building and its progress: "
            f"{target.into} is rebuilt from the start",
        )
    if (
        exists
        and progress is not None
        and progress.complete
        and not force
        and audit_unpublished is not None
        and progress.source == claimant.source
        and progress.audit == claimant.audit
        and audit_unpublished()
    ):
        # Killed after the last commit, before the audit was published: publish it now.
        return Claim(progress, finished=True, warnings=warnings)
    if exists and progress is not None and not progress.complete and not force:
        _check_same(target, claimant, progress)
        _check_slot_position(target, claimant, progress)
        # Begun in logged mode before a publication reached it: go on unpublished.
        target.make_unlogged()
        target.conn.commit()
        return Claim(progress, warnings=warnings)
    if exists and not force:
        raise TargetExists(
            f"target table {target.into} already exists: choose another --into, or pass --force"
            " to drop and rebuild it",
            table=str(target.into),
        )
    if exists:
        target.drop()
    target.forget_progress()
    target.conn.commit()
    return Claim(warnings=warnings)


def _check_same(target: Target, claimant: Claimant, progress: Progress) -> None:
    """Refuse to resume a recovery made by another command, source or audit."""
    into = target.into
    differs = command_differences(progress.command, claimant.command)
    if differs:
        raise TargetExists(
            f"{into} holds an unfinished recovery made by another command: "
            f"{'; '.join(differs)}; rerun that command to resume, or pass --force to "
            "rebuild",
            table=str(into),
            differs=differs,
        )
    if progress.source != claimant.source:
        raise TargetExists(
            f"{into} holds an unfinished recovery from {progress.source}, not "
            f"{claimant.source}: rerun that command to resume, or pass --force to rebuild",
            table=str(into),
        )
    if progress.audit != claimant.audit:
        started = f"with --audit {progress.audit}" if progress.audit else "without --audit"
        raise TargetExists(
            f"the unfinished recovery into {into} was started {started}: rerun it "
            "the same way to resume, or pass --force to rebuild",
            table=str(into),
        )


def _check_slot_position(target: Target, claimant: Claimant, progress: Progress) -> None:
    """Refuse to resume from a copy that starts past where the unfinished recovery got to.

    Decoding skips every transaction whose commit record starts before the copy's start,
    so when the user's slot was advanced (its consumer confirmed) past the end of the last
    transaction the recovery read, the transactions in between are gone from it.
    """
    start = claimant.stream_start
    point = progress.resume_lsn or progress.last_commit_lsn or progress.stream_start_lsn
    if start is None or point is None or start <= point:
        return
    began = progress.stream_start_lsn or point
    raise SlotError(
        f"the slot has moved past the resume point of the unfinished recovery into "
        f"{target.into}: a copy of it now starts at LSN {start}, but the recovery read the "
        f"stream only up to LSN {point}, so the transactions in between are no longer in the "
        f"slot and resuming would lose them; nothing was changed. A rebuild with --force can "
        f"only work from another slot or a capture that still holds the changes from LSN "
        f"{began}",
        table=str(target.into),
        lsn=start,
    )


class Resume:
    """What an interrupted run applied: transactions up to its last commit are skipped."""

    def __init__(self, progress: Progress | None, into: str) -> None:
        #: The last commit LSN the interrupted run applied (None: fresh, or no LSNs).
        self.after = progress.last_commit_lsn if progress is not None else None
        #: Source transactions it saw (the resume point of streams without LSNs).
        self.position = progress.position if progress is not None else 0
        self.into = into
        #: A commit at or after the resume point was seen, so every later transaction is new
        #: (the stream is in commit order).
        self.past = False

    @property
    def resuming(self) -> bool:
        return self.after is not None or self.position > 0

    @property
    def by_position(self) -> bool:
        """Resuming a stream without LSNs (a capture), by transaction position."""
        return self.after is None and self.position > 0

    def already_applied(self, begin: Begin, position: int) -> tuple[bool, bool]:
        """(applied by the interrupted run, only presumed so until the Commit tells).

        By commit LSN, or by ``position`` in a stream without LSNs. test_decoding's Begin has
        no commit LSN: a transaction whose first record (``Begin.lsn``) is after the resume
        point, or that starts after a commit at or past it was seen, is new. Any other precedes
        the resume point's commit in commit order, so it was applied: it is skipped without
        being buffered or sent (sending it again could only collide with the rows it wrote),
        and its Commit proves the presumption (:meth:`check`).
        """
        resume = self.after
        if resume is None:
            return position <= self.position, False
        if self.past:
            return False, False
        at = begin.commit_lsn if begin.commit_lsn is not None else begin.end_lsn
        if at is not None:
            return at <= resume, False
        if begin.lsn is not None and begin.lsn > resume:
            return False, False
        return True, True

    def check(self, txn: Txn) -> None:
        """Note when the stream passes the resume point; refuse a transaction skipped as
        applied that commits after it (the stream lacks the commit the interrupted run
        stopped at)."""
        resume = self.after
        if resume is None or self.past:
            return
        position = txn.commit_lsn if txn.commit_lsn is not None else txn.end_lsn
        if position is not None and position >= resume:
            self.past = True
        if txn.skip_unsure and (position is None or position > resume):
            raise ReplayError(
                f"transaction {txn.xid} began before the point the interrupted recovery into "
                f"{self.into} had committed (LSN {resume}) and commits "
                + (f"after it (LSN {position})" if position is not None else "at no known LSN")
                + ", but the stream does not hold that point's commit: the source no longer "
                "holds what the interrupted run read; rebuild with --force from a slot or "
                "capture that starts at or before it",
                table=str(self.into),
                xid=txn.xid,
                lsn=resume,
            )
