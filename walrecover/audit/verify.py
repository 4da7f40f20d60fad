"""``walrecover audit verify``: recompute an audit's hashes, chain, typed values and counts.

An auditor need not trust the tool that wrote the audit: every row's SHA-256 is recomputed from
its canonical content, the chain from :data:`~walrecover.audit.format.CHAIN_SEED`, every typed value
from its exact text, and the counts and file checksums against the metadata and the manifest.
The first bad row is named.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import AuditError
from ..report import verification_text
from .format import (
    CHAIN_SEED,
    HASH_COLUMNS,
    HASHED,
    PROBLEM_LIMIT,
    VERIFY_BATCH_ROWS,
    hash_rows,
    kv_metadata,
    load_manifest,
    manifest_path,
    sha256_of,
)
from .pgarrow import TypedField, fields_of, typed_arrays

# -- verification --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    """What :func:`verify_audit` found: ``ok``, or the problems, the first bad row first."""

    path: str
    ok: bool
    rows: int
    files: int
    chain_head: str | None
    #: The first :data:`PROBLEM_LIMIT` problems, each naming its row or file.
    problems: tuple[str, ...]
    #: How many rows had a problem (all of them are counted, not only those listed).
    bad_rows: int
    #: Position (0-based, in seq order) of the first bad row, or None.
    first_bad_row: int | None
    manifest: str | None
    checked: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "path": self.path,
            "ok": self.ok,
            "rows": self.rows,
            "files": self.files,
            "chain_head": self.chain_head,
            "problems": list(self.problems),
            "bad_rows": self.bad_rows,
            "first_bad_row": self.first_bad_row,
            "manifest": self.manifest,
            "checked": list(self.checked),
        }

    def report(self) -> str:
        """The result for a person: what was checked, and OK or the problems
        (:func:`walrecover.report.verification_text`)."""
        return verification_text(self)


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.bad_rows = 0
        self.first_bad_row: int | None = None
        self.file_problems: list[str] = []

    def row(self, position: int, message: str) -> None:
        self.bad_rows += 1
        if self.first_bad_row is None:
            self.first_bad_row = position
        if len(self.items) < PROBLEM_LIMIT:
            self.items.append(message)

    def file(self, message: str) -> None:
        self.file_problems.append(message)

    def all(self) -> tuple[str, ...]:
        return tuple(self.items + self.file_problems[: max(PROBLEM_LIMIT - len(self.items), 1)])


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def _files_in_order(
    path: Path, manifest: Mapping[str, Any] | None, problems: _Problems
) -> list[tuple[Path, str]]:
    """The audit's files in seq order: the manifest's order, or by each file's first seq."""
    if not path.is_dir():
        return [(path, path.name)]
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*.parquet")}
    if manifest is not None:
        listed = [entry["path"] for entry in manifest.get("files", [])]
        for relative in listed:
            if relative not in on_disk:
                problems.file(f"file {relative} of the manifest is missing from {path}")
        for relative in sorted(on_disk - set(listed)):
            problems.file(f"file {relative} is in {path} but not in the manifest")
        return [(path / r, r) for r in listed if r in on_disk]

    def first_seq(relative: str) -> int:
        table = pq.ParquetFile(path / relative).read_row_group(0, columns=["seq"])
        return int(table.column(0)[0].as_py()) if table.num_rows else -1

    return [(path / r, r) for r in sorted(on_disk, key=first_seq)]


