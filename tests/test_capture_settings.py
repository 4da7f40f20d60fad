"""Captures printed under other output settings: stated, applied, and contradictions caught.

Every capture here is made by the installed ``pg_recvlogical`` with ``PGOPTIONS`` giving its
session another DateStyle, IntervalStyle, TimeZone, bytea_output or extra_float_digits, as a
server, database or role setting would. Recovered with the settings stated
(``--capture-setting``), every plugin's capture must give the truth row for row; recovered with
settings that cannot have printed the capture, walrecover must stop with one line naming the
column, the value, the line and the option to give, and never advise a rerun.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest
from capture_helpers import capture_dir, o_args, pg_recvlogical
from click.testing import Result
from helpers import Database, cli, differences, stderr_lines

import walrecover
from walrecover.drill.cluster import Cluster
from walrecover.errors import CaptureSettingError
from walrecover.rebuild.recover import recover_capture
from walrecover.stream.model import TableName
from walrecover.stream.settings import CaptureSettings

PLUGINS = ("wal2json", "test_decoding", "pgoutput")

#: Session settings pg_recvlogical's session had, by name. wal2json cannot carry bytea under
#: escape (tested below), so its captures of these sets keep bytea_output hex.
SETS: dict[str, dict[str, str]] = {
    "sql-dmy": {
        "DateStyle": "SQL, DMY",
        "IntervalStyle": "sql_standard",
        "TimeZone": "America/New_York",
        "bytea_output": "escape",
    },
    "postgres-mdy": {
        "DateStyle": "Postgres, MDY",
        "IntervalStyle": "iso_8601",
        "TimeZone": "Europe/Berlin",
    },
    "german": {
        "DateStyle": "German",
        "IntervalStyle": "postgres_verbose",
        "TimeZone": "Asia/Tokyo",
        "bytea_output": "escape",
    },
    "iso-kolkata": {
        "DateStyle": "ISO, DMY",
        "IntervalStyle": "sql_standard",
        "TimeZone": "Asia/Kolkata",
    },
}
#: Captures for single checks: (plugin, settings).
EXTRA: dict[str, tuple[str, dict[str, str]]] = {
    "ist": ("test_decoding", {"DateStyle": "SQL, MDY", "TimeZone": "Asia/Kolkata"}),
    "efd0": ("test_decoding", {"extra_float_digits": "0"}),
    "wal2json-escape": ("wal2json", {"bytea_output": "escape"}),
}

SCHEMA = """
CREATE TABLE t (
    id integer PRIMARY KEY, d date, ts timestamp, tz timestamptz, iv interval, b bytea,
    f double precision, da date[], iva interval[], tr tstzrange, note text
)
"""
WORKLOAD = [
    r"""INSERT INTO t VALUES
    (1, '2024-12-17', '2024-12-17 07:37:16.5', '2024-12-17 07:37:16.123456+00',
     '-1 day -2 hours', '\x00415c27ff', 0.1, '{2024-12-05,2024-01-31}',
     '{"1 year 2 mons","-3 days 04:00:00"}', '[2024-12-17 07:00+00,2024-12-18 00:00+00)', 'one'),
    (2, '0044-03-15 BC', 'infinity', '2024-07-01 12:00:00+00',
     '1 year 2 mons 3 days 04:05:06.789', 'ab\\cd', 1e300, NULL, NULL, 'empty', 'two'),
    (3, '2024-02-03', '2024-02-03 00:00:00', '2024-11-03 06:30:00+00', '0', '',
     1::float8 / 3, '{}', '{}', '(,2024-01-01 00:00+00]', 'three')""",
    "UPDATE t SET iv = '-1 mons +3 days', d = '2024-05-06', tz = '2024-03-31 01:30:00+00',"
    " b = '\\x5c78' WHERE id = 1",
    "UPDATE t SET id = 4, ts = '2024-11-03 01:30:00' WHERE id = 3",
    "DELETE FROM t WHERE id = 2",
    "INSERT INTO t VALUES (5, '2023-01-13', '1999-12-31 23:59:59.999999',"
    " '1900-01-01 00:00:00+00', '-7 days 23:59:59', '\\x5c', -2.5e-310, '{2023-01-13}',"
    " '{\"-1 year -2 mons -3 days -04:05:06\"}', '[2024-06-01 00:00+00,)', 'five')",
]

_counter = itertools.count(1)


@dataclass
class Captured:
    """The capture database (the truth, ``t`` dropped) and every capture made of it."""

    db: Database
    files: dict[tuple[str, str], Path]  # (set or extra name, plugin) -> capture


def _settings_for(plugin: str, settings: dict[str, str]) -> dict[str, str]:
    if plugin == "wal2json":
        return {k: v for k, v in settings.items() if k != "bytea_output"}
    return dict(settings)


@pytest.fixture(scope="module")
def captured(cluster: Cluster) -> Iterator[Captured]:
    """One workload, captured by every plugin under every set of settings."""
    name = f"capset{next(_counter)}"
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = Database(cluster, name)
    db.execute(SCHEMA)
    db.execute("CREATE PUBLICATION capture_pub FOR TABLE t")
    wanted: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}
    for set_name, settings in SETS.items():
        for plugin in PLUGINS:
            wanted[(set_name, plugin)] = (plugin, _settings_for(plugin, settings))
    for extra, (plugin, settings) in EXTRA.items():
        wanted[(extra, plugin)] = (plugin, settings)
    slots = {key: f"cap_{i}" for i, key in enumerate(wanted)}
    for key, slot in slots.items():
        db.create_slot(slot, wanted[key][0])
    with db.connect() as conn:
        for step in WORKLOAD:
            conn.execute(step)
    db.execute("CREATE UNLOGGED TABLE truth AS SELECT * FROM t")
    db.execute("DROP TABLE t")
    end = db.lsn()
    directory = capture_dir(cluster)
    try:
        files = {}
        for key, (plugin, settings) in wanted.items():
            path = directory / f"{key[0]}-{plugin}.capture"
            files[key] = pg_recvlogical(db, slots[key], plugin, path, settings=settings, endpos=end)
            db.execute("SELECT pg_drop_replication_slot(%s)", (slots[key],))
        yield Captured(db, files)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE database = %s AND NOT active",
                (name,),
            )
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def _setting_args(settings: dict[str, str]) -> list[str]:
    return [
        arg for name, value in settings.items() for arg in ("--capture-setting", f"{name}={value}")
    ]


def _recover_cli(captured: Captured, key: tuple[str, str], into: str, *extra: str) -> Result:
    return cli(
        "recover",
        "--target",
        captured.db.dsn,
        "--from-file",
        str(captured.files[key]),
        *o_args(key[1]),
        "--table",
        "public.t",
        "--into",
        f"public.{into}",
        *extra,
    )


# -- stated settings give the truth, for every plugin --------------------------------------------


@pytest.mark.parametrize("plugin", PLUGINS)
@pytest.mark.parametrize("set_name", list(SETS))
def test_stated_settings_recover_the_truth(
    captured: Captured, set_name: str, plugin: str, tmp_path: Path
) -> None:
    """Each capture, recovered with the settings its session had, is the table row for row."""
    settings = _settings_for(plugin, SETS[set_name])
    into = f"r_{set_name.replace('-', '_')}_{plugin}"
    audit = tmp_path / "audit.parquet"
    result = _recover_cli(
        captured, (set_name, plugin), into, *_setting_args(settings), "--audit", str(audit)
    )
    assert result.exit_code == 0, result.stderr
    assert differences(captured.db, "truth", TableName("public", into)) == (0, 0)
    assert captured.db.scalar(f"SELECT count(*) FROM {into}") == 3
    # The audit records the settings, keeps the exact text, and still verifies.
    meta = pq.read_metadata(audit).metadata
    recorded = json.loads(meta[b"walrecover.capture_settings"])
    assert {k: recorded[k] for k in settings} == {
        k: CaptureSettings.parse(settings).session()[k] for k in settings
    }
    assert walrecover.verify_audit(audit).ok
    rows = walrecover.read_audit(audit)
    if settings.get("bytea_output") == "escape":  # escape output is normalised exactly
        first = rows[rows["op"] == "insert"].iloc[0]
        assert first["new_b"] == b"\x00A\\'\xff"
    if settings["DateStyle"].startswith("ISO"):
        assert rows["new_d"].notna().any()
    else:  # documented: non-ISO date text leaves the typed column NULL, the text exact
        assert rows["new_d"].isna().all()
        assert "audit's typed date and timestamp columns" in result.stderr


def test_library_takes_the_settings(captured: Captured) -> None:
    """``recover_capture(capture_settings=...)`` is what the option does."""
    result = recover_capture(
        captured.files[("sql-dmy", "pgoutput")],
        "pgoutput",
        TableName("public", "t"),
        target=captured.db.dsn,
        into=TableName("public", "lib_sql_dmy"),
        options={"proto_version": "1", "publication_names": "capture_pub"},
        capture_settings=SETS["sql-dmy"],
    )
    assert result.exact
    assert differences(captured.db, "truth", TableName("public", "lib_sql_dmy")) == (0, 0)


# -- contradictions stop with the option to give, never "rerun" ----------------------------------


def _assert_refused(result: Result, *patterns: str) -> str:
    assert result.exit_code == 1, result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1, lines
    line = lines[0]
    assert "rerun" not in line
    for pattern in patterns:
        assert pattern in line, line
    return line


@pytest.mark.parametrize("plugin", PLUGINS)
def test_unstated_settings_are_refused_naming_the_option(captured: Captured, plugin: str) -> None:
    """Before, DateStyle 'SQL, DMY' failed with "field value out of range ... rerun"."""
    line = _assert_refused(
        _recover_cli(captured, ("sql-dmy", plugin), f"u_{plugin}"),
        "column public.t.d",
        "'17/12/2024'",
        "--capture-setting DateStyle='SQL, DMY'",
        ".capture (byte " if plugin == "pgoutput" else ".capture (line ",
    )
    if plugin == "wal2json":
        assert "at LSN" in line


@pytest.mark.parametrize("plugin", PLUGINS)
def test_sql_standard_interval_is_refused_then_exact(captured: Captured, plugin: str) -> None:
    """The issue's case: '-1 day -2 hours' came back as '-1 days +02:00:00' with exit 0."""
    key = ("iso-kolkata", plugin)
    _assert_refused(
        _recover_cli(captured, key, f"iv_{plugin}"),
        "column public.t.iv",
        "'-1 2:00:00'",
        "--capture-setting IntervalStyle=sql_standard",
    )
    result = _recover_cli(
        captured, key, f"iv_{plugin}", "--capture-setting", "IntervalStyle=sql_standard", "--force"
    )
    assert result.exit_code == 0, result.stderr
    assert differences(captured.db, "truth", TableName("public", f"iv_{plugin}")) == (0, 0)
    assert captured.db.scalar(f"SELECT iv::text FROM iv_{plugin} WHERE id = 5") == (
        "-7 days +23:59:59"
    )


