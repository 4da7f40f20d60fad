"""Regroup the flat ``walrecover`` package into subpackages named after the pipeline stages.

A codemod, not a record of hand edits: run it on a clean checkout of main and it moves every
module with ``git mv``, rewrites every import and every dotted or path reference to a moved module
(the package, tests, scripts, bench, notebooks, README, docs, pyproject.toml, ``.ci/``, ``dev``),
updates the lazy public API's name-to-module map and redraws the module table of
``docs/architecture.md``. It then runs ``ruff check --fix --select I`` (import order only) and
``ruff format`` on the moved and rewritten Python files.

    .venv/bin/python scripts/regroup.py [--root PATH]

Every file of the package must be named in :data:`MOVES` (a module added by a later merge makes it
stop, naming the file: add it to the table and rerun on a fresh checkout). It refuses to run on a
tree with uncommitted changes or on one already regrouped.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "walrecover"

#: Every file of the package on main (path inside ``walrecover/``) and where it goes. A file not
#: named here stops the script. Each stage is a subpackage; ``cli.py`` sits on top of them, with
#: what every stage shares (``errors.py``, ``db.py``) and the public API (``__init__.py``).
MOVES: dict[str, str] = {
    # the top: the public API, the command line, and what every stage shares
    "__init__.py": "__init__.py",
    "__main__.py": "__main__.py",
    "py.typed": "py.typed",
    "cli.py": "cli.py",
    "errors.py": "errors.py",
    "db.py": "db.py",
    # stream: read the changes (slot or capture), decode them into events, or export them
    "lsn.py": "stream/lsn.py",
    "model.py": "stream/model.py",
    "sources.py": "stream/sources.py",
    "settings.py": "stream/settings.py",
    "notices.py": "stream/notices.py",
    "walinspect.py": "stream/walinspect.py",
    "export.py": "stream/export.py",
    "decoders/__init__.py": "stream/decoders/__init__.py",
    "decoders/pgoutput.py": "stream/decoders/pgoutput.py",
    "decoders/test_decoding.py": "stream/decoders/testdecoding.py",
    "decoders/wal2json.py": "stream/decoders/wal2json.py",
    "decoders/wal2json_v1.py": "stream/decoders/wal2json_v1.py",
    # rebuild: check, replay the events into the rebuilt table, put it in place
    "preflight.py": "rebuild/preflight.py",
    "plan.py": "rebuild/plan.py",
    "target.py": "rebuild/target.py",
    "replay.py": "rebuild/replay.py",
    "recreation.py": "rebuild/recreation.py",
    "unseen.py": "rebuild/unseen.py",
    "identity.py": "rebuild/identity.py",
    "recover.py": "rebuild/recover.py",
    "swap.py": "rebuild/swap.py",
    # audit: every applied change, typed, hash-chained, in Parquet; read and verified
    "audit.py": "audit/writer.py",
    "outcomes.py": "audit/outcomes.py",
    "pgarrow.py": "audit/pgarrow.py",
    "safefiles.py": "audit/safefiles.py",
    "verify.py": "audit/verify.py",
    # ledger: prove the rebuilt table against the business's own totals
    "totals.py": "ledger/totals.py",
    "reconcile.py": "ledger/reconcile.py",
    # drill: practise on a throwaway server
    "cluster.py": "drill/cluster.py",
    "rehearsal.py": "drill/rehearsal.py",
    "notebook.py": "drill/notebook.py",
}

#: The new subpackages, in pipeline order, with the docstring of their ``__init__.py`` (the
#: heading of their part of the module table in docs/architecture.md).
STAGES: dict[str, str] = {
    "stream": "Read the changes (a slot's copy or pg_recvlogical captures) and decode them into "
    "the canonical events; ``walrecover decode`` exports them.",
    "stream/decoders": "One decoder per output plugin (pure: bytes in, events out) and the "
    "registry that knows each plugin's options.",
    "rebuild": "Check before writing, replay the events into the rebuilt table up to the stop "
    "point, and put the rebuilt table in place (``walrecover swap``).",
    "audit": "The audit: every applied change with its outcome, typed, hash-chained and sealed "
    "in Parquet; read back and verified.",
    "ledger": "Prove the rebuilt table (or the audit) against the business's own totals.",
    "drill": "Practise a recovery on a throwaway PostgreSQL server (``walrecover rehearse``, the "
    "notebooks).",
}

#: Where the pipeline is drawn in docs/architecture.md (replaced whole, with the module table).
ARCHITECTURE_FLOW = """\
Data flows one way, one subpackage per stage of the pipeline:

