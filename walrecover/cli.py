"""The ``walrecover`` command: parse, call one library function, format its result.

Exit codes (also in the README): 0 done; 1 error (one line on stderr saying what to do);
2 usage error; 3 differences (the reconciliation found some, or ``audit verify`` found a tampered
audit); 4 rebuilt but not proven exact (warnings say why); 130 interrupted (Ctrl-C).

It is the one module well over 400 lines, on purpose: every command's options and help text live
here, the only module that imports click, so the library stays free of the command line; each
command parses its options into the library's arguments (small helpers per option bundle), calls
one library function and prints its result.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import click
import psycopg
from tqdm import tqdm

from . import __version__
from .db import redact
from .drill.workload import PER_COMMIT
from .errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_UNPROVEN,
    Differences,
    Failed,
    NotProvenExact,
    Verdict,
    WalrecoverError,
    first_line,
)
from .incident.events import DestructiveEvent
from .incident.inspect import DEFAULT_MASS, inspect_table, resolve_stop_before
from .rebuild.baseline import BaselineOptions
from .rebuild.recover import LedgerCheck, RecoveryResult, recover, recover_capture
from .stream.decoders import PLUGINS
from .stream.export import FORMATS
from .stream.lsn import Lsn
from .stream.model import StartPoint, StopPoint, TableName
from .stream.settings import CaptureSettings

if TYPE_CHECKING:
    from .incident.inspect import Inspection
    from .ledger.reconcile import LedgerSource
    from .ledger.result import Reconciliation

# The commands' heavier modules (pandas, pyarrow, pglast: about 100 MB of RSS and a second of
# start-up together) are imported inside the commands that use them, so ``walrecover recover``
# loads only what a recovery needs (tests/test_memory.py keeps it so).

F = TypeVar("F", bound=Callable[..., Any])


class Progress:
    """tqdm bars on stderr, one per stage; silent when stderr is not a terminal."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bars: dict[str, tqdm[Any]] = {}

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        bar = self.bars.get(stage)
        if bar is None:
            unit = "B" if stage == "read" else "txn"
            bar = tqdm(
                total=total,
                desc=stage,
                unit=unit,
                unit_scale=True,
                file=sys.stderr,
                disable=None,
                leave=False,
            )
            self.bars[stage] = bar
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(max(done - bar.n, 0))

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


class _Group(click.Group):
    """Maps walrecover's errors and Ctrl-C to one stderr line and a documented exit code.

    With ``--json``, an error is also one JSON object on stdout, ``{"error": ..., "exit": N}``,
    so a script reading stdout always gets an answer (usage errors included).
    """

    def invoke(self, ctx: click.Context) -> Any:
        as_json = _wants_json(ctx.args)
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            if as_json:
                _json_error(exc.format_message(), exc.exit_code)
            raise  # click prints the usage and the message on stderr, and exits 2
        except Verdict as exc:
            # The result is printed; the lines say on stderr what it means.
            for line in exc.lines:
                click.echo(f"walrecover: {_redact(ctx, line)}", err=True)
            ctx.exit(exc.exit_code)
        except WalrecoverError as exc:
            _fail(ctx, _redact(ctx, str(exc)), exc.exit_code, as_json)
        except psycopg.Error as exc:
            # A database error no library code anticipated: still one line, never a traceback.
            _fail(ctx, _redact(ctx, first_line(exc)), EXIT_ERROR, as_json)
        except OSError as exc:
            # A file that cannot be read or written (a full disk, a permission): one line too.
            message = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
            _fail(ctx, message, EXIT_ERROR, as_json)
        except KeyboardInterrupt:
            _fail(
                ctx,
                "interrupted; what was committed is kept, rerun the same command to resume",
                EXIT_INTERRUPTED,
                as_json,
                prefix="walrecover: ",
            )


def _wants_json(args: list[str]) -> bool:
    """True if the command line asks for ``--json`` (before any ``--``)."""
    for arg in args:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def _json_error(message: str, code: int) -> None:
    click.echo(json.dumps({"error": message, "exit": code}))


def _fail(
    ctx: click.Context,
    message: str,
    code: int,
    as_json: bool,
    prefix: str = "walrecover: error: ",
) -> None:
    if as_json:
        _json_error(message, code)
    click.echo(f"{prefix}{message}", err=True)
    ctx.exit(code)


def _redact(ctx: click.Context, text: str) -> str:
    """``text`` without the password of any connection string given on the command line."""
    for dsn in ctx.meta.get("walrecover.dsns", ()):
        text = redact(text, dsn)
    return text


def _remember_dsn(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Keep a connection string given as an option, so errors can leave its password out."""
    if value is not None:
        ctx.meta.setdefault("walrecover.dsns", []).append(value)
    return value


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _fixed_mmap_threshold() -> None:
    """Keep glibc's mmap threshold at 128 KiB for this process, so the audit's large Arrow
    buffers are mapped and given back to the system when freed.

    glibc raises the threshold each time a mapped block is freed; after that, those buffers
    come from the heap, where the Python objects between them keep the freed space from being
    returned: the close of a 1M-change ``recover+`` grew to 362 MiB that way, 297 MiB with the
    threshold fixed. Linux with glibc only; ``MALLOC_MMAP_THRESHOLD_`` set by the user wins.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


#: glibc's mallopt() parameter for the mmap threshold (malloc.h).
_M_MMAP_THRESHOLD = -3


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="walrecover")
def main() -> None:
    """Rebuild a dropped PostgreSQL table from logical decoding.

    \b
    Practise first:   walrecover rehearse
    Check first:      walrecover check -d "dbname=bank" --slot cdc --table public.transactions
    In an incident:   walrecover recover -d "dbname=bank" --slot cdc --table public.transactions
    Put it back:      walrecover swap -d "dbname=bank" --table public.transactions --ddl orig.sql

    Exit codes: 0 done, 1 error, 2 usage error, 3 differences (reconciliation, or a
    tampered audit), 4 rebuilt but not proven exact, 130 interrupted.
    """
    signal.signal(signal.SIGTERM, _sigterm)
    # pyarrow's default pool (mimalloc) keeps what the audit freed for reuse by pyarrow alone:
    # about 45 MB of a recovery's peak RSS at 100k changes. The system allocator gives it back
    # to Python and to the OS. Set for this process only, before pyarrow picks its pool (the
    # library leaves a notebook's pool alone); an explicit setting wins.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    _fixed_mmap_threshold()
    # psycopg logs its own multi-line warnings when a connection dies mid-pipeline; walrecover
    # reports the failure itself, in one line.
    logging.getLogger("psycopg").setLevel(logging.CRITICAL)


# -- shared option bundles -------------------------------------------------------------------


def json_option(f: F) -> F:
    """``--json``: one JSON object on stdout instead of the human summary."""
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")(
        f
    )


def dbname_option(f: F) -> F:
    """``-d/--dbname``: a libpq conninfo or URI, as in psql."""

    return click.option(
        "-d",
        "--dbname",
        "dsn",
        metavar="CONNINFO",
        callback=_remember_dsn,
        help="Source database: conninfo ('host=db dbname=bank') or postgresql:// URI; "
        "PG* variables, service files and .pgpass work as in psql.",
    )(f)


def slot_option(f: F) -> F:
    """``--slot``: the user's logical replication slot (read through a copy, never moved)."""
    return click.option(
        "--slot",
        help="The logical replication slot to read. It is copied, never advanced.",
    )(f)


def _plugin_option(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in value:
        name, sep, setting = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="-o/--option")
        options[name.strip()] = setting
    return options