def test_wrong_field_order_names_the_right_one(captured: Captured) -> None:
    _assert_refused(
        _recover_cli(
            captured,
            ("sql-dmy", "test_decoding"),
            "order",
            *_setting_args({**SETS["sql-dmy"], "DateStyle": "SQL, MDY"}),
        ),
        "'17/12/2024'",
        "DateStyle 'SQL, MDY'",
        "--capture-setting DateStyle='SQL, DMY'",
    )


def test_iso_8601_interval_is_refused_naming_its_style(captured: Captured) -> None:
    stated = {k: v for k, v in SETS["postgres-mdy"].items() if k != "IntervalStyle"}
    _assert_refused(
        _recover_cli(captured, ("postgres-mdy", "pgoutput"), "iso", *_setting_args(stated)),
        "interval value 'P-1DT-2H'",
        "--capture-setting IntervalStyle=iso_8601",
    )


def test_escape_bytea_under_hex_is_refused(captured: Captured) -> None:
    stated = {k: v for k, v in SETS["german"].items() if k != "bytea_output"}
    _assert_refused(
        _recover_cli(captured, ("german", "test_decoding"), "esc", *_setting_args(stated)),
        "column public.t.b",
        "--capture-setting bytea_output=escape",
    )


@pytest.mark.parametrize("stated", [{}, {"bytea_output": "escape"}])
def test_wal2json_cannot_carry_escape_bytea(captured: Captured, stated: dict[str, str]) -> None:
    """Before: "invalid hexadecimal digit ... rerun". wal2json cut two characters of each value."""
    _assert_refused(
        _recover_cli(captured, ("wal2json-escape", "wal2json"), "w2j", *_setting_args(stated)),
        "bytea",
        "wal2json cuts the first two characters",
        "bytea_output hex",
    )


