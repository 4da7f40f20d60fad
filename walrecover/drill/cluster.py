"""A throwaway PostgreSQL cluster for rehearsals and tests.

``initdb`` in a temporary directory with ``wal_level = logical``, a unix socket in that directory
and a free loopback port; run as an unprivileged user when walrecover runs as root (PostgreSQL
refuses root; Debian's ``postgres`` user is the default); stopped and removed on exit, after an
error or Ctrl-C too. The server binaries are found from ``pg_config --bindir``, PATH, then
``/usr/lib/postgresql/*/bin``, newest first.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from psycopg.conninfo import make_conninfo

from ..errors import ClusterError

_REQUIRED = ("initdb", "pg_ctl", "postgres")

#: Settings for a disposable, logical-decoding-capable server tuned for speed, not durability.
DEFAULT_SETTINGS: dict[str, str] = {
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "10",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "256MB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "max_prepared_transactions": "10",
    "logical_decoding_work_mem": "64MB",
    "log_min_messages": "warning",
}


@dataclass(frozen=True, slots=True)
class Installation:
    """A PostgreSQL server installation: its binaries, version and plugin directory."""

    bindir: Path
    major: int
    pkglibdir: Path

    def has_plugin(self, plugin: str) -> bool:
        """True if the output plugin's shared library is installed."""
        return plugin == "pgoutput" or (self.pkglibdir / f"{plugin}.so").exists()


def _version_key(path: Path) -> tuple[int, ...]:
    match = re.search(r"/(\d+)(?:\.(\d+))?/bin$", str(path))
    return tuple(int(g) for g in match.groups() if g) if match else (0,)


def _candidates() -> list[Path]:
    found: list[Path] = []
    if os.environ.get("WALRECOVER_PG_BINDIR"):
        found.append(Path(os.environ["WALRECOVER_PG_BINDIR"]))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                found.append(Path(out))
    initdb = shutil.which("initdb")
    if initdb:
        found.append(Path(initdb).resolve().parent)
    found.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True))
    return found


def find_installation() -> Installation:
    """The first installation with initdb, pg_ctl and postgres; :class:`ClusterError` if none."""
    for bindir in _candidates():
        if all((bindir / name).is_file() for name in _REQUIRED):
            return _describe(bindir)
    raise ClusterError(
        "no PostgreSQL server binaries found (initdb, pg_ctl, postgres): install the server "
        "(Debian: apt-get install postgresql) or set WALRECOVER_PG_BINDIR"
    )


def find_program(name: str) -> Path | None:
    """A PostgreSQL program (``pg_waldump``, ...) from the same places as the server binaries,
    newest installation first; None if none has it."""
    for bindir in _candidates():
        if (bindir / name).is_file():
            return bindir / name
    found = shutil.which(name)
    return Path(found) if found else None