def _capture_settings(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> CaptureSettings | None:
    if not value:
        return None
    given: dict[str, str] = {}
    for item in value:
        name, sep, setting = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--capture-setting")
        given[name.strip()] = setting
    try:
        return CaptureSettings.parse(given)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--capture-setting") from None


def source_options(f: F) -> F:
    """Where the stream comes from besides a slot, and how it is read (as pg_recvlogical)."""
    f = click.option(
        "--capture-setting",
        "capture_settings",
        multiple=True,
        metavar="NAME=VALUE",
        callback=_capture_settings,
        help="An output setting of the session that ran pg_recvlogical for --from-file "
        "(DateStyle, IntervalStyle, TimeZone, bytea_output, extra_float_digits; e.g. "
        "--capture-setting DateStyle='SQL, DMY'). Repeatable; PostgreSQL's defaults otherwise.",
    )(f)
    f = click.option(
        "--via-plugin",
        type=click.Choice(PLUGINS),
        help="Read the slot through this plugin instead of its own (the copy is made with it).",
    )(f)
    f = click.option(
        "-o",
        "--option",
        "plugin_options",
        multiple=True,
        metavar="NAME=VALUE",
        callback=_plugin_option,
        help="A plugin option, as pg_recvlogical -o (e.g. -o publication_names=pub, "
        "-o proto_version=2, -o format-version=1). Repeatable.",
    )(f)
    f = click.option(
        "--plugin",
        type=click.Choice(PLUGINS),
        help="The output plugin that wrote --from-file (pg_recvlogical -P).",
    )(f)
    return click.option(
        "--from-file",
        "from_file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Read a capture written by pg_recvlogical --start -f PATH instead of a slot.",
    )(f)


def _check_source(
    slot: str | None,
    from_file: Path | None,
    plugin: str | None,
    capture_settings: CaptureSettings | None = None,
) -> None:
    if capture_settings is not None and from_file is None:
        raise click.UsageError(
            "--capture-setting describes a --from-file capture; walrecover reads a slot with "
            "its own settings"
        )
    if from_file is not None:
        if slot is not None:
            raise click.UsageError("give either --slot or --from-file, not both")
        if plugin is None:
            raise click.UsageError("--from-file needs --plugin (the plugin pg_recvlogical used)")
    elif slot is None:
        raise click.UsageError("give --slot (with -d) or --from-file (with --plugin)")
    elif plugin is not None:
        raise click.UsageError(
            "--plugin describes a --from-file capture; for a slot use --via-plugin"
        )


def _warn(warnings: tuple[str, ...] | list[str]) -> None:
    for warning in warnings:
        click.echo(f"walrecover: warning: {warning}", err=True)


def stop_options(f: F) -> F:
    """``--stop-before-lsn/-xid/-time``: the exclusive, transaction-aware stop point."""
    f = click.option(
        "--stop-before-time",
        metavar="TS",
        help="Leave out transactions committed at or after TS (ISO, with a time zone).",
    )(f)
    f = click.option(
        "--stop-before-xid",
        type=int,
        metavar="XID",
        help="Stop at the commit of transaction XID (it and all later are left out): a 32-bit "
        "xid, or an xid8 with its epoch as pg_current_xact_id() prints it; a subtransaction's "
        "xid stops at its top-level transaction.",
    )(f)
    return click.option(
        "--stop-before-lsn",
        metavar="LSN",
        help="Leave out transactions whose commit LSN is >= LSN (e.g. 16/B374D848).",
    )(f)


def _stop_point(lsn: str | None, xid: int | None, when: str | None) -> StopPoint:
    given = [name for name, value in (("lsn", lsn), ("xid", xid), ("time", when)) if value]
    if len(given) > 1:
        raise click.UsageError("give at most one of --stop-before-lsn/-xid/-time")
    if lsn:
        try:
            return StopPoint(lsn=Lsn.parse(lsn))
        except WalrecoverError as exc:
            raise click.BadParameter(str(exc), param_hint="--stop-before-lsn") from None
    if when:
        try:
            moment = datetime.fromisoformat(when)
        except ValueError:
            raise click.BadParameter(
                f"{when!r} is not an ISO time such as '2024-05-01 10:00:00+00'",
                param_hint="--stop-before-time",
            ) from None
        if moment.tzinfo is None:
            raise click.BadParameter(
                f"{when!r} has no time zone: add one, e.g. '{when}+00'",
                param_hint="--stop-before-time",
            )
        return StopPoint(time=moment)
    if xid is not None:
        if xid <= 0 or xid >= 1 << 64:
            raise click.BadParameter(
                f"{xid} is not a transaction id: give a positive 32-bit xid or a 64-bit xid8",
                param_hint="--stop-before-xid",
            )
        return StopPoint(xid=xid)
    return StopPoint()


def start_options(f: F) -> F:
    """``--start-at-lsn/-xid/-time`` and ``--xid``: where ``decode`` starts (inclusively)."""
    f = click.option(
        "--xid",
        "only_xid",
        type=int,
        metavar="XID",
        help="Only transaction XID (e.g. the bad DELETE to undo).",
    )(f)
    f = click.option(
        "--start-at-time",
        metavar="TS",
        help="Start with the transactions committed at or after TS (ISO, with a time zone).",
    )(f)
    f = click.option(
        "--start-at-xid",
        type=int,
        metavar="XID",
        help="Start at the commit of transaction XID: it and every later one are included.",
    )(f)
    return click.option(
        "--start-at-lsn",
        metavar="LSN",
        help="Start with the transactions whose commit LSN is >= LSN (e.g. 16/B374D848).",
    )(f)


def _time(value: str, option: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO time such as '2024-05-01 10:00:00+00'", param_hint=option
        ) from None
    if moment.tzinfo is None:
        raise click.BadParameter(
            f"{value!r} has no time zone: add one, e.g. '{value}+00'", param_hint=option
        )
    return moment


def _xid(value: int, option: str) -> int:
    if value <= 0:
        raise click.BadParameter("a transaction id is a positive number", param_hint=option)
    return value


def _start_point(
    lsn: str | None, xid: int | None, when: str | None, only: int | None
) -> StartPoint:
    given = [
        name
        for name, value in (
            ("--start-at-lsn", lsn),
            ("--start-at-xid", xid),
            ("--start-at-time", when),
            ("--xid", only),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise click.UsageError(f"give one start, not {' and '.join(given)}")
    if lsn is not None:
        try:
            return StartPoint(lsn=Lsn.parse(lsn))
        except WalrecoverError as exc:
            raise click.BadParameter(str(exc), param_hint="--start-at-lsn") from None
    if when is not None:
        return StartPoint(time=_time(when, "--start-at-time"))
    if xid is not None:
        return StartPoint(xid=_xid(xid, "--start-at-xid"))
    if only is not None:
        return StartPoint(xid=_xid(only, "--xid"), only=True)
    return StartPoint()


def _table(value: str, option: str) -> TableName:
    try:
        return TableName.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


# -- commands --------------------------------------------------------------------------------


#: The options of ``recover`` (outermost first), shared by ``check``: the same command line.
_RECOVER_OPTIONS: list[Callable[[Any], Any]] = [
    dbname_option,
    slot_option,
    source_options,
    click.option(
        "--table",
        "table_name",
        required=True,
        metavar="SCHEMA.TABLE",
        help="The dropped (or damaged) table to rebuild.",
    ),
    click.option(
        "--into",
        "into_name",
        metavar="SCHEMA.TABLE",
        help="Table to build. Default: <table>_recovered in the same schema.",
    ),
    click.option(
        "--target", metavar="CONNINFO", help="Database to build it in. Default: the -d database."
    ),
    stop_options,
    click.option(
        "--stop-before",
        "stop_before",
        type=click.Choice(["drop", "truncate", "auto"]),
        help="Find the table's DROP (or TRUNCATE; auto: its first destructive event after its "
        "last re-creation) in the WAL, as walrecover inspect does, and stop exactly before it.",
    ),
    click.option(
        "--wal-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="With --stop-before: read the WAL from these segment files with pg_waldump "
        "(default: pg_walinspect if installed, else the server's pg_wal if readable here).",
    ),
    click.option("--key", "key_column", metavar="COL", help="Ledger key column (e.g. account_id)."),
    click.option("--amount", "amount_column", metavar="COL", help="Amount column to sum per key."),
    click.option(
        "--ledger-query",
        metavar="SQL",
        help="Query on the source returning (key, total) to reconcile against.",
    ),
    click.option(
        "--audit",
        "audit_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Write a Parquet audit of every recovered row change to this file.",
    ),
    click.option(
        "--audit-dir",
        "audit_dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Write the audit as a Hive-partitioned dataset by commit date into this directory "
        "(for recoveries too big for one file; pandas, DuckDB and Spark read it as one table).",
    ),
    click.option(
        "--ddl",
        "ddl_file",
        type=click.File("r"),
        help="SQL that creates the --into table, instead of the stream's definition.",
    ),
    click.option("--force", is_flag=True, help="Drop and rebuild --into if it already exists."),
    click.option(
        "--batch-size",
        type=click.IntRange(1),
        default=20_000,
        show_default=True,
        help="Row changes per target commit (each commit records progress for a resume).",
    ),
]


def recover_options(f: F) -> F:
    """Apply the options of ``recover`` (``check`` takes the same command line)."""
    for option in reversed(_RECOVER_OPTIONS):
        f = option(f)
    return f


#: Where the table starts from when it is older than the slot (``recover`` and ``check``).
_BASELINE_OPTIONS: list[Callable[[Any], Any]] = [
    click.option(
        "--from-protect",
        "from_protect",
        type=click.Path(file_okay=False, exists=True, path_type=Path),
        metavar="DIR",
        help="Start from the newest recovery point walrecover protect keeps in DIR that lies "
        "before the stop point (its baseline and its slot: no --slot).",
    ),
    click.option(
        "--baseline",
        "baseline_file",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="Start the table from this older copy of it: a pg_dump -t archive (custom or plain), "
        "a CSV with a header, or a Parquet file; then replay the stream's changes on top.",
    ),
    click.option(
        "--baseline-dsn",
        metavar="CONNINFO",
        help="Start the table from its copy in this database (a server restored from a backup, a "
        "lagging replica).",
    ),
    click.option(
        "--baseline-table",
        metavar="SCHEMA.TABLE",
        help="The table's name in the baseline. Default: --table.",
    ),
    click.option(
        "--baseline-lsn",
        metavar="LSN",
        help="The LSN the baseline is consistent at: only changes committed after it are "
        "replayed. Without it (and none recorded in the baseline) the whole stream is replayed "
        "idempotently, which needs a primary key.",
    ),
    click.option(
        "--accept-gap",
        is_flag=True,
        help="Rebuild even when walrecover cannot show the stream starts at or before the "
        "baseline (recorded in the result and the audit; exit 4).",
    ),
]


def baseline_options(f: F) -> F:
    """Apply the baseline options (``recover`` and ``check``)."""
    for option in reversed(_BASELINE_OPTIONS):
        f = option(f)
    return f


@main.command("recover")
@recover_options
@baseline_options
@click.option(
    "--dry-run",
    is_flag=True,
    help="Run every check and print the plan (what would be read and created); change nothing.",
)
@json_option
def recover_command(
    dsn: str | None,
    slot: str | None,
    from_file: Path | None,
    plugin: str | None,
    plugin_options: dict[str, str],
    via_plugin: str | None,
    capture_settings: CaptureSettings | None,
    table_name: str,
    into_name: str | None,
    target: str | None,
    stop_before_lsn: str | None,
    stop_before_xid: int | None,
    stop_before_time: str | None,
    key_column: str | None,
    amount_column: str | None,
    ledger_query: str | None,
    audit_path: Path | None,
    audit_dir: Path | None,
    ddl_file: Any,
    force: bool,
    batch_size: int,
    from_protect: Path | None,
    baseline_file: Path | None,
    baseline_dsn: str | None,
    baseline_table: str | None,
    baseline_lsn: str | None,
    accept_gap: bool,
    dry_run: bool,
    as_json: bool,
    stop_before: str | None = None,
    wal_dir: Path | None = None,
) -> None:
    """Rebuild a table from a logical replication slot, without moving the slot.

    \b
    Example:
      walrecover recover -d "host=db dbname=bank user=oncall" --slot cdc \\
          --table public.transactions --stop-before-lsn 16/B374D848 \\
          --key account_id --amount amount \\
          --ledger-query "SELECT id, balance FROM accounts" \\
          --audit transactions.parquet

    \b
    From a backup older than the slot, restored on a scratch server:
      walrecover recover -d "host=db dbname=bank" --slot cdc --table public.transactions \\
          --baseline-dsn "host=scratch dbname=bank" --baseline-lsn 16/A0000000 \\
          --stop-before-lsn 16/B374D848

    \b
    From the recovery points walrecover protect keeps (the newest one before the stop):
      walrecover recover -d "host=db dbname=bank" --from-protect /var/lib/walrecover/bank \\
          --table public.transactions --stop-before drop
    """
    table = _table(table_name, "--table")
    stop = _stop_point(stop_before_lsn, stop_before_xid, stop_before_time)
    event = None
    if from_protect is not None and stop_before is not None:
        _check_from_protect(slot, from_file, baseline_file, baseline_dsn, baseline_table,
                            baseline_lsn)  # fmt: skip
        event = _protected_event(
            from_protect, dsn, table, stop, stop_before, plugin_options, wal_dir, as_json
        )
        stop, stop_before = event.stop_point(), None
    slot, plugin_options, baseline = _start_from(
        from_protect, dsn, table, stop, slot, from_file, plugin_options, baseline_file,
        baseline_dsn, baseline_table, baseline_lsn, accept_gap,
    )  # fmt: skip
    _check_source(slot, from_file, plugin, capture_settings)
    if from_file is not None and target is None and dsn is None:
        raise click.UsageError("recovering --from-file needs --target (or -d): where to build")
    into = _table(into_name, "--into") if into_name else None
    ledger = _ledger_check(key_column, amount_column, ledger_query)
    ddl = _check_outputs(audit_path, audit_dir, ddl_file, stop_before, stop, from_file)
    job = _Recovery(
        dsn, slot, from_file, plugin, plugin_options, via_plugin, capture_settings, table, into,
        target, stop, ledger, audit_path, audit_dir, ddl, force, baseline,
    )  # fmt: skip
    if dry_run:
        if stop_before is not None:
            job = _resolve_stop_before(job, stop_before, wal_dir, as_json)
        _plan(job, as_json)
        return
    progress = Progress()
    try:
        result = _run_recovery(job, progress, batch_size, stop_before, wal_dir, event)
    finally:
        progress.close()
    _report_recovery(result, as_json)


@dataclass(frozen=True)
class _Recovery:
    """recover's (and check's) command line, parsed and checked: what to read (a slot or a
    capture), what to build, where to stop, what to reconcile and audit, where to start from."""

    dsn: str | None
    slot: str | None
    from_file: Path | None
    plugin: str | None
    plugin_options: dict[str, str]
    via_plugin: str | None
    capture_settings: CaptureSettings | None
    table: TableName
    into: TableName | None
    target: str | None
    stop: StopPoint
    ledger: LedgerCheck | None
    audit_path: Path | None
    audit_dir: Path | None
    ddl: str | None
    force: bool
    baseline: BaselineOptions | None


def _check_from_protect(
    slot: str | None,
    from_file: Path | None,
    baseline_file: Path | None,
    baseline_dsn: str | None,
    baseline_table: str | None,
    baseline_lsn: str | None,
) -> None:
    """--from-protect gives the slot, the baseline and its point: refuse them given too."""
    if slot is not None or from_file is not None or baseline_file or baseline_dsn:
        raise click.UsageError(
            "--from-protect gives the slot and the baseline: leave out --slot, --from-file, "
            "--baseline and --baseline-dsn"
        )
    if baseline_table or baseline_lsn:
        raise click.UsageError("--from-protect records the baseline's table and LSN")


def _protected_event(
    from_protect: Path,
    dsn: str | None,
    table: TableName,
    stop: StopPoint,
    stop_before: str,
    plugin_options: dict[str, str],
    wal_dir: Path | None,
    as_json: bool,
) -> DestructiveEvent:
    """--from-protect with --stop-before: the event, found from the recovery points first, so
    that the point before it can be chosen."""
    if stop.is_set:
        raise click.UsageError(
            "--stop-before finds the event itself: give no --stop-before-lsn/-xid/-time with it"
        )
    from .rebuild.from_protect import find_event  # noqa: PLC0415

    event = find_event(
        from_protect, dsn, table, stop_before, plugin_options=plugin_options, wal_dir=wal_dir
    )
    if not as_json:
        click.echo(f"walrecover: --stop-before {stop_before}: the {event.describe()}", err=True)
    return event


def _start_from(
    from_protect: Path | None,
    dsn: str | None,
    table: TableName,
    stop: StopPoint,
    slot: str | None,
    from_file: Path | None,
    plugin_options: dict[str, str],
    baseline_file: Path | None,
    baseline_dsn: str | None,
    baseline_table: str | None,
    baseline_lsn: str | None,
    accept_gap: bool,
) -> tuple[str | None, dict[str, str], BaselineOptions | None]:
    """Where the table starts from: the slot, its plugin options and the baseline, as given,
    or with --from-protect those of the newest recovery point before the stop."""
    if from_protect is None:
        baseline = _baseline_options(
            baseline_file, baseline_dsn, baseline_table, baseline_lsn, accept_gap
        )
        return slot, plugin_options, baseline
    _check_from_protect(slot, from_file, baseline_file, baseline_dsn, baseline_table,
                        baseline_lsn)  # fmt: skip
    from .rebuild.from_protect import choose_point  # noqa: PLC0415

    chosen = choose_point(
        from_protect, dsn, table, stop, plugin_options=plugin_options, accept_gap=accept_gap
    )
    return chosen.slot, chosen.plugin_options, chosen.baseline


def _check_outputs(
    audit_path: Path | None,
    audit_dir: Path | None,
    ddl_file: Any,
    stop_before: str | None,
    stop: StopPoint,
    from_file: Path | None,
) -> str | None:
    """Refuse --audit with --audit-dir, and --stop-before with another stop or a capture;
    return the --ddl file's text."""
    if audit_path is not None and audit_dir is not None:
        raise click.UsageError("give --audit FILE or --audit-dir DIR, not both")
    ddl = ddl_file.read() if ddl_file else None
    if stop_before is not None and (stop.is_set or from_file is not None):
        raise click.UsageError(
            "--stop-before finds the event in a slot's WAL: give --slot, and no --from-file or "
            "--stop-before-lsn/-xid/-time with it"
        )
    return str(ddl) if ddl is not None else None


def _ledger_check(
    key_column: str | None, amount_column: str | None, ledger_query: str | None
) -> LedgerCheck | None:
    """--key, --amount and --ledger-query as one reconciliation, or None when none is given."""
    if not (key_column or amount_column or ledger_query):
        return None
    if not (key_column and amount_column and ledger_query):
        raise click.UsageError("reconciliation needs all of --key, --amount and --ledger-query")
    return LedgerCheck(key_column, amount_column, ledger_query)


def _resolve_stop_before(
    job: _Recovery, stop_before: str, wal_dir: Path | None, as_json: bool
) -> _Recovery:
    """For --dry-run: find the event --stop-before names, and plan with the stop before it."""
    assert job.slot is not None
    stop, event = resolve_stop_before(
        job.dsn, job.slot, job.table, stop_before, wal_dir=wal_dir, options=job.plugin_options,
        via_plugin=job.via_plugin,
    )  # fmt: skip
    if not as_json:
        click.echo(f"walrecover: --stop-before {stop_before}: the {event.describe()}", err=True)
    return replace(job, stop=stop)


def _run_recovery(
    job: _Recovery,
    progress: Progress,
    batch_size: int,
    stop_before: str | None,
    wal_dir: Path | None,
    event: DestructiveEvent | None = None,
) -> RecoveryResult:
    """Run the recovery: from the capture files, or from the slot (``event``: the one
    --stop-before found from --from-protect's points)."""
    if job.from_file is not None:
        assert job.plugin is not None
        return recover_capture(
            job.from_file,
            job.plugin,
            job.table,
            target=job.target if job.target is not None else job.dsn,
            into=job.into,
            options=job.plugin_options,
            stop=job.stop,
            ddl=job.ddl,
            force=job.force,
            ledger=job.ledger,
            audit_path=job.audit_path,
            audit_dir=job.audit_dir,
            progress=progress,
            batch_size=batch_size,
            capture_settings=job.capture_settings,
            wal_dsn=job.dsn,
            baseline=job.baseline,
        )
    assert job.slot is not None
    return recover(
        job.dsn,
        job.slot,
        job.table,
        into=job.into,
        target=job.target,
        stop=job.stop,
        ddl=job.ddl,
        force=job.force,
        ledger=job.ledger,
        audit_path=job.audit_path,
        audit_dir=job.audit_dir,
        progress=progress,
        options=job.plugin_options,
        via_plugin=job.via_plugin,
        batch_size=batch_size,
        baseline=job.baseline,
        stop_before=stop_before,
        wal_dir=wal_dir,
        stop_event=event,
    )


def _report_recovery(result: RecoveryResult, as_json: bool) -> None:
    """Print a recovery's result; raise the verdict when it is not exact (exit 3 or 4)."""
    _warn(result.warnings)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        from .report import recovery_text  # noqa: PLC0415

        click.echo(recovery_text(result))
    for reason in result.unproven:
        click.echo(f"walrecover: WARNING: not proven exact: {reason}", err=True)
    if result.reconciliation is not None and not result.reconciliation.matched:
        raise Differences(
            *(() if as_json else ("the rebuilt table does not reconcile with the ledger",))
        )
    if result.unproven:
        raise NotProvenExact(
            f"{result.into} was rebuilt, but walrecover cannot prove it equals {result.table} "
            f"at the stop point (exit {EXIT_UNPROVEN}): read the warnings above"
        )


def _baseline_options(
    file: Path | None, dsn: str | None, table: str | None, lsn: str | None, accept_gap: bool
) -> BaselineOptions | None:
    """The --baseline options as one object, or None when no baseline is given."""
    if file is not None and dsn is not None:
        raise click.UsageError("give --baseline FILE or --baseline-dsn CONNINFO, not both")
    if file is None and dsn is None:
        if table or lsn or accept_gap:
            raise click.UsageError(
                "--baseline-table, --baseline-lsn and --accept-gap need --baseline or "
                "--baseline-dsn"
            )
        return None
    try:
        point = Lsn.parse(lsn) if lsn is not None else None
    except WalrecoverError as exc:
        raise click.BadParameter(exc.message, param_hint="--baseline-lsn") from None
    return BaselineOptions(
        file=file,
        dsn=dsn,
        table=_table(table, "--baseline-table") if table else None,
        lsn=point,
        accept_gap=accept_gap,
    )


def _plan(job: _Recovery, as_json: bool) -> None:
    """Run every check of the recovery and print the plan; :class:`Failed` (exit 1) unless
    every check passes."""
    from .rebuild.plan import plan_capture, plan_recovery  # noqa: PLC0415
    from .report import plan_text  # noqa: PLC0415

    if job.from_file is not None:
        assert job.plugin is not None
        plan = plan_capture(
            job.from_file,
            job.plugin,
            job.table,
            target=job.target if job.target is not None else job.dsn,
            into=job.into,
            options=job.plugin_options,
            stop=job.stop,
            ddl=job.ddl,
            force=job.force,
            ledger=job.ledger,
            audit_path=job.audit_path,
            audit_dir=job.audit_dir,
            capture_settings=job.capture_settings,
            baseline=job.baseline,
        )
    else:
        assert job.slot is not None
        plan = plan_recovery(
            job.dsn,
            job.slot,
            job.table,
            into=job.into,
            target=job.target,
            stop=job.stop,
            ddl=job.ddl,
            force=job.force,
            ledger=job.ledger,
            audit_path=job.audit_path,
            audit_dir=job.audit_dir,
            options=job.plugin_options,
            via_plugin=job.via_plugin,
            baseline=job.baseline,
        )
    _warn(plan.warnings)
    if as_json:
        click.echo(json.dumps(plan.to_dict()))
    else:
        click.echo(plan_text(plan))
    if not plan.ok:
        raise Failed(*(f"error: check failed: {f.name}: {f.detail}" for f in plan.failures))


@main.command("check")
@recover_options
@baseline_options
@json_option
def check_command(
    dsn: str | None,
    slot: str | None,
    from_file: Path | None,
    plugin: str | None,
    plugin_options: dict[str, str],
    via_plugin: str | None,
    capture_settings: CaptureSettings | None,
    table_name: str,
    into_name: str | None,
    target: str | None,
    stop_before_lsn: str | None,
    stop_before_xid: int | None,
    stop_before_time: str | None,
    key_column: str | None,
    amount_column: str | None,
    ledger_query: str | None,
    audit_path: Path | None,
    audit_dir: Path | None,
    ddl_file: Any,
    force: bool,
    batch_size: int,
    from_protect: Path | None,
    baseline_file: Path | None,
    baseline_dsn: str | None,
    baseline_table: str | None,
    baseline_lsn: str | None,
    accept_gap: bool,
    as_json: bool,
    stop_before: str | None = None,
    wal_dir: Path | None = None,
) -> None:
    """Check a recovery before running it (the same options as recover); change nothing.

    Runs every check recover makes before it writes a row (source, stop point, ledger query,
    --key/--amount, target privileges, encoding, publications, audit paths, the baseline: readable,
    its point known or --accept-gap, the slot covering it) and prints the plan:
    what would be read (LSN range, bytes, an estimate of changes and time from a sample) and
    what would be created. Exits 0 when every check passes, 1 naming each that fails. The same
    as recover --dry-run.

    \b
    Example:
      walrecover check -d "dbname=bank" --slot cdc --table public.transactions \\
          --stop-before-lsn 16/B374D848 --key account_id --amount amount \\
          --ledger-query "SELECT id, balance FROM accounts" --audit transactions.parquet
    """
    ctx = click.get_current_context()
    ctx.invoke(
        recover_command,
        **{k: v for k, v in ctx.params.items() if k != "as_json"},
        dry_run=True,
        as_json=as_json,
    )


@main.command("decode")
@dbname_option
@slot_option
@source_options
@click.option(
    "--table",
    "table_names",
    multiple=True,
    metavar="SCHEMA.TABLE",
    help="Only changes of this table (repeatable). Default: every table.",
)
@start_options
@stop_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="jsonl",
    show_default=True,
    help="jsonl: one JSON object per row change; sql: redo SQL; undo-sql: the SQL that "
    "reverses the changes, newest first.",
)
def decode_command(
    dsn: str | None,
    slot: str | None,
    from_file: Path | None,
    plugin: str | None,
    plugin_options: dict[str, str],
    via_plugin: str | None,
    capture_settings: CaptureSettings | None,
    table_names: tuple[str, ...],
    start_at_lsn: str | None,
    start_at_xid: int | None,
    start_at_time: str | None,
    only_xid: int | None,
    stop_before_lsn: str | None,
    stop_before_xid: int | None,
    stop_before_time: str | None,
    fmt: str,
) -> None:
    """Print the row changes of a slot (read through a copy) or a capture file.

    Undo SQL needs a start (--xid, or --start-at-lsn/-xid/-time): it reverses the chosen
    transactions, newest first, in one transaction, and its header says what it undoes.

    \b
    Examples:
      walrecover decode -d "dbname=bank" --slot cdc --table public.transactions
      walrecover decode -d "dbname=bank" --slot cdc --table public.transactions \\
          --xid 48213 --format undo-sql > undo.sql
      walrecover decode --from-file capture.bin --plugin pgoutput -o proto_version=1 \\
          --format undo-sql --start-at-lsn 16/B3000000 --stop-before-lsn 16/B374D848
    """
    _check_source(slot, from_file, plugin, capture_settings)
    tables = [_table(name, "--table") for name in table_names]
    start = _start_point(start_at_lsn, start_at_xid, start_at_time, only_xid)
    stop = _stop_point(stop_before_lsn, stop_before_xid, stop_before_time)
    if start.only and stop.is_set:
        raise click.UsageError("--xid selects one transaction: give no --stop-before-* with it")
    if fmt == "undo-sql" and not start.is_set:
        raise click.UsageError(
            "--format undo-sql needs a start: --xid XID (one transaction) or --start-at-lsn/"
            "-xid/-time (that point and everything after); without one the script would "
            "reverse every change the slot ever saw"
        )
    progress = Progress()
    try:
        from .stream.export import decode_to  # noqa: PLC0415

        result = decode_to(
            sys.stdout,
            dsn=dsn,
            slot=slot,
            capture=str(from_file) if from_file is not None else None,
            plugin=plugin,
            tables=tables,
            stop=stop,
            start=start,
            fmt=fmt,
            options=plugin_options,
            via_plugin=via_plugin,
            progress=progress,
            capture_settings=capture_settings,
        )
    finally:
        progress.close()
    _warn(result.warnings)


@main.command("rehearse")
@click.option(
    "--transactions",
    default=5_000,
    show_default=True,
    type=click.IntRange(1),
    help="Ledger transactions in the workload.",
)
@click.option(
    "--accounts",
    default=100,
    show_default=True,
    type=click.IntRange(1),
    help="Accounts they are spread over.",
)
@click.option(
    "--audit",
    "audit_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Keep the rehearsal's Parquet audit at this path.",
)
@click.option(
    "--plugin",
    type=click.Choice(PLUGINS),
    default="pgoutput",
    show_default=True,
    help="The output plugin of the rehearsal's slot (pgoutput is built into PostgreSQL; "
    "wal2json needs the postgresql-<major>-wal2json package).",
)
@click.option(
    "--keep",
    is_flag=True,
    help="Leave the throwaway cluster running to explore (prints how to reach it).",
)
@click.option(
    "--baseline",
    "with_baseline",
    is_flag=True,
    help="The real case: half the workload before the slot exists, a Parquet baseline taken "
    "in the slot's exported snapshot, recovered with recover --baseline; prints the RTO.",
)
@click.option(
    "--per-commit",
    default=PER_COMMIT,
    show_default=True,
    type=click.IntRange(1),
    help="Ledger transactions per commit in the workload (1: each one commits on its own).",
)
@json_option
def rehearse_command(
    transactions: int,
    accounts: int,
    audit_path: Path | None,
    plugin: str,
    keep: bool,
    with_baseline: bool,
    per_commit: int,
    as_json: bool,
) -> None:
    """Practise the whole recovery on a throwaway PostgreSQL.

    Starts a cluster, runs a banking workload, drops the transactions table, recovers it,
    reconciles it against accounts.balance, writes the audit, and checks every row. Prints
    where the time went, phase by phase (--json: wall and CPU seconds per phase).

    \b
    Example:
      walrecover rehearse --transactions 100000 --json
      walrecover rehearse --baseline --transactions 1000000
    """
    progress = Progress()
    try:
        from .drill.rehearsal import rehearse  # noqa: PLC0415
        from .drill.rehearsal_baseline import rehearse_baseline  # noqa: PLC0415

        result = (rehearse_baseline if with_baseline else rehearse)(
            transactions,
            accounts,
            keep=keep,
            audit_path=audit_path,
            progress=progress,
            plugin=plugin,
            per_commit=per_commit,
        )
    finally:
        progress.close()
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        from .report import rehearsal_text  # noqa: PLC0415

        click.echo(rehearsal_text(result))
    if not (result.identical and result.reconciled):
        raise Failed(*(() if as_json else ("the rehearsal's recovery did not match",)))


@main.command("reconcile")
@dbname_option
@click.option(
    "--table",
    "table_name",
    metavar="SCHEMA.TABLE",
    help="The rebuilt table to reconcile, in the -d database.",
)
@click.option(
    "--audit",
    "audit_path",
    type=click.Path(exists=True, path_type=Path),
    help="An audit file or --audit-dir directory: reconciled on its own when there is no "
    "--table, else used to explain the differences.",
)
@click.option(
    "--key",
    "keys",
    multiple=True,
    required=True,
    metavar="COL",
    help="Key column to total per; repeat it for a composite key.",
)
@click.option("--amount", required=True, metavar="COL", help="Amount column to sum.")
@click.option("--ledger-query", metavar="SQL", help="Query returning key..., [period], total.")
@click.option(
    "--ledger-dsn",
    metavar="CONNINFO",
    callback=_remember_dsn,
    help="Database of --ledger-query and --opening-query. Default: the -d database.",
)
@click.option(
    "--ledger-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV or Parquet file of key..., [period], total.",
)
@click.option("--opening-query", metavar="SQL", help="Query returning key..., opening total.")
@click.option(
    "--opening-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV or Parquet file of key..., opening total (added to the recovered totals).",
)
@click.option(
    "--period",
    type=click.Choice(["day", "month"]),
    help="Compare totals per key per day or month of --time-column (UTC).",
)
@click.option("--time-column", metavar="COL", help="The date or timestamp column for --period.")
@click.option(
    "--tolerance",
    default="0",
    show_default=True,
    metavar="AMOUNT",
    help="Largest difference per key still counted as a match (exact decimal).",
)
@click.option(
    "--explain",
    default=20,
    show_default=True,
    type=click.IntRange(0),
    help="Explain up to this many differing keys from the audit.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the differences to this .csv or .parquet file.",
)
@json_option
def reconcile_command(
    dsn: str | None,
    table_name: str | None,
    audit_path: Path | None,
    keys: tuple[str, ...],
    amount: str,
    ledger_query: str | None,
    ledger_dsn: str | None,
    ledger_file: Path | None,
    opening_query: str | None,
    opening_file: Path | None,
    period: str | None,
    time_column: str | None,
    tolerance: str,
    explain: int,
    out: Path | None,
    as_json: bool,
) -> None:
    """Compare per-key totals of a rebuilt table, or of an audit, with the ledger, exactly.

    Exits 3 when any key differs (beyond --tolerance).

    \b
    Examples:
      walrecover reconcile -d "dbname=bank" --table public.transactions_recovered \\
          --key account_id --amount amount --ledger-query "SELECT id, balance FROM accounts"
      walrecover reconcile --audit transactions.parquet --key account_id --amount amount \\
          --ledger-file ledger.csv --period day --time-column created_at --out diff.csv
    """
    if table_name is None and audit_path is None:
        raise click.UsageError("give --table (with -d) or --audit: what to reconcile")
    if (ledger_query is None) == (ledger_file is None):
        raise click.UsageError("give exactly one of --ledger-query and --ledger-file")
    if opening_query is not None and opening_file is not None:
        raise click.UsageError("give at most one of --opening-query and --opening-file")
    if (period is None) != (time_column is None):
        raise click.UsageError("--period and --time-column go together")
    tol = _tolerance(tolerance)
    if out is not None and out.suffix.lower() not in (".csv", ".parquet"):
        raise click.BadParameter(f"{out}: give a .csv or .parquet path", param_hint="--out")
    # A query runs on --ledger-dsn, else on the table's database (-d); an audit has none.
    ledger_db = ledger_dsn if ledger_dsn is not None else (dsn if table_name is None else None)
    if table_name is None and (ledger_query or opening_query) and ledger_db is None:
        raise click.UsageError("reconciling an audit with a query needs --ledger-dsn (or -d)")
    ledger = _ledger_source(ledger_query, ledger_file, ledger_db)
    opening = (
        _ledger_source(opening_query, opening_file, ledger_db)
        if opening_query or opening_file
        else None
    )
    from .ledger.reconcile import RecoveredAudit, RecoveredTable, reconcile  # noqa: PLC0415

    recovered = (
        RecoveredTable(dsn, _table(table_name, "--table"))
        if table_name is not None
        else RecoveredAudit(audit_path)  # type: ignore[arg-type]
    )
    result = reconcile(
        recovered,
        ledger,
        key=keys,
        amount=amount,
        period=period,  # type: ignore[arg-type]
        time_column=time_column,
        opening=opening,
        tolerance=tol,
        audit=audit_path,
        explain=explain,
    )
    _report_reconciliation(result, out, as_json)


def _report_reconciliation(result: Reconciliation, out: Path | None, as_json: bool) -> None:
    """Write the differences file, print the result; :class:`Differences` (exit 3) unless
    every key matches."""
    if out is not None:
        result.write_differences(out)
    if as_json:
        click.echo(json.dumps({**result.to_dict(), "out": str(out) if out else None}))
    else:
        from .report import reconciliation_text  # noqa: PLC0415

        click.echo(reconciliation_text(result))
        if out is not None:
            click.echo(f"  differences written to {out}.")
    if not result.matched:
        raise Differences(*(() if as_json else ("the totals do not reconcile with the ledger",)))


def _ledger_source(query: str | None, file: Path | None, dsn: str | None) -> LedgerSource:
    """A query (on ``dsn``) if given, else the file."""
    from .ledger.reconcile import LedgerFile, LedgerQuery  # noqa: PLC0415

    return LedgerQuery(query, dsn) if query else LedgerFile(file)  # type: ignore[arg-type]


def _tolerance(value: str) -> Decimal:
    """``--tolerance``: an exact amount of 0 or more."""
    try:
        tol = Decimal(value)
    except InvalidOperation:
        raise click.BadParameter(f"{value!r} is not a number", param_hint="--tolerance") from None
    if not tol.is_finite() or tol < 0:
        raise click.BadParameter("give a finite amount of 0 or more", param_hint="--tolerance")
    return tol


@main.command("swap")
@dbname_option
@click.option(
    "--table",
    "table_name",
    required=True,
    metavar="SCHEMA.TABLE",
    help="The dropped table's name: the rebuilt table is put back under it.",
)
@click.option(
    "--from",
    "from_name",
    metavar="SCHEMA.TABLE",
    help="The rebuilt table (recover's --into). Default: <table>_recovered.",
)
@click.option(
    "--ddl",
    "ddl_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The original table's DDL: pg_dump --schema-only -t TABLE of a replica or an old "
    "backup, or the migrations' SQL.",
)
@click.option(
    "--move-existing-to",
    metavar="SCHEMA",
    help="If a table already has --table's name, move it (with its indexes and sequences) "
    "into this schema instead of refusing.",
)
@click.option("--dry-run", is_flag=True, help="Check, and print the SQL without running it.")
@json_option
def swap_command(
    dsn: str | None,
    table_name: str,
    from_name: str | None,
    ddl_path: Path,
    move_existing_to: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Put a rebuilt table in place of the dropped one, with the original's definition.

    In one transaction: renames the rebuilt table into place, adds the DDL's constraints and
    indexes (validated), re-creates owned sequences after the largest key, sets defaults,
    NOT NULL, identity, owner, grants and comments, and ANALYZEs. A constraint the rows break
    stops it naming the rows; nothing is changed then.

    \b
    Example:
      pg_dump --schema-only -t public.transactions "host=replica dbname=bank" > original.sql
      walrecover swap -d "dbname=bank" --table public.transactions --ddl original.sql --dry-run
    """
    table = _table(table_name, "--table")
    source = _table(from_name, "--from") if from_name else None
    try:
        ddl = ddl_path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise click.BadParameter(f"{ddl_path} is not UTF-8 text", param_hint="--ddl") from None
    from .rebuild.swap import swap  # noqa: PLC0415

    result = swap(
        dsn, table, ddl, source=source, dry_run=dry_run, move_existing_to=move_existing_to
    )
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    elif dry_run:
        click.echo(
            f"-- walrecover swap --dry-run: {result.source} -> {result.table}, "
            f"{result.rows} rows; nothing was changed."
        )
        for item in result.ignored:
            click.echo(f"-- ignored: {item.statement} ({item.reason})")
        for note in result.notes:
            click.echo(f"-- note: {note}")
        click.echo(result.script(), nl=False)
    else:
        from .report import swap_text  # noqa: PLC0415

        click.echo(swap_text(result))
    _warn(list(result.warnings))


@main.group("audit")
def audit_group() -> None:
    """Check an audit written by recover --audit or --audit-dir."""


@audit_group.command("verify")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--manifest",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The manifest, if it is not in its usual place (PATH.manifest.json, DIR/_manifest.json).",
)
@click.option("--no-manifest", is_flag=True, help="Check the audit without its manifest.")
@click.option(
    "--chain-head",
    metavar="HEX",
    help="The chain head recorded when the audit was written: proves it is that audit.",
)
@json_option
def audit_verify_command(
    path: Path, manifest: Path | None, no_manifest: bool, chain_head: str | None, as_json: bool
) -> None:
    """Recompute an audit's row hashes, chain, typed values and counts.

    Exits 3 naming the first bad row if anything was edited, deleted, added or moved.

    \b
    Example:
      walrecover audit verify transactions.parquet
      walrecover audit verify audit-dir/ --chain-head 5f1c...e2
    """
    if manifest is not None and no_manifest:
        raise click.UsageError("give --manifest or --no-manifest, not both")
    from .audit.verify import verify_audit  # noqa: PLC0415

    result = verify_audit(
        path, manifest=manifest, use_manifest=not no_manifest, chain_head=chain_head
    )
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        from .report import verification_text  # noqa: PLC0415

        click.echo(verification_text(result))
    if not result.ok:
        raise Differences(
            *(() if as_json else (f"the audit does not verify: {result.problems[0]}",))
        )


# -- before the disaster: protect, doctor, guard (issue 11) ---------------------------------------
# A self-contained block: its imports are here so merges with the rest of cli.py stay easy.

from .ready.doctor import doctor as _doctor  # noqa: E402
from .ready.points import parse_duration as _parse_duration  # noqa: E402
from .ready.protect import PLUGINS as _PROTECT_PLUGINS  # noqa: E402
from .ready.protect import ProtectResult as _ProtectResult  # noqa: E402
from .ready.protect import protect as _protect  # noqa: E402
from .ready.protect import run_forever as _run_forever  # noqa: E402


def _duration_option(ctx: click.Context, param: click.Parameter, value: str) -> Any:
    try:
        return _parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command("protect")
@dbname_option
@click.option(
    "--table",
    "table_names",
    multiple=True,
    required=True,
    metavar="SCHEMA.TABLE",
    help="A table to keep recovery points of. Repeatable.",
)
@click.option(
    "--retain",
    required=True,
    metavar="DURATION",
    callback=_duration_option,
    help="How far back recovery must reach (48h, 2d, 1h30m): older points are dropped.",
)
@click.option(
    "--every",
    required=True,
    metavar="DURATION",
    callback=_duration_option,
    help="Make a new recovery point when the newest is this old (6h).",
)
@click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the baselines and the manifest are kept (one directory per database).",
)
@click.option(
    "--plugin",
    type=click.Choice(_PROTECT_PLUGINS),
    default="pgoutput",
    show_default=True,
    help="The output plugin of the slots protect creates.",
)
@click.option("--loop", is_flag=True, help="Keep running: sleep until the next point is due.")
@json_option
def protect_command(
    dsn: str | None,
    table_names: tuple[str, ...],
    retain: Any,
    every: Any,
    directory: Path,
    plugin: str,
    loop: bool,
    as_json: bool,
) -> None:
    """Keep recovery points: a slot plus a Parquet baseline of each table, taken in the
    slot's exported snapshot, so any moment of the last --retain can be rebuilt exactly.

    One run per invocation (cron, a systemd timer): a new point when the newest is older
    than --every, then the points the window no longer needs are dropped (only slots named
    walrecover_protect_* that DIR's manifest lists). It prints what the points cost: the WAL
    their slots retain, catalog_xmin age, disk used in DIR.

    \b
    Example (cron, every hour; a new point every 6 hours, kept 48 hours):
      walrecover protect -d "dbname=bank" --table public.transactions \\
          --retain 48h --every 6h --dir /var/lib/walrecover/bank
    """
    tables = [_table(name, "--table") for name in table_names]

    def run() -> _ProtectResult:
        return _protect(dsn, tables, directory, retain=retain, every=every, plugin=plugin)

    def report(result: _ProtectResult) -> None:
        click.echo(json.dumps(result.to_dict()) if as_json else result.report())
        _warn(list(result.warnings))

    if not loop:
        report(run())
        return
    try:
        _run_forever(run, report)
    except KeyboardInterrupt:
        click.echo("walrecover: protect stopped; the recovery points are kept", err=True)


@main.command("doctor")
@dbname_option
@click.option(
    "--table",
    "table_names",
    multiple=True,
    metavar="SCHEMA.TABLE",
    help="A table to check (repeatable); default every user table.",
)
@click.option(
    "--protect-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="The --dir of walrecover protect, whose baselines count as recovery points.",
)
@json_option
def doctor_command(
    dsn: str | None, table_names: tuple[str, ...], protect_dir: Path | None, as_json: bool
) -> None:
    """Could we recover each table right now, and back to when? Read-only.

    Shows wal_level, the database's logical slots (plugin, position, retained WAL,
    wal_status, safe_wal_size, catalog_xmin age), installed plugins, and one verdict per
    table: "recoverable back to TIME" or "not recoverable because ... — do: ...". Exit 0 all
    ok, 5 a warning, 6 a table not recoverable now (for monitoring).

    \b
    Example:
      walrecover doctor -d "dbname=bank" --protect-dir /var/lib/walrecover/bank
    """
    tables = [_table(name, "--table") for name in table_names]
    diagnosis = _doctor(dsn, tables, protect_dir)
    click.echo(json.dumps(diagnosis.to_dict()) if as_json else diagnosis.report())
    if diagnosis.exit_code:
        raise Verdict(exit_code=diagnosis.exit_code)


@main.command("guard")
@click.argument("migration", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@dbname_option
@click.option(
    "--protect-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="With -d: the --dir of walrecover protect, whose baselines count as recovery points.",
)
@json_option
def guard_command(
    migration: Path, dsn: str | None, protect_dir: Path | None, as_json: bool
) -> None:
    """Flag what a migration destroys: DROP TABLE, TRUNCATE, DELETE/UPDATE without WHERE,
    ALTER TABLE ... DROP COLUMN and ALTER COLUMN ... TYPE, with line numbers.

    With -d, each affected table must be covered by a recovery point (doctor's verdict
    "recoverable back to TIME"). Exit 0 when nothing destructive is left unproven, 7
    otherwise, 1 if the file does not parse: run it in CI or before a deploy.

    \b
    Example:
      walrecover guard migrations/0042_drop_legacy.sql -d "dbname=bank" \\
          --protect-dir /var/lib/walrecover/bank
    """
    try:
        text = migration.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise click.BadParameter(f"{migration} is not UTF-8 text", param_hint="MIGRATION") from None
    if protect_dir is not None and dsn is None:
        raise click.UsageError("--protect-dir needs -d (the database the points are of)")
    from .ready.guard import guard as _guard  # noqa: PLC0415 - pglast for guard only

    result = _guard(migration, text, dsn, protect_dir)
    click.echo(json.dumps(result.to_dict()) if as_json else result.report())
    if result.exit_code:
        raise Verdict(exit_code=result.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()


# -- inspect: find the disaster in the WAL ----------------------------------------------------


@main.command("inspect")
@dbname_option
@slot_option
@click.option(
    "--table", "table_name", required=True, metavar="SCHEMA.TABLE", help="The table to look up."
)
@click.option(
    "--wal-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Read the WAL from these segment files with pg_waldump (copied from the server, or "
    "its pg_wal). Default: pg_walinspect if installed, else the server's pg_wal if readable here.",
)
@click.option(
    "--mass",
    type=click.IntRange(0),
    default=DEFAULT_MASS,
    show_default=True,
    help="A DELETE or UPDATE of more rows than this in one transaction is a destructive event.",
)
@click.option(
    "--install-walinspect",
    is_flag=True,
    help="Run CREATE EXTENSION pg_walinspect on the source if it is missing (a write to the "
    "source: only with this option).",
)
@click.option(
    "-o",
    "--option",
    "plugin_options",
    multiple=True,
    metavar="NAME=VALUE",
    callback=_plugin_option,
    help="A plugin option for reading --slot (as for recover).",
)
@json_option
def inspect_command(
    dsn: str | None,
    slot: str | None,
    table_name: str,
    wal_dir: Path | None,
    mass: int,
    install_walinspect: bool,
    plugin_options: dict[str, str],
    as_json: bool,
) -> None:
    """Show what happened to a table in the retained WAL: its transactions, relation ids
    (a re-created table has a new one), and its DROP, TRUNCATE and mass DELETE/UPDATE, each
    with the recover command that stops just before it. The slot is read through a copy.

    \b
    Example:
      walrecover inspect -d "host=db dbname=bank user=oncall" --slot cdc \\
          --table public.transactions
    """
    table = _table(table_name, "--table")
    found = inspect_table(
        dsn,
        table,
        slot=slot,
        wal_dir=wal_dir,
        mass=mass,
        install_walinspect=install_walinspect,
        options=plugin_options,
    )
    if as_json:
        click.echo(json.dumps(found.to_dict()))
    else:
        click.echo(_inspection_text(found))


def _when(lsn: Lsn | None, moment: datetime | None) -> str:
    return f"{lsn or '-'}" + (f" at {moment.isoformat()}" if moment else "")


def _inspection_text(found: Inspection) -> str:
    span = f" from {found.start_lsn} to {found.end_lsn}" if found.start_lsn else ""
    how = found.wal or "the WAL not read"
    via = f"; slot {found.slot} through {found.plugin}" if found.slot else ""
    counts = ", ".join(f"{n} {op}" for op, n in sorted(found.counts.items())) or "no changes"
    lines = [
        f"{found.table}{span} ({how}{via}):",
        f"  {found.transactions} transactions: {counts}; first commit "
        f"{_when(*found.first_commit)}, last commit {_when(*found.last_commit)}.",
    ]
    if found.installed:
        lines.append(f"  installed {found.installed} in the source database (as asked).")
    for rel in found.relations:
        name = f"relation {rel.relation_id}" if rel.relation_id is not None else "a relation"
        state = "exists now" if rel.exists else ("dropped" if rel.dropped else "not in the catalog")
        if rel.created_lsn is not None:
            state = f"created by the commit at {rel.created_lsn}; {state}"
        lines.append(
            f"  {name}: {rel.transactions} transactions, first commit "
            f"{_when(rel.first_lsn, rel.first_time)}, last commit "
            f"{_when(rel.last_lsn, rel.last_time)} (xid {rel.last_xid}); {state}."
        )
    if found.events:
        lines.append(
            f"Destructive events (mass: more than {found.mass} rows in one transaction), "
            "each with the command that rebuilds the table as it was just before:"
        )
        for event in found.events:
            lines.append(f"  {event.describe()}")
            lines.append(f"    {found.command(event)}")
    else:
        lines.append("No destructive event found.")
    if found.wal is None:
        lines.append(f"The WAL could not be read: {found.wal_problem}.")
        if found.slot:
            first = found.first_after
            after = (
                f"; the first: xid {first.xid}, commit LSN {first.lsn}" if first is not None else ""
            )
            lines.append(
                f"  After the table's last change, {found.after_last_change} transactions "
                f"committed{after}."
            )
            for txn in found.empty_after:
                lines.append(
                    f"  without any change (a DROP looks like this): xid {txn.xid}, "
                    f"LSN {txn.lsn}, {txn.time.isoformat() if txn.time else '-'}"
                )
    for note in found.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)