def test_wrong_time_zone_is_refused(captured: Captured) -> None:
    stated = {k: v for k, v in SETS["sql-dmy"].items() if k != "TimeZone"}
    _assert_refused(
        _recover_cli(captured, ("sql-dmy", "pgoutput"), "tz", *_setting_args(stated)),
        "column public.t.tz",
        "EST",
        "under TimeZone 'GMT'",
        "--capture-setting TimeZone=",
    )


def test_zone_abbreviation_postgresql_reads_otherwise_is_refused(captured: Captured) -> None:
    """Asia/Kolkata prints IST (+05:30); PostgreSQL reads IST as Israel's +02: not exact."""
    _assert_refused(
        _recover_cli(captured, ("ist", "test_decoding"), "ist", *_setting_args(EXTRA["ist"][1])),
        "IST",
        "cannot be carried exactly",
        "DateStyle ISO",
    )


def test_rounded_floats_are_not_proven_exact(captured: Captured) -> None:
    """extra_float_digits 0 lost digits at capture time: warn, and exit 4 (not proven)."""
    result = _recover_cli(
        captured, ("efd0", "test_decoding"), "efd", "--capture-setting", "extra_float_digits=0"
    )
    assert result.exit_code == 4, result.stderr
    assert "extra_float_digits 0" in result.stderr
    assert "WARNING: not proven exact" in result.stderr
    # It is really so: 1/3 lost its last digits.
    assert differences(captured.db, "truth", TableName("public", "efd")) != (0, 0)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("DateStyle=Klingon", "not a date style"),
        ("DateStyle=SQL, German", "two output styles"),
        ("IntervalStyle=fancy", "IntervalStyle"),
        ("bytea_output=base64", "hex or escape"),
        ("extra_float_digits=9", "between -15 and 3"),
        ("lc_monetary=C", "not a capture setting"),
        ("DateStyle", "NAME=VALUE"),
    ],
)
def test_bad_settings_are_usage_errors(captured: Captured, item: str, message: str) -> None:
    result = _recover_cli(captured, ("sql-dmy", "test_decoding"), "bad", "--capture-setting", item)
    assert result.exit_code == 2
    assert message in result.stderr