```
stream/                         rebuild/                        audit/              ledger/
sources ─RawMessage─> decoders ─Begin/Change/Commit─> replay ─> rebuilt table ─> reconcile
 (slot copy, captures) (pure)    (target, preflight)    └─ sink ─> writer (Parquet) ─┘ (totals)
rebuild/recover.py wires the stages together; drill/ runs them on a throwaway server;
cli.py parses options and formats results, nothing else.
```

Why the tree looks this way: a newcomer should find where a behaviour lives from the tree
alone, so each subpackage is one stage of the pipeline above, and a module imports from its own
stage or an earlier one (`rebuild/recover.py`, the orchestrator, reaches forward to the audit
and the ledger; `stream/settings.py` borrows the audit's Arrow value parsing). What every stage
shares sits on top: the error family (`errors.py`), connections (`db.py`), the public API
(`__init__.py`, which maps each public name to its module) and the command line (`cli.py`). The
test_decoding plugin's decoder is `stream/decoders/testdecoding.py`, so that pytest and other
tools do not take it for a test module. The tree was made by `scripts/regroup.py`.
"""

TEXT_FILES = ("README.md", "pyproject.toml", "dev", ".ci")
PY_DIRS = ("tests", "scripts", "bench")
SKIP = {"scripts/regroup.py"}


class Stop(Exception):
    """The script cannot go on; the message says why and what to do."""


def dotted(path: str) -> str:
    """``decoders/pgoutput.py`` -> ``walrecover.decoders.pgoutput``."""
    parts = path.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def build_module_map() -> dict[str, str]:
    """Old dotted module (or package) name -> new dotted name."""
    mapping = {}
    for old, new in MOVES.items():
        if old.endswith(".py") and old != "__main__.py":
            mapping[dotted(old)] = dotted(new)
    return mapping


MODULES = build_module_map()


def new_module(name: str) -> str:
    """The new name of a dotted name under the package (a module, or something inside one)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        head = ".".join(parts[:i])
        if head in MODULES:
            return ".".join([MODULES[head], *parts[i:]])
    return name


def relative(from_package: str, target: str) -> str:
    """``from X import`` text for ``target`` as seen from inside ``from_package``."""
    here, there = from_package.split("."), target.split(".")
    common = 0
    while common < min(len(here), len(there)) and here[common] == there[common]:
        common += 1
    return "." * (len(here) - common + 1) + ".".join(there[common:])


def public_names(init: Path) -> dict[str, str]:
    """The lazy API's map (``_WHERE`` in ``__init__.py``): public name -> module."""
    tree = ast.parse(init.read_bytes())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_WHERE" for t in node.targets
        ):
            return ast.literal_eval(node.value)  # type: ignore[no-any-return]
    raise Stop(f"{init}: no _WHERE map (the lazy public API) found: update scripts/regroup.py")


@dataclass(frozen=True)
class Edit:
    """Replace ``source[start:end]`` (byte offsets) with ``text``."""

    start: int
    end: int
    text: bytes


def apply_edits(source: bytes, edits: list[Edit]) -> bytes:
    out, last = [], len(source)
    for edit in sorted(edits, key=lambda e: e.start, reverse=True):
        if edit.end > last:
            raise Stop(f"overlapping edits at byte {edit.start}: a bug in scripts/regroup.py")
        out.append(source[edit.end : last])
        out.append(edit.text)
        last = edit.start
    out.append(source[:last])
    return b"".join(reversed(out))


