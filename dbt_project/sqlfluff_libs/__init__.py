"""Jinja context for linting the models with sqlfluff's jinja templater (no dbt, no database).

The project's macros are loaded from macros/ and render as written; what they dispatch to an
adapter (`adapter.dispatch`) and dbt's own macros (`dbt.current_timestamp()`) render as a
placeholder expression named after the macro. `var()` returns the project's real vars (so
loops over them render) and `target` is duckdb. What is linted is the SQL in the model files;
the adapter implementations are checked by the engine tests.
"""

from __future__ import annotations

from pathlib import Path

import yaml

_PROJECT = Path(__file__).resolve().parents[1]
_VARS = yaml.safe_load((_PROJECT / "dbt_project.yml").read_text())["vars"]


class _Placeholder:
    """A dbt macro call: renders as `name_result`, a plain SQL expression."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args, **kwargs) -> str:
        return f"{self._name}_result"


class _Namespace:
    """`dbt.current_timestamp()`: any attribute is a placeholder."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> _Placeholder:
        return _Placeholder(f"{self._name}_{attr}")


class _Adapter:
    def dispatch(self, macro_name: str, macro_namespace: str | None = None) -> _Placeholder:
        return _Placeholder(macro_name)

    def quote(self, identifier: str) -> str:
        return f'"{identifier}"'


class _Target:
    type = "duckdb"
    name = "duckdb"
    schema = "main"
    database = "warehouse"


def var(name: str, default=None):
    return _VARS.get(name, default)


def env_var(name: str, default: str = "") -> str:
    return default


target = _Target()
adapter = _Adapter()
dbt = _Namespace("dbt")


def load_relation(relation):
    """dbt's `load_relation`: the relation, as if it exists (so the branch reading it is linted)."""
    return relation
