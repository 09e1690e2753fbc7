{%- set bigquery_partitioned = target.type == 'bigquery'
    and env_var('WATER_BIGQUERY_PARTITIONS', '1') == '1' -%}
{{
    config(
        materialized='incremental',
        unique_key=['model_id', 'node_id', 'prediction_timestamp', 'target_timestamp'],
        incremental_strategy='merge',
        indexes=[
            {'columns': ['model_id', 'node_id', 'prediction_timestamp', 'target_timestamp'], 'unique': true},
            {'columns': ['target_timestamp']},
        ] if target.type == 'postgres' else [],
        partition_by={'field': 'prediction_timestamp', 'data_type': 'timestamp', 'granularity': 'day'}
        if bigquery_partitioned else none,
        partition_expiration_days=var('ml_forecast_history_retention_days')
        if bigquery_partitioned else none,
        post_hook=[
            "delete from {{ this }} where prediction_timestamp < {{ add_seconds(
                '(select max(newest.prediction_timestamp) from ' ~ this ~ ' as newest)',
                -86400 * var('ml_forecast_history_retention_days')) }}",
        ] if target.type != 'bigquery' else [],
    )
}}
{#- Every cycle's forecast (vintage), not only the latest per hour: ml_predictions_cache keeps
    one row per target hour, so a later cycle overwrites the day-ahead forecast with a
    nowcast. Appended from the cache rows written since the previous run; vintages older than
    var('ml_forecast_history_retention_days') behind the newest are deleted (BigQuery: the
    partitions expire instead, a table option that costs no scan; unpartitioned there, as on
    the test emulator, the history is kept). -#}
with

forecasts as (

    select * from {{ ref('ml_predictions_cache') }}
    {% if is_incremental() %}
    where created_at > (
        select coalesce(max(kept.created_at), {{ utc_timestamp('1900-01-01 00:00:00+00') }})
        from {{ this }} as kept
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