class Rewriter:
    """Rewrites references to the old modules in one file's text."""

    def __init__(self, public: dict[str, str]) -> None:
        # The public functions named like a module (recover, reconcile, swap): walrecover.X means
        # the function unless it is clearly the module (an import, X.attr, :mod:).
        self.ambiguous = {name for name in public if f"{PACKAGE}.{name}" in MODULES}
        names = sorted((m.split(".", 1)[1] for m in MODULES if "." in m), key=len, reverse=True)
        self.dotted_re = re.compile(
            rb"(?<![\w.])"
            + PACKAGE.encode()
            + rb"\.("
            + b"|".join(re.escape(n.encode()) for n in names)
            + rb")(?!\w)"
        )
        paths = {old: new for old, new in MOVES.items() if old != new and old.endswith(".py")}
        paths["decoders/"] = "stream/decoders/"
        alternatives = sorted(paths, key=len, reverse=True)
        self.paths = paths
        self.path_re = re.compile(
            rb"(?<![\w/.])"
            + PACKAGE.encode()
            + rb"/("
            + b"|".join(re.escape(p.encode()) for p in alternatives)
            + rb")(?![\w])"
        )

    def _dotted(self, source: bytes, match: re.Match[bytes]) -> bytes | None:
        name = match.group(1).decode()
        if name in self.ambiguous:
            after = source[match.end() : match.end() + 2]
            line_start = source.rfind(b"\n", 0, match.start()) + 1
            before = source[line_start : match.start()]
            module_like = (
                re.match(rb"\.\w", after) is not None
                or re.search(rb"\b(?:from|import)\s+(?:[\w.]+\s*,\s*)*$", before) is not None
                or before.endswith(b":mod:`")
            )
            if not module_like:
                return None
        return new_module(f"{PACKAGE}.{name}").encode()

    def text_edits(self, source: bytes, skip: list[tuple[int, int]]) -> list[Edit]:
        """Dotted names and paths of moved modules anywhere in ``source`` (but in ``skip``)."""
        edits = []

        def skipped(pos: int) -> bool:
            return any(start <= pos < end for start, end in skip)

        for match in self.dotted_re.finditer(source):
            if skipped(match.start()):
                continue
            text = self._dotted(source, match)
            if text is not None:
                edits.append(Edit(match.start(), match.end(), text))
        for match in self.path_re.finditer(source):
            if not skipped(match.start()):
                new = f"{PACKAGE}/{self.paths[match.group(1).decode()]}".encode()
                edits.append(Edit(match.start(), match.end(), new))
        return edits


def offsets(source: bytes) -> list[int]:
    starts = [0]
    for i, byte in enumerate(source):
        if byte == 0x0A:
            starts.append(i + 1)
    return starts


def span(node: ast.AST, lines: list[int]) -> tuple[int, int]:
    start = lines[node.lineno - 1] + node.col_offset  # type: ignore[attr-defined]
    end = lines[node.end_lineno - 1] + node.end_col_offset  # type: ignore[attr-defined]
    return start, end


