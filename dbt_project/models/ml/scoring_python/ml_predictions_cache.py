"""Next-24-hour flow forecasts of the active model (duckdb, bigquery).

Scores every node with enough history from its latest complete hour, using the same
Python function as the postgres path (ml.scoring.forecast_cache_rows): one feature builder,
one scorer. Without an active flow_forecast model it writes nothing. Rows identical to the
cached ones are not returned, so re-running changes nothing.
"""


def _pandas(relation):
    # duckdb relations have .df(); Spark DataFrames (bigquery dataproc) have .toPandas().
    return relation.df() if hasattr(relation, "df") else relation.toPandas()


def model(dbt, session):
    dbt.config(
        materialized="incremental",
        unique_key=["model_id", "node_id", "target_timestamp"],
        incremental_strategy="delete+insert",
    )
    from ml.scoring import forecast_cache_rows

    registry = _pandas(dbt.ref("stg_ml_registry__ml_models"))
    features = _pandas(dbt.ref("ml_features").filter("hours_after_origin between 0 and 24"))
    existing = None
    if dbt.is_incremental:
        existing = _pandas(session.sql(f"select * from {dbt.this}"))  # noqa: S608 - dbt relation
    return forecast_cache_rows(features, registry, existing)
