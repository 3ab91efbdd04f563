"""Imports of optional extras. A runtime module never imports an optional package directly: it
asks `require`, which names the extra to install when the package is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

# import name -> the extra of pyproject.toml that installs it
EXTRAS = {"kronfluence": "kronfluence"}


class MissingExtra(ImportError):
    """An optional package that a command needs is not installed."""


def require(module: str, purpose: str) -> ModuleType:
    """Import `module` (e.g. "kronfluence.analyzer") from an optional extra, or raise MissingExtra
    naming the extra and what needed it."""
    top = module.split(".")[0]
    extra = EXTRAS[top]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != top:
            raise
        raise MissingExtra(
            f"{purpose} needs {top}, which is not installed: pip install -e '.[{extra}]' "
            f"(or pass --no-kronfluence where the command offers it)") from exc