def verify_audit(
    path: str | os.PathLike[str],
    *,
    manifest: str | os.PathLike[str] | None = None,
    use_manifest: bool = True,
    chain_head: str | None = None,
) -> Verification:
    """Recompute an audit's hashes, chain, typed values and counts; report the first bad row.

    Checks, for every row in seq order: its ``seq`` is the next one (a deleted or moved row
    shows here), its ``row_hash`` is the SHA-256 of its content (an edited value), its
    ``chain_hash`` follows from the previous row's, and each typed column holds what its exact
    text says. Then the row count, outcome counts and chain head against the file metadata, the
    manifest (each file's SHA-256 too) and, if given, a ``chain_head`` recorded elsewhere (the
    only check a forger who rewrites file, metadata and manifest together cannot pass).
    """
    path = Path(path)
    if not path.exists():
        raise AuditError(f"the audit {path} does not exist", path=str(path))
    problems = _Problems()
    checked = ["seq order", "row hashes", "chain", "typed columns", "counts"]
    manifest_file = Path(manifest) if manifest is not None else manifest_path(path)
    manifest_data = _manifest(manifest_file, problems) if use_manifest else None
    if manifest_data is not None:
        checked.append("manifest")
    files = _files_in_order(path, manifest_data, problems)
    walk = _Walk(problems)
    file_meta: dict[str, Any] = {}
    for file, relative in files:
        file_meta, file_rows = walk.file(file, relative)
        if path.is_dir():
            _check_file_meta(relative, file_meta, file_rows, problems)
    meta = file_meta if not path.is_dir() else dict((manifest_data or {}).get("metadata", {}))
    head = walk.chain
    if not path.is_dir() and meta:
        _check_totals(
            f"the metadata of {path.name}", meta, walk.position, head, walk.counts, problems
        )
    if manifest_data is not None:
        _check_totals(
            f"the manifest {manifest_file.name}",
            manifest_data,
            walk.position,
            head,
            walk.counts,
            problems,
        )
        _check_checksums(path, manifest_data, problems)
    if chain_head is not None:
        checked.append("expected chain head")
        if chain_head.lower() != head:
            problems.file(
                f"the chain ends at {head}, not at the expected chain head {chain_head}: the "
                "audit is not the one recorded"
            )
    all_problems = problems.all()
    return Verification(
        path=str(path),
        ok=not all_problems,
        rows=walk.position,
        files=len(files),
        chain_head=head,
        problems=all_problems,
        bad_rows=problems.bad_rows,
        first_bad_row=problems.first_bad_row,
        manifest=str(manifest_file) if manifest_data is not None else None,
        checked=tuple(checked),
    )


class _Walk:
    """Every row of the audit in seq order: its seq, row hash, chain link and typed values
    checked, the outcomes counted, the chain followed."""

    def __init__(self, problems: _Problems) -> None:
        self.problems = problems
        self.position = 0
        self.expected_seq = 0
        self.chain = CHAIN_SEED
        self.counts: dict[str, int] = {}

    def file(self, file: Path, relative: str) -> tuple[dict[str, Any], int]:
        """Check one file's rows; return its metadata and its row count."""
        try:
            parquet = pq.ParquetFile(file, pre_buffer=False)
        except (OSError, pa.ArrowException) as exc:
            raise AuditError(f"cannot read the audit {file}: {exc}", path=str(file)) from None
        file_meta = kv_metadata(parquet.metadata.metadata)
        missing = [n for n in (*HASHED, *HASH_COLUMNS) if n not in parquet.schema_arrow.names]
        if missing:
            raise AuditError(
                f"{file} is not a walrecover audit: it has no column {missing[0]!r}",
                path=str(file),
            )
        fields = fields_of(parquet.schema_arrow)
        file_rows = 0
        for batch in parquet.iter_batches(batch_size=VERIFY_BATCH_ROWS):
            file_rows += self.batch(pa.Table.from_batches([batch]), fields, relative)
        return file_meta, file_rows

    def batch(self, table: pa.Table, fields: Sequence[TypedField], relative: str) -> int:
        """Check a batch of rows; return how many."""
        seqs = table.column("seq").to_pylist()
        stored_rows = table.column("row_hash").to_pylist()
        stored_chain = table.column("chain_hash").to_pylist()
        computed, _, _ = hash_rows(table, CHAIN_SEED)
        typed_bad = _typed_mismatches(table, fields)
        xids = table.column("xid").to_pylist()
        lsns = table.column("commit_lsn").to_pylist()
        for value in table.column("outcome").to_pylist():
            self.counts[value] = self.counts.get(value, 0) + 1
        for i, seq in enumerate(seqs):
            where = f"row {self.position} (seq {seq}, xid {xids[i]}, commit LSN {lsns[i]})"
            problem = self.row_problem(seq, computed[i], stored_rows[i], stored_chain[i])
            if problem is None and typed_bad.get(i):
                problem = typed_bad[i]
            if problem is not None:
                self.problems.row(self.position, f"{where} in {relative}: {problem}")
            self.chain = stored_chain[i] or self.chain
            self.expected_seq += 1
            self.position += 1
        return len(seqs)

    def row_problem(
        self, seq: Any, computed: str, stored_row: str | None, stored_chain: str | None
    ) -> str | None:
        """What is wrong with a row's seq, hash or chain link, or None."""
        link = hashlib.sha256((self.chain + (stored_row or "")).encode()).hexdigest()
        if seq != self.expected_seq:
            expected = self.expected_seq
            self.expected_seq = seq if isinstance(seq, int) else self.expected_seq
            return f"seq {expected} was expected here: a row was deleted, inserted or moved"
        if computed != stored_row:
            return "row_hash does not match the row's content (edited)"
        if link != stored_chain:
            return (
                "chain_hash does not follow from the row before it (a row was deleted, "
                "inserted or moved, or its hash rewritten)"
            )
        return None