def rewrite_python(
    source: bytes, old_module: str | None, new_module_name: str | None, rw: Rewriter
) -> bytes:
    """One Python file: its imports, then every other reference to a moved module.

    ``old_module``/``new_module_name``: the file's own dotted name before and after, when it is
    inside the package (its relative imports are recomputed from the new place)."""
    tree = ast.parse(source)
    lines = offsets(source)
    edits: list[Edit] = []
    skip: list[tuple[int, int]] = []
    renames: dict[str, str] = {}
    in_package = old_module is not None and new_module_name is not None
    old_pkg = new_pkg = ""
    if in_package:
        assert old_module is not None and new_module_name is not None
        packages = {dotted(p) for p in MOVES if p.endswith("__init__.py")}
        is_pkg = old_module in packages
        old_pkg = old_module if is_pkg else old_module.rpartition(".")[0]
        new_pkg = new_module_name if is_pkg else new_module_name.rpartition(".")[0]

    def spell(target: str) -> str:
        return relative(new_pkg, target) if in_package else target

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = old_pkg.split(".")
                base = base[: len(base) - node.level + 1]
                old_abs = ".".join(base + ([node.module] if node.module else []))
            else:
                old_abs = node.module or ""
            if old_abs != PACKAGE and not old_abs.startswith(PACKAGE + "."):
                continue
            start, end = span(node, lines)
            skip.append((start, end))
            subs = [
                a
                for a in node.names
                if f"{old_abs}.{a.name}" in MODULES
                and not (old_abs == PACKAGE and a.name in rw.ambiguous)
            ]
            new_abs = new_module(old_abs)
            if not subs:
                if node.level or new_abs != old_abs:
                    segment = source[start:end]
                    m = re.match(rb"from\s+([.\w]+)\s+import", segment)
                    if m is None:
                        raise Stop(f"cannot read the import at line {node.lineno}")
                    text = spell(new_abs).encode()
                    edits.append(Edit(start + m.start(1), start + m.end(1), text))
                continue
            if b"#" in source[start:end]:
                raise Stop(f"a comment inside the import at line {node.lineno}: move it out")
            groups: dict[str, list[str]] = {}
            for a in node.names:
                if a in subs:
                    parent, _, leaf = new_module(f"{old_abs}.{a.name}").rpartition(".")
                    alias = a.asname
                    if leaf != a.name and alias is None:
                        renames[a.name] = leaf
                    groups.setdefault(parent, []).append(leaf + (f" as {alias}" if alias else ""))
                else:
                    groups.setdefault(new_abs, []).append(
                        a.name + (f" as {a.asname}" if a.asname else "")
                    )
            indent = "\n" + " " * node.col_offset
            statements = indent.join(
                f"from {spell(parent)} import {', '.join(names)}"
                for parent, names in groups.items()
            )
            edits.append(Edit(start, end, statements.encode()))
        elif isinstance(node, ast.Import):
            if not any(a.name.split(".")[0] == PACKAGE for a in node.names):
                continue
            start, end = span(node, lines)
            skip.append((start, end))
            names = [
                new_module(a.name) + (f" as {a.asname}" if a.asname else "") for a in node.names
            ]
            edits.append(Edit(start, end, f"import {', '.join(names)}".encode()))
    if renames:
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id in renames:
                start, end = span(node, lines)
                edits.append(Edit(start, end, renames[node.id].encode()))
        taken = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        clash = set(renames.values()) & taken
        if clash:
            raise Stop(f"renaming a module to {sorted(clash)} would clash with a name in use")
    if in_package and new_module_name is not None:
        # Relative Sphinx references to a renamed sibling (``:mod:`.test_decoding```).
        for old, new in MOVES.items():
            old_leaf, new_leaf = Path(old).stem, Path(new).stem
            if old_leaf != new_leaf:
                for m in re.finditer(rb"`\." + re.escape(old_leaf.encode()) + rb"`", source):
                    edits.append(Edit(m.start(), m.end(), b"`." + new_leaf.encode() + b"`"))
    edits += rw.text_edits(source, skip)
    return apply_edits(source, edits)


LINE_LENGTH = 100


def _split_at(line: str, limit: int) -> int:
    """The last space at or before ``limit`` outside backquotes (0: none)."""
    best, ticks = 0, 0
    for i, char in enumerate(line[: limit + 1]):
        if char == "`":
            ticks += 1
        elif char == " " and ticks % 2 == 0 and line[:i].strip() not in {"", "#", "-", "*"}:
            best = i
    return best


def reflow(source: str) -> str:
    """Rewrap the comment and docstring lines a longer module name pushed past the limit.

    The overflow joins the next line when that line goes on the same paragraph (same prefix),
    else it becomes a line of its own; code lines are left to ``ruff format``."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    prose: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            and node.end_lineno is not None
        ):
            prose.update(range(node.lineno - 1, node.end_lineno))
    lines = source.split("\n")
    for i, line in enumerate(lines):
        if len(line) <= LINE_LENGTH:
            continue
        if "noqa" in line or "http" in line or PACKAGE not in line:
            continue
        stripped = line.lstrip()
        indent = line[: len(line) - len(stripped)]
        if stripped.startswith("#"):
            prefix = indent + "# "
        elif i in prose:
            prefix = indent + ("  " if stripped[:2] in {"- ", "* "} else "")
        else:
            continue
        j = i
        while j < len(lines) and len(lines[j]) > LINE_LENGTH:
            cut = _split_at(lines[j], LINE_LENGTH)
            if cut == 0:
                break
            head, rest = lines[j][:cut].rstrip(), lines[j][cut + 1 :]
            lines[j] = head
            nxt = lines[j + 1] if j + 1 < len(lines) else ""
            body = nxt[len(prefix) :]
            goes_on = (j + 1 in prose or prefix.lstrip().startswith("#")) and (
                nxt.startswith(prefix)
                and body.strip() != ""
                and body[:1] not in {" ", "-", "*", ":", ">", '"'}
                and not head.rstrip().endswith('"""')
                and not body.startswith(("#", '"""'))
            )
            if goes_on:
                lines[j + 1] = prefix + rest + " " + body
            else:
                lines.insert(j + 1, prefix + rest)
                if i in prose:
                    prose = {k + 1 if k > j else k for k in prose} | {j + 1}
            j += 1
    return "\n".join(lines)


