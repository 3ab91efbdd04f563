"""Import every module of influence_core and dashboard (the pages and __main__ excepted: they are
scripts that run on import) in the interpreter that runs this file. .ci/run runs it in the
runtime-only virtualenv that `make demo` creates, so an import that only the dev extras satisfy
fails here."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SCRIPTS = {"dashboard.views", "influence_core.__main__"}  # scripts that run on import

failed, count = [], 0
for package in ("influence_core", "dashboard"):
    for info in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}."):
        if any(info.name == s or info.name.startswith(f"{s}.") for s in SCRIPTS):
            continue
        count += 1
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            failed.append(f"{info.name}: {type(exc).__name__}: {exc}")
print(f"imported {count - len(failed)} of {count} modules with {sys.executable}")
if failed:
    print("\n".join(failed), file=sys.stderr)
    sys.exit(1)
