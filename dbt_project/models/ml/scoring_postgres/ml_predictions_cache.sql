{{
    config(
        materialized='incremental',
        unique_key=['model_id', 'node_id', 'target_timestamp'],
        incremental_strategy='merge',
        indexes=[
            {'columns': ['model_id', 'node_id', 'target_timestamp'], 'unique': true},
            {'columns': ['node_id', 'target_timestamp']},
            {'columns': ['created_at']},
        ],
    )
}}
{#- PostgreSQL has no dbt Python models: ml.scoring.score_latest runs the same scorer as the
    duckdb Python model and writes ml.flow_forecasts; this publishes the rows written since
    the last run. -#}
with

forecasts as (

    select * from {{ ref('stg_ml__flow_forecasts') }}
    {% if is_incremental() %}
    where created_at > (
        select coalesce(max(published.created_at), {{ utc_timestamp('1900-01-01 00:00:00+00') }})
        from {{ this }} as published
    )
    {% endif %}

),

final as (

    select
        prediction_id,
        model_id,
        node_id,
        prediction_timestamp,
        target_timestamp,
        horizon_hours,
        predicted_flow_rate,
        flow_rate_lower,
        flow_rate_upper,
        confidence_score,
        created_at
    from forecasts

)

select * from final