def rewrite_where(source: bytes) -> bytes:
    """``_WHERE`` in ``__init__.py``: each public name's module, by its new name."""
    tree = ast.parse(source)
    lines = offsets(source)
    edits = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_WHERE" for t in node.targets
        ):
            assert isinstance(node.value, ast.Dict)
            for value in node.value.values:
                assert isinstance(value, ast.Constant) and isinstance(value.value, str)
                moved = new_module(f"{PACKAGE}.{value.value}").removeprefix(PACKAGE + ".")
                start, end = span(value, lines)
                edits.append(Edit(start, end, json.dumps(moved).encode()))
    return apply_edits(source, edits)


#: Sentences of ``__init__.py`` that spoke of top-level modules named like the functions.
INIT_TEXT = {
    "``recover``, ``reconcile`` and ``swap`` are\nalso the names of modules of this package: here "
    "they always mean the functions; import from the\nmodules themselves with ``from "
    "walrecover.rebuild.recover import ...``.": "``recover`` and ``swap`` are also the\nnames of "
    "modules (``walrecover.rebuild.recover``, ``walrecover.rebuild.swap``), and ``reconcile``\n"
    "of ``walrecover.ledger.reconcile``: here they always mean the functions; import from the "
    "modules\nthemselves with ``from walrecover.rebuild.recover import ...``.",
}


def redraw_architecture(text: str, rw: Rewriter) -> str:
    """The flow and the module table of docs/architecture.md, for the new tree."""
    lines = text.splitlines(keepends=True)
    try:
        first = next(i for i, line in enumerate(lines) if line.startswith("Data flows one way"))
        head = next(i for i, line in enumerate(lines) if line.startswith("| module | job |"))
    except StopIteration:
        raise Stop(
            "docs/architecture.md: the flow or the module table moved: update regroup.py"
        ) from None
    end = head + 2
    rows: dict[str, str] = {}
    while end < len(lines) and lines[end].startswith("|"):
        m = re.match(r"\| `([^`]+)` \| (.*) \|\s*$", lines[end])
        if m is None:
            raise Stop(f"docs/architecture.md: cannot read the table row {lines[end]!r}")
        rows[m.group(1)] = m.group(2)
        end += 1
    for name in rows:
        if name not in MOVES and f"{name.rstrip('/')}/__init__.py" not in MOVES:
            raise Stop(f"docs/architecture.md names {name!r}, which is not in MOVES")
    table = ["| module | job |\n", "|---|---|\n"]
    top = [old for old, new in MOVES.items() if "/" not in new and new.endswith(".py")]
    for old in top:
        if old in rows:
            table.append(f"| `{old}` | {rows[old]} |\n")
    for stage, doc in STAGES.items():
        # A directory the table described as a whole (``decoders/``) keeps its one row.
        old_dir = next(
            (o.rpartition("/")[0] for o, n in MOVES.items() if n.rpartition("/")[0] == stage),
            "",
        )
        whole = rows.get(old_dir + "/") if old_dir and old_dir + "/" != stage + "/" else None
        table.append(f"| **`{stage}/`** | {whole or doc.replace('``', '`')} |\n")
        for old, new in MOVES.items():
            if new.rpartition("/")[0] != stage:
                continue
            if old in rows:
                table.append(f"| `{new}` | {rows[old]} |\n")
            elif whole is None and not new.endswith("__init__.py"):
                table.append(f"| `{new}` | (not described yet) |\n")
    body = "".join(lines[end:])
    # Module names in backquotes in the prose: `settings.py`, `decoders/__init__.py`.
    for old, new in sorted(MOVES.items(), key=lambda kv: len(kv[0]), reverse=True):
        if old != new:
            body = re.sub(r"`" + re.escape(old) + r"`", f"`{new}`", body)
    body = body.replace("`decoders/", "`stream/decoders/")
    rewritten = "".join(lines[:first]) + ARCHITECTURE_FLOW + "\n" + "".join(table) + body
    return rw_text(rewritten, rw)


def rw_text(text: str, rw: Rewriter) -> str:
    source = text.encode()
    return apply_edits(source, rw.text_edits(source, [])).decode()