def test_unknown_time_zone_is_one_line(captured: Captured) -> None:
    line = _assert_refused(
        _recover_cli(
            captured,
            ("sql-dmy", "test_decoding"),
            "zone",
            "--capture-setting",
            "TimeZone=Mars/Base",
        ),
        "TimeZone='Mars/Base'",
    )
    assert "refused by the target server" in line


def test_capture_setting_with_a_slot_is_a_usage_error(captured: Captured) -> None:
    result = cli(
        "recover", "-d", captured.db.dsn, "--slot", "x", "--table", "t",
        "--capture-setting", "DateStyle=SQL",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--capture-setting describes a --from-file capture" in result.stderr


def test_parse_names_and_defaults() -> None:
    assert CaptureSettings.parse({}).session() == {
        "DateStyle": "ISO, MDY",
        "IntervalStyle": "postgres",
        "TimeZone": "GMT",
        "bytea_output": "hex",
        "extra_float_digits": "1",
    }
    assert CaptureSettings.parse({"datestyle": "german"}).datestyle == "German, DMY"
    assert CaptureSettings.parse({"DATESTYLE": "'sql,european'"}).datestyle == "SQL, DMY"
    assert CaptureSettings.parse({"DateStyle": "DMY"}).datestyle == "ISO, DMY"
    assert CaptureSettings.parse({"DateStyle": "Postgres, US"}).date_order == "MDY"
    assert CaptureSettings.parse({"DateStyle": "SQL, YMD"}).date_order == "MDY"


# -- decode ------------------------------------------------------------------------------------


def test_decode_refuses_contradictions(captured: Captured) -> None:
    result = cli(
        "decode", "--from-file", str(captured.files[("german", "test_decoding")]),
        "--plugin", "test_decoding",
    )  # fmt: skip
    _assert_refused(result, "'17.12.2024'", "--capture-setting DateStyle='German'")


def test_decode_sql_reads_back_as_the_truth(captured: Captured) -> None:
    """The redo script sets the capture's settings first, so its literals mean what they said."""
    key = ("german", "pgoutput")  # test_decoding's redo SQL cannot name its first update's row
    result = cli(
        "decode", "--from-file", str(captured.files[key]), *o_args("pgoutput"),
        "--format", "sql", "--table", "public.t", *_setting_args(SETS["german"]),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("-- the capture's values were printed with these settings")
    assert "SET DateStyle = 'German, DMY';" in result.stdout
    db = captured.db
    db.execute(SCHEMA)
    try:
        with db.connect() as conn:
            conn.execute(result.stdout)
        assert differences(db, "truth", "t") == (0, 0)
    finally:
        db.execute("DROP TABLE t")


def test_library_error_is_a_decode_error(captured: Captured) -> None:
    with pytest.raises(CaptureSettingError, match=r"line \d+\): column public\.t\.d"):
        recover_capture(
            captured.files[("postgres-mdy", "test_decoding")],
            "test_decoding",
            TableName("public", "t"),
            target=captured.db.dsn,
            into=TableName("public", "lib_err"),
        )
