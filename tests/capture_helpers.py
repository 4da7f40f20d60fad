"""Real ``pg_recvlogical`` captures, made by the installed binary with chosen session settings.

``pg_recvlogical``'s session prints values under whatever DateStyle, IntervalStyle, TimeZone,
bytea_output and extra_float_digits the server, database, role or ``PGOPTIONS`` give it; these
helpers run it with ``PGOPTIONS`` so a test can make the captures a user would have.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from helpers import Database

from walrecover.drill.cluster import Cluster, find_installation
from walrecover.stream.decoders import plugin_options

#: The options a user would give pg_recvlogical for each plugin (and then to walrecover's -o).
CAPTURE_OPTIONS: dict[str, dict[str, str]] = {
    "wal2json": {
        "format-version": "2",
        "include-xids": "1",
        "include-timestamp": "1",
        "include-lsn": "1",
        "include-pk": "1",
        "include-type-oids": "1",
    },
    "test_decoding": {},
    "pgoutput": {"proto_version": "1", "publication_names": "capture_pub"},
}


def capture_dir(cluster: Cluster) -> Path:
    """A new directory the cluster's run-as user (who runs pg_recvlogical) can write; pytest's
    own temporary directories are private to root. The caller removes it."""
    directory = Path(tempfile.mkdtemp(prefix="walrecover-capture-"))
    if cluster.run_as:
        entry = pwd.getpwnam(cluster.run_as)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    return directory


def pgoptions(settings: dict[str, str]) -> str:
    """``PGOPTIONS`` for session settings (``-c datestyle=SQL,DMY ...``)."""
    return " ".join(f"-c {name}={value.replace(' ', '')}" for name, value in settings.items())


def pg_recvlogical(
    db: Database,
    slot: str,
    plugin: str,
    path: Path,
    *,
    settings: dict[str, str] | None = None,
    endpos: str | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Consume ``slot`` up to ``endpos`` (default: now) into ``path`` with ``pg_recvlogical``,
    its session given ``settings`` through PGOPTIONS, as the cluster's run-as user."""
    cluster = db.cluster
    endpos = endpos or db.lsn()
    binary = find_installation().bindir / "pg_recvlogical"
    args = [str(binary), "-d", db.dsn, "--start", "--no-loop", "-S", slot, "-P", plugin]
    args += ["-E", endpos, "-f", str(path), "-F", "0", "-s", "1"]
    for name, value in (options if options is not None else CAPTURE_OPTIONS[plugin]).items():
        args += ["-o", f"{name}={value}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({"LC_ALL": "C", "LANG": "C"})
    if settings:
        env["PGOPTIONS"] = pgoptions(settings)
    kwargs: dict[str, Any] = {}
    if cluster.run_as:
        entry = pwd.getpwnam(cluster.run_as)
        kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=120, env=env, check=False, **kwargs
    )
    assert result.returncode == 0 and path.is_file(), result.stderr
    return path


def o_args(plugin: str) -> list[str]:
    """``--plugin P -o NAME=VALUE ...`` for the walrecover CLI, as the capture was made."""
    args = ["--plugin", plugin]
    for name, value in CAPTURE_OPTIONS[plugin].items():
        args += ["-o", f"{name}={value}"]
    return args


# The registry must accept every option set above (a typo here would test nothing).
for _plugin, _options in CAPTURE_OPTIONS.items():
    plugin_options(_plugin, (), _options)