def _manifest(manifest_file: Path, problems: _Problems) -> dict[str, Any] | None:
    """The manifest's content, or None (a problem) when it is missing."""
    if manifest_file.exists():
        return load_manifest(manifest_file)
    problems.file(
        f"the manifest {manifest_file} is missing: give it with --manifest PATH, or "
        "pass --no-manifest to check the audit without it"
    )
    return None


def _check_checksums(path: Path, manifest: Mapping[str, Any], problems: _Problems) -> None:
    """Each file's SHA-256 against the manifest's."""
    for entry in manifest.get("files", []):
        target = path / entry["path"] if path.is_dir() else path
        if target.exists() and sha256_of(target) != entry.get("sha256"):
            problems.file(
                f"{entry['path']}: its SHA-256 differs from the manifest's: the file was "
                "changed after it was written"
            )


def _check_file_meta(
    relative: str, meta: Mapping[str, Any], rows: int, problems: _Problems
) -> None:
    if "file_rows" in meta and meta["file_rows"] != rows:
        problems.file(
            f"{relative} holds {rows} rows but its metadata says {meta['file_rows']}: rows were "
            "removed or added"
        )


def _check_totals(
    what: str,
    meta: Mapping[str, Any],
    rows: int,
    head: str,
    counts: Mapping[str, int],
    problems: _Problems,
) -> None:
    recorded_rows = meta.get("rows")
    if isinstance(recorded_rows, int) and recorded_rows > rows:
        problems.file(
            f"the audit holds {rows} rows but {what} says {recorded_rows}: rows {rows} to "
            f"{recorded_rows - 1} were removed at the end"
        )
    elif recorded_rows is not None and recorded_rows != rows:
        problems.file(
            f"the audit holds {rows} rows but {what} says {recorded_rows}: rows were added"
        )
    if "chain_head" in meta and meta["chain_head"] != head:
        problems.file(f"the chain ends at {head} but {what} says {meta['chain_head']}")
    recorded = meta.get("outcomes")
    if isinstance(recorded, dict) and recorded != {k: v for k, v in sorted(counts.items()) if v}:
        problems.file(f"the outcome counts {dict(sorted(counts.items()))} differ from {what}'s")


def _typed_mismatches(table: pa.Table, fields: Sequence[TypedField]) -> dict[int, str]:
    """Rows whose typed columns differ from what their exact text gives: row -> problem."""
    found: dict[int, str] = {}
    for typed, derived in zip(fields, typed_arrays(table, fields), strict=True):
        stored = table.column(typed.name).combine_chunks()
        if stored.type == derived.type and stored.equals(derived):
            continue
        for i, (ours, theirs) in enumerate(
            zip(derived.to_pylist(), stored.to_pylist(), strict=True)
        ):
            if i in found or (_same(ours, theirs) and stored.type == derived.type):
                continue
            image = table.column(f"{typed.image}_values")[i].as_py()
            text = None if image is None else json.loads(image).get(typed.column)
            found[i] = (
                f"column {typed.name} holds {theirs!r} but {typed.image}_values says {text!r} "
                "(edited)"
            )
    return found
