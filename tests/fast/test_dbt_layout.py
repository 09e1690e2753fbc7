"""The dbt project's layering rules, read from the model files (no dbt, no engine).

Only staging calls `source()`: raw data, ML outputs and operational tables enter the DAG
through `models/staging/`, everything downstream uses `ref()` (STYLE.md, README "dbt").
Hooks count too: a `source()` in a model's config is a read of that source.
"""

from __future__ import annotations

import re
from pathlib import Path

MODELS = Path(__file__).resolve().parents[2] / "dbt_project" / "models"
# `source(` as a call in Jinja or in a Python model (`dbt.source(`), not inside a word.
SOURCE_CALL = re.compile(r"(?<![\w.])(?:dbt\.)?source\s*\(")
JINJA_COMMENT = re.compile(r"\{#.*?#\}", re.DOTALL)


def _model_files() -> list[Path]:
    return sorted(p for p in MODELS.rglob("*") if p.suffix in (".sql", ".py"))


def _source_calls(text: str) -> list[int]:
    """Line numbers of source() calls outside Jinja comments."""
    text = JINJA_COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return [text.count("\n", 0, m.start()) + 1 for m in SOURCE_CALL.finditer(text)]


def test_the_pattern_finds_the_calls_it_must_find():
    assert _source_calls("select * from {{ source('raw', 'x') }}") == [1]
    assert _source_calls("{%- set s = [source('ml', 'a')] -%}") == [1]
    assert _source_calls("x\n    registry = dbt.source('ml_registry', 'ml_models')") == [2]
    assert _source_calls("pre_hook=[\"{{ refresh_statistics(source('raw', 's')) }}\"]") == [1]
    assert _source_calls("{# source('raw', 'x') in a comment #} {{ ref('a') }}") == []
    assert _source_calls("select data_source, resource(1) from t") == []


def test_only_staging_models_call_source():
    files = _model_files()
    staging = MODELS / "staging"
    assert any(p.is_relative_to(staging) for p in files)
    outside = [
        f"{p.relative_to(MODELS)}:{line}"
        for p in files
        if not p.is_relative_to(staging)
        for line in _source_calls(p.read_text())
    ]
    assert not outside, (
        f"source() outside models/staging/ (read it through a stg_ model): {outside}"
    )
