"""Import hygiene the import linter cannot see: lazy imports say why, `water --help` stays light.

The direction between packages and the absence of cycles are checked by `make lint`
(import-linter, `.importlinter`).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("flows", "ml", "api", "expectations", "dashboard")
# What `water --help` must not pull in: engines, dbt, Prefect, GX, the data stack.
HEAVY = (
    "dbt",
    "prefect",
    "great_expectations",
    "duckdb",
    "psycopg",
    "pandas",
    "numpy",
    "pyarrow",
    "sklearn",
    "redis",
    "fastapi",
    "streamlit",
)


def _function_local_imports(path: Path) -> list[int]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import | ast.ImportFrom):
                    found.add(sub.lineno)
    return sorted(found)


def test_every_function_local_import_carries_its_reason():
    """A lazy import has a comment on its line or directly above its group of imports."""
    unexplained = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            lines = path.read_text().splitlines()
            for lineno in _function_local_imports(path):
                i = lineno - 1
                if "#" in lines[i]:
                    continue
                while i > 0 and lines[i - 1].lstrip().startswith(("from ", "import ")):
                    i -= 1
                if not lines[i - 1].lstrip().startswith("#"):
                    unexplained.append(
                        f"{path.relative_to(ROOT)}:{lineno}: {lines[lineno - 1].strip()}"
                    )
    assert unexplained == [], "function-local imports without a reason:\n" + "\n".join(unexplained)


def test_water_help_imports_no_engine_dbt_prefect_or_gx():
    probe = (
        "import sys, flows.cli.main\n"
        f"print(','.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    out = subprocess.run(  # noqa: S603 - this interpreter, a fixed probe
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