def _describe(bindir: Path) -> Installation:
    try:
        version = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ClusterError(f"cannot run {bindir / 'postgres'}: {exc}") from None
    match = re.search(r"(\d+)(?:\.\d+)?", version)
    if match is None:
        raise ClusterError(f"cannot read the server version from {version!r}")
    major = int(match.group(1))
    pkglibdir = bindir.parent / "lib"
    pg_config = bindir / "pg_config"
    if pg_config.is_file():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [str(pg_config), "--pkglibdir"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            if out:
                pkglibdir = Path(out)
    return Installation(bindir=bindir, major=major, pkglibdir=pkglibdir)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """A running throwaway cluster; use as a context manager (or call start/stop).

    ``require_plugins`` names output plugins that must be installed: a missing one is refused
    before anything starts, naming the package to install (pgoutput is always there).
    """

    superuser = "postgres"

    def __init__(
        self,
        *,
        installation: Installation | None = None,
        settings: dict[str, str] | None = None,
        keep: bool = False,
        run_as: str | None = None,
        require_plugins: tuple[str, ...] = (),
    ) -> None:
        self.installation = installation or find_installation()
        for plugin in require_plugins:
            if not self.installation.has_plugin(plugin):
                major = self.installation.major
                raise ClusterError(
                    f"output plugin {plugin} is not installed for PostgreSQL {major} (no "
                    f"{plugin}.so in {self.installation.pkglibdir}): install the package "
                    f"postgresql-{major}-{plugin} (sudo apt-get install "
                    f"postgresql-{major}-{plugin}), or use pgoutput, which is built in"
                )
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.keep = keep
        self.run_as = run_as if run_as is not None else _default_user()
        self.directory: Path | None = None
        self.port = 0
        self._running = False

    @property
    def data(self) -> Path:
        assert self.directory is not None, "start the cluster first"
        return self.directory / "data"

    @property
    def host(self) -> str:
        """The unix socket directory (libpq's host for a socket)."""
        assert self.directory is not None, "start the cluster first"
        return str(self.directory)

    def dsn(self, dbname: str = "postgres", **extra: str) -> str:
        """A conninfo for this cluster's superuser over the unix socket."""
        return make_conninfo(
            "", host=self.host, port=str(self.port), user=self.superuser, dbname=dbname, **extra
        )

    def tcp_dsn(self, dbname: str = "postgres", **extra: str) -> str:
        """A conninfo over the loopback TCP port (for password and URI tests)."""
        return make_conninfo(
            "", host="127.0.0.1", port=str(self.port), user=self.superuser, dbname=dbname, **extra
        )

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        env.pop("PGDATA", None)
        try:
            return subprocess.run(  # type: ignore[call-overload, no-any-return]
                args,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                env=env,
                cwd=self.directory,
                **kwargs,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise ClusterError(f"{Path(args[0]).name} failed to run: {exc}") from None

    def start(self) -> Cluster:
        """initdb and start the server; raise :class:`ClusterError` with the log if it fails."""
        bindir = self.installation.bindir
        self.directory = Path(tempfile.mkdtemp(prefix="walrecover-pg-"))
        _CLEANUP.add(self)
        try:
            if self.run_as:
                entry = pwd.getpwnam(self.run_as)
                os.chown(self.directory, entry.pw_uid, entry.pw_gid)
            os.chmod(self.directory, 0o755)
            result = self._run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    self.superuser,
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--no-sync",
                ]
            )
            if result.returncode != 0:
                raise ClusterError(f"initdb failed: {_last_line(result.stderr)}")
            for attempt in range(3):
                self.port = _free_port()
                self._write_config()
                result = self._run(
                    [
                        str(bindir / "pg_ctl"),
                        "-D",
                        str(self.data),
                        "-l",
                        str(self.directory / "server.log"),
                        "-w",
                        "-t",
                        "60",
                        "start",
                    ]
                )
                if result.returncode == 0:
                    self._running = True
                    return self
                if attempt == 2:
                    raise ClusterError(
                        f"the throwaway server did not start: {self._log_tail()}"
                        f" (logs in {self.directory})"
                    )
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def _write_config(self) -> None:
        settings = {
            **self.settings,
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.directory}'",
        }
        lines = [f"{name} = {value}" for name, value in settings.items()]
        conf = self.data / "walrecover.conf"
        conf.write_text("\n".join(lines) + "\n")
        main = self.data / "postgresql.conf"
        text = main.read_text()
        if "include = 'walrecover.conf'" not in text:
            main.write_text(text + "\ninclude = 'walrecover.conf'\n")
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            os.chown(conf, entry.pw_uid, entry.pw_gid)

    def _log_tail(self) -> str:
        assert self.directory is not None
        log = self.directory / "server.log"
        try:
            lines = [line for line in log.read_text().splitlines() if line.strip()]
        except OSError:
            return "no server log"
        return lines[-1] if lines else "empty server log"

    def restart(self) -> None:
        """Restart the server (for tests of connections that die)."""
        result = self._run(
            [
                str(self.installation.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",  # without a log file the new postmaster keeps our pipes open
                str(self.data.parent / "server.log"),
                "-w",
                "-m",
                "fast",
                "restart",
            ]
        )
        if result.returncode != 0:
            raise ClusterError(f"restart failed: {self._log_tail()}")

    def reset_wal(self, *options: str) -> None:
        """Stop the server, run ``pg_resetwal OPTIONS`` on its data, start it again.

        For tests and drills of a cluster past xid wraparound (``-e EPOCH``); the WAL is
        reset too, so create replication slots afterwards.
        """
        bindir = self.installation.bindir
        for args in (
            [str(bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
            [str(bindir / "pg_resetwal"), *options, "-D", str(self.data)],
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.data.parent / "server.log"),
                "-w",
                "start",
            ],
        ):
            result = self._run(args)
            if result.returncode != 0:
                raise ClusterError(
                    f"{Path(args[0]).name} failed: {_last_line(result.stderr or result.stdout)}"
                )

    def detach(self) -> None:
        """Leave the server running and its directory in place after this process exits."""
        self.keep = True
        _CLEANUP.discard(self)

    def stop(self) -> None:
        """Stop the server and remove its directory (unless ``keep``); safe to call twice."""
        _CLEANUP.discard(self)
        if self._running:
            self._running = False
            self._run(
                [
                    str(self.installation.bindir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                timeout=60,
            )
        if self.directory is not None and not self.keep:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def _default_user() -> str:
    if os.geteuid() != 0:
        return ""
    user = os.environ.get("WALRECOVER_PG_USER", "postgres")
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise ClusterError(
            f"running as root, but there is no user {user!r} to run PostgreSQL as: create one "
            "(Debian: the postgresql package creates 'postgres') or set WALRECOVER_PG_USER"
        ) from None
    return user


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


_CLEANUP: set[Cluster] = set()


@atexit.register
def _stop_all() -> None:
    for cluster in list(_CLEANUP):
        with contextlib.suppress(Exception):
            cluster.stop()
