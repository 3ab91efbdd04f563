"""The seam between core and UI (STYLE.md section 1), checked by parsing imports with `ast`.

- influence_core/ never imports streamlit;
- dashboard/ imports from the core only `from influence_core import X` with X in __all__,
  and never imports torch;
- dashboard/state.py is the only file that touches Streamlit's caches, session state and URL."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import influence_core

ROOT = Path(__file__).resolve().parents[1]
CORE_FILES = sorted((ROOT / "influence_core").rglob("*.py"))
DASHBOARD_FILES = sorted((ROOT / "dashboard").rglob("*.py"))
FORBIDDEN_IN_DASHBOARD = ("torch", "torchvision", "functorch")
STATE_ONLY = ("cache_resource", "cache_data", "session_state", "query_params")
STATE_FILE = "state.py"
# Files that drive the app from outside (AppTest) rather than run inside it: they set URL
# parameters on the test harness, not on a session, so the state-only rule does not apply.
APP_DRIVERS = ("latency.py",)


def _top(module: str) -> str:
    return module.split(".")[0]


def imported_modules(tree: ast.AST) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) for every import statement; names empty for `import m`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [alias.name for alias in node.names], node.lineno))
    return found


def core_violations(source: str) -> list[str]:
    return [
        f"line {line}: imports {module}"
        for module, _, line in imported_modules(ast.parse(source))
        if _top(module) == "streamlit"
    ]


def dashboard_violations(source: str, exported: list[str], is_state: bool = False) -> list[str]:
    tree = ast.parse(source)
    problems = []
    for module, names, line in imported_modules(tree):
        if _top(module) in FORBIDDEN_IN_DASHBOARD:
            problems.append(f"line {line}: imports {module}")
        elif _top(module) == "influence_core" and (module != "influence_core" or not names):
            problems.append(f"line {line}: use `from influence_core import ...`, not {module}")
        elif module == "influence_core":
            problems += [f"line {line}: {n} is not in influence_core.__all__"
                         for n in names if n not in exported]
    if not is_state:
        problems += [
            f"line {node.lineno}: st.{node.attr} belongs in dashboard/state.py"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in STATE_ONLY
        ]
        problems += [
            f"line {line}: {name} belongs in dashboard/state.py"
            for module, names, line in imported_modules(tree)
            if _top(module) == "streamlit" for name in names if name in STATE_ONLY
        ]
    return problems


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_there_are_files_to_check() -> None:
    assert len(CORE_FILES) >= 5 and any(p.name == "app.py" for p in DASHBOARD_FILES)


@pytest.mark.parametrize("path", CORE_FILES, ids=_rel)
def test_core_never_imports_streamlit(path: Path) -> None:
    assert core_violations(path.read_text()) == []


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=_rel)
def test_dashboard_uses_only_the_public_core_api(path: Path) -> None:
    source = path.read_text()
    exempt = path.name in (STATE_FILE, *APP_DRIVERS)
    assert dashboard_violations(source, influence_core.__all__, exempt) == []


def test_only_state_py_holds_streamlit_caches() -> None:
    """The exemption above is narrow: the app drivers define no cache of their own."""
    for path in DASHBOARD_FILES:
        if path.name in APP_DRIVERS:
            assert "cache_" not in path.read_text() and "session_state" not in path.read_text()


MAX_MODULE_LINES = 310  # STYLE.md section 4: about 300
MAX_FUNCTION_LINES = 50
PAGE_FILES = [p for p in DASHBOARD_FILES if p.parent.name == "views"]
MAX_PAGE_LINES = 120  # STYLE.md section 6


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=_rel)
def test_dashboard_modules_and_functions_stay_small(path: Path) -> None:
    source = path.read_text()
    limit = MAX_PAGE_LINES if path in PAGE_FILES else MAX_MODULE_LINES
    assert len(source.splitlines()) <= limit
    long = [f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def test_every_exported_name_exists() -> None:
    missing = [n for n in influence_core.__all__ if not hasattr(influence_core, n)]
    assert missing == []


# The checkers themselves must fail on code that breaks the seam.
@pytest.mark.parametrize("source", [
    "import streamlit as st",
    "from streamlit.testing.v1 import AppTest",
    "def f():\n    import streamlit\n",
])
def test_core_checker_flags_streamlit(source: str) -> None:
    assert core_violations(source)


@pytest.mark.parametrize("source", [
    "import torch",
    "from torch import nn",
    "import torchvision.transforms",
    "import influence_core",
    "from influence_core.data.training import checkpoint_dir",
    "from influence_core import training_labels",
    "import influence_core.data.registry as registry",
    "import streamlit as st\nst.session_state['x'] = 1",
    "import streamlit as st\n@st.cache_data\ndef f(): pass",
    "from streamlit import cache_resource",
    "import streamlit as st\nst.query_params['page'] = '2'",
])
def test_dashboard_checker_flags_seam_breaks(source: str) -> None:
    assert dashboard_violations(source, influence_core.__all__)


def test_dashboard_checker_accepts_the_public_api() -> None:
    source = "import streamlit as st\nfrom influence_core import load_problem, recipe\n"
    assert dashboard_violations(source, influence_core.__all__) == []
