"""The runtime dependencies in pyproject.toml are exactly what the runtime imports: every import
statement in influence_core/ and dashboard/ (top level or inside a function) is the standard
library, the project itself, or a runtime dependency; every runtime dependency is imported; an
optional extra is reached only through influence_core.optional.require. `.ci/run` also imports
every module in the runtime-only virtualenv that `make demo` creates (.ci/import_all.py)."""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from influence_core.optional import EXTRAS, MissingExtra, require

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("influence_core", "dashboard")
# import names whose distribution is not found by packages_distributions() in every environment
KNOWN = {"PIL": "pillow", "sklearn": "scikit-learn", "yaml": "pyyaml"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _imports(path: Path) -> list[tuple[str, int]]:
    """(top-level module, line) of every absolute import statement in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], node.lineno))
    return found


def _required(path: Path) -> list[tuple[str, int]]:
    """(top-level module, line) of every require("module", ...) call in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require"
                and node.args and isinstance(node.args[0], ast.Constant)):
            found.append((node.args[0].value.split(".")[0], node.lineno))
    return found


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return packages_distributions()


def _distribution(module: str) -> str:
    if module in KNOWN:
        return KNOWN[module]
    names = _distributions().get(module)
    assert names, f"no installed distribution provides `{module}`: install the dev extras"
    return _name(names[0])


def _third_party(module: str) -> bool:
    return module not in sys.stdlib_module_names and module not in PACKAGES


def test_every_runtime_import_is_a_runtime_dependency() -> None:
    runtime = {_name(r) for r in _project()["dependencies"]}
    wrong = [f"{path.relative_to(ROOT)}:{line}: `{module}` ({_distribution(module)})"
             for path in _sources() for module, line in _imports(path)
             if _third_party(module) and _distribution(module) not in runtime]
    assert not wrong, "imports that the runtime dependencies do not satisfy:\n" + "\n".join(wrong)


def test_every_runtime_dependency_is_imported() -> None:
    used = {_distribution(m) for p in _sources() for m, _ in _imports(p) if _third_party(m)}
    unused = {_name(r) for r in _project()["dependencies"]} - used
    assert not unused, f"runtime dependencies nothing imports: {sorted(unused)}"


def test_optional_packages_come_from_a_declared_extra_that_is_not_dev() -> None:
    extras = {name: {_name(r) for r in reqs}
              for name, reqs in _project()["optional-dependencies"].items()}
    calls = [(p, m, line) for p in _sources() for m, line in _required(p)]
    assert calls, "no require() call found: the scan is broken"
    for path, module, line in calls:
        extra = EXTRAS[module]
        assert extra != "dev" and _distribution(module) in extras[extra], (
            f"{path.relative_to(ROOT)}:{line}: `{module}` is not in the [{extra}] extra")
        assert _distribution(module) in extras["dev"], f"the dev extras must include {module}"


def test_the_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from kronfluence.task import Task\n"
                      "    from .local import x\n    import PIL.Image\n")
    assert _imports(source) == [("os", 1), ("kronfluence", 4), ("PIL", 6)]
    assert [m for m, _ in _imports(source) if _third_party(m)] == ["kronfluence", "PIL"]


def test_a_missing_extra_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kronfluence", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "kronfluence.analyzer", raising=False)
    with pytest.raises(MissingExtra, match=r"pip install -e '\.\[kronfluence\]'"):
        require("kronfluence.analyzer", "bench core's reference run")
