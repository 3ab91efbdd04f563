"""The layout shows the architecture: each layer of influence_core imports only the layers below
it (data -> curvature -> attribution -> audit -> evaluation -> cli), no module-level import
cycle, modules and functions of a readable size, and `ruff check` clean."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "influence_core"
# Lower layers first; a module may import its own layer, the layers below, and the shared
# top-level modules (config, artifacts, progress, runtime, optional, memo).
LAYERS = ["data", "curvature", "attribution", "audit", "evaluation", "cli"]
# the seams to the app and the command line
FRONT = {"app_api", "app_tables", "app_rounds", "app_early", "__init__", "__main__"}
MAX_LINES = 320
MAX_FUNCTION_LINES = 50  # longer needs a "# long: <reason>" comment on the line above its def


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool) -> set[str]:
    """Absolute names of the influence_core modules that `path` imports."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if not target.startswith("influence_core"):
                continue
            if node.module:
                found.add(target)
            for a in node.names:  # `from . import sources`: the submodule, if it is one
                sub = f"{target}.{a.name}"
                is_module = any((ROOT / sub.replace(".", "/")).with_suffix(s).exists()
                                for s in (".py", ""))
                found.add(sub if is_module else target)
                if node.module:
                    found.add(sub)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("influence_core"))
    return found


def _modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else None


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = []
    for name, path in _modules().items():
        own = _layer(name)
        if own is None:
            continue
        for target in imports(path, top_level_only=False):
            other = _layer(target)
            if other is not None and LAYERS.index(other) > LAYERS.index(own):
                wrong.append(f"{name} ({own}) imports {target} ({other})")
    assert not wrong, "\n".join(wrong)


def test_the_shared_modules_import_no_layer() -> None:
    for name, path in _modules().items():
        if path.parent == CORE and path.stem not in FRONT:
            layers = {_layer(t) for t in imports(path, top_level_only=False)} - {None}
            assert not layers, f"{name} imports the layer(s) {layers}"


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of `graph` (module -> modules it imports), or []."""
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> list[str]:
        for nxt in sorted(graph.get(node, ())):
            if nxt in stack:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in done and (found := visit(nxt, [*stack, nxt])):
                return found
        done.add(node)
        return []

    for start in sorted(graph):
        if start not in done and (found := visit(start, [start])):
            return found
    return []


def test_no_module_level_import_cycle() -> None:
    modules = _modules()
    graph = {n: {t for t in imports(p, True) if t in modules and t != n}
             for n, p in modules.items()}
    assert not (cycle := find_cycle(graph)), " -> ".join(cycle)


def test_the_checks_see_imports_and_cycles(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "influence_core" / "cli" / "m.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from ..data import registry\nfrom .. import config, main\n"
                    "def f():\n    from ..audit.store import DecisionLog\n")
    (tmp_path / "influence_core" / "config.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    # `config` is a module, `main` a name in the package's __init__
    assert imports(fake, True) == {"influence_core.data", "influence_core.data.registry",
                                   "influence_core", "influence_core.config"}
    assert "influence_core.audit.store" in imports(fake, False)
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


@pytest.mark.parametrize("folder", ["influence_core", "dashboard"])
def test_modules_stay_readable(folder: str) -> None:
    long = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / folder).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def long_functions(path: Path) -> list[str]:
    """Functions of `path` over MAX_FUNCTION_LINES whose def (or first decorator) has no
    "# long: <reason>" comment on the line above."""
    lines = path.read_text().splitlines()
    found = []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            size = node.end_lineno - node.lineno + 1
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            above = lines[first - 2].strip() if first >= 2 else ""
            if size > MAX_FUNCTION_LINES and not above.startswith("# long:"):
                found.append(f"{path.name}:{node.lineno} {node.name} ({size} lines)")
    return found


@pytest.mark.parametrize("folder", ["influence_core", "dashboard", "tests"])
def test_long_functions_say_why(folder: str) -> None:
    found = [f for p in sorted((ROOT / folder).rglob("*.py")) for f in long_functions(p)]
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines without a reason: {found}"


def test_the_length_check_sees_long_functions(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    bare = tmp_path / "bare.py"
    bare.write_text(f"def f():\n{body}")
    said = tmp_path / "said.py"
    said.write_text(f"# long: a table\n@staticmethod\ndef f():\n{body}")
    assert long_functions(bare) == [f"bare.py:1 f ({MAX_FUNCTION_LINES + 1} lines)"]
    assert long_functions(said) == []


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.fail("ruff is not installed: pip install -e '.[dev]'")
    done = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:]