def run(cmd: list[str], root: Path) -> str:
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise Stop(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def regroup(root: Path) -> None:
    package = root / PACKAGE
    if run(["git", "status", "--porcelain", "--untracked-files=no"], root).strip():
        raise Stop("the checkout has uncommitted changes: commit or discard them first")
    if (package / "stream").exists():
        raise Stop(f"{package}/stream exists: already regrouped (run on a fresh checkout of main)")
    tracked = run(["git", "ls-files", PACKAGE], root).split()
    files = sorted(str(Path(f).relative_to(PACKAGE)) for f in tracked)
    unknown = [f for f in files if f not in MOVES]
    if unknown:
        raise Stop(
            "modules scripts/regroup.py does not know (add each to MOVES, then rerun on a fresh "
            "checkout): " + ", ".join(f"{PACKAGE}/{f}" for f in unknown)
        )
    untracked = [
        str(p.relative_to(root))
        for p in package.rglob("*.py")
        if str(p.relative_to(package)) not in MOVES
    ]
    if untracked:
        raise Stop("untracked Python files in the package: " + ", ".join(untracked))
    public = public_names(package / "__init__.py")
    rw = Rewriter(public)

    # 1. Rewrite every file's content where it stands (the old names are where they were).
    changed: dict[Path, bytes] = {}
    for rel in files:
        if not rel.endswith(".py"):
            continue
        path = package / rel
        source = path.read_bytes()
        new = rewrite_python(source, dotted(rel), dotted(MOVES[rel]), rw)
        if rel == "__init__.py":
            new = rewrite_where(new)
            text = new.decode()
            for old, replacement in INIT_TEXT.items():
                text = text.replace(old, replacement)
            new = text.encode()
        changed[path] = reflow(new.decode()).encode()
    outside: list[Path] = []
    for top in PY_DIRS:
        outside += sorted((root / top).rglob("*.py"))
    for path in outside:
        if str(path.relative_to(root)) in SKIP:
            continue
        source = path.read_bytes()
        changed[path] = reflow(rewrite_python(source, None, None, rw).decode()).encode()
    texts: list[Path] = []
    for name in TEXT_FILES:
        target = root / name
        texts += (
            sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
        )
    texts += sorted((root / "notebooks").glob("*.ipynb"))
    texts += sorted(p for p in (root / "docs").rglob("*.md") if p.name != "architecture.md")
    for path in texts:
        if path.exists():
            changed[path] = rw_text(path.read_text(), rw).encode()
    architecture = root / "docs" / "architecture.md"
    changed[architecture] = redraw_architecture(architecture.read_text(), rw).encode()
    for path, content in changed.items():
        if path.read_bytes() != content:
            path.write_bytes(content)

    # 2. Move the modules, and give each stage its __init__.py.
    for stage in STAGES:
        (package / stage).mkdir(parents=True, exist_ok=True)
    for old, moved in MOVES.items():
        if old != moved and (package / old).exists():
            run(["git", "mv", f"{PACKAGE}/{old}", f"{PACKAGE}/{moved}"], root)
    for stage, doc in STAGES.items():
        init = package / stage / "__init__.py"
        if not init.exists():
            init.write_text(
                "\n".join(textwrap.wrap(f'"""{doc}"""', LINE_LENGTH - 1)).replace('."""', '.\n"""')
                + "\n"
            )
            run(["git", "add", str(init.relative_to(root))], root)
    old_decoders = package / "decoders"
    if old_decoders.exists():
        leftovers = [
            p for p in old_decoders.rglob("*") if p.is_file() and "__pycache__" not in p.parts
        ]
        if leftovers:
            raise Stop(f"files left in {old_decoders}: {leftovers}")
        shutil.rmtree(old_decoders)

    # 3. Import order and format on the Python files (ruff, from the checkout's venv if any).
    ruff = next(
        (p for p in (root / ".venv/bin/ruff", Path(sys.executable).parent / "ruff") if p.exists()),
        None,
    )
    ruff_cmd = str(ruff) if ruff is not None else "ruff"
    py = [PACKAGE, *PY_DIRS, "notebooks"]
    run([ruff_cmd, "check", "--fix", "--select", "I", "--quiet", *py], root)
    run([ruff_cmd, "format", "--quiet", *py], root)
    print(f"regrouped {len(files)} files of {PACKAGE}/ into {', '.join(STAGES)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args()
    try:
        regroup(args.root.resolve())
    except Stop as stop:
        print(f"regroup: error: {stop}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
