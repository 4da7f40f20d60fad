"""Parameters of the notebooks, so nobody edits a cell.

Each notebook's first cell calls :func:`parameters` with its defaults. A value comes, last one
winning, from the default, then the notebook's section of a TOML parameters file, then a
``WALRECOVER_<NAME>`` environment variable. The file is the one ``$WALRECOVER_NOTEBOOK_PARAMS``
names (``./dev notebook --params FILE`` sets it), else ``parameters.toml`` in the current
directory if there is one (see ``notebooks/parameters.example.toml``). Paths in the file are
relative to the file; default paths and paths in the environment to
``$WALRECOVER_NOTEBOOK_CWD`` (the directory ``./dev notebook`` was started from), else to the
current directory.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import WalrecoverError

#: The environment variable naming the parameters file.
PARAMS_ENV = "WALRECOVER_NOTEBOOK_PARAMS"
#: The directory relative paths in environment variables are read from.
CWD_ENV = "WALRECOVER_NOTEBOOK_CWD"
#: Parameters that name files or directories (resolved against their base directory).
PATHS = frozenset(
    {"audit", "ledger", "ledger_file", "daily_ledger", "opening", "artifacts", "audit_path"}
)


class ParameterError(WalrecoverError):
    """A notebook parameter (file or environment variable) is unusable."""


def parameters(
    notebook: str,
    defaults: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The parameters of ``notebook`` (a section name): ``defaults`` overridden by the
    parameters file's ``[notebook]`` section, then by ``WALRECOVER_<NAME>`` variables.

    An environment value is converted to the default's type: a list default takes a
    comma-separated value, an int default an integer; ``""`` means None where the default is
    None. Unknown names in the file are refused, so a typo does not pass silently.
    """
    env = os.environ if environ is None else environ
    base = Path(env.get(CWD_ENV) or ".")
    values = {name: _path(name, value, base) for name, value in defaults.items()}
    file = env.get(PARAMS_ENV) or ("parameters.toml" if Path("parameters.toml").is_file() else "")
    if file:
        path = Path(file)
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ParameterError(
                f"cannot read the notebook parameters {path}: {exc.strerror}"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ParameterError(f"{path} is not TOML: {exc}") from None
        section = document.get(notebook, {})
        if not isinstance(section, dict):
            raise ParameterError(f"{path}: [{notebook}] must be a table of parameters")
        for name, value in section.items():
            if name not in defaults:
                raise ParameterError(
                    f"{path}: [{notebook}] has no parameter {name!r} "
                    f"(it has: {', '.join(sorted(defaults))})"
                )
            values[name] = _path(name, value, path.resolve().parent)
    for name, default in defaults.items():
        raw = env.get(f"WALRECOVER_{name.upper()}")
        if raw is not None:
            values[name] = _path(name, _convert(name, raw, default), base)
    return values


def _convert(name: str, raw: str, default: Any) -> Any:
    if isinstance(default, list):
        return [part.strip() for part in raw.split(",") if part.strip()]
    if isinstance(default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ParameterError(
                f"WALRECOVER_{name.upper()}={raw!r}: give a whole number"
            ) from None
    if default is None and raw == "":
        return None
    return raw


def _path(name: str, value: Any, base: Path) -> Any:
    if name in PATHS and isinstance(value, str) and value:
        return str(base / Path(value).expanduser())
    return value
