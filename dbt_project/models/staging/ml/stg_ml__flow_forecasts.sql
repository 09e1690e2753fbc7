{{ config(enabled=target.type in ('postgres', 'bigquery')) }}
{#- PostgreSQL and BigQuery: next-24-hour forecasts written by ml.scoring (neither runs the
    project's Python models, so the ml_predictions_cache SQL model publishes these). -#}
with

source as (

    select * from {{ source('ml', 'flow_forecasts') }}

),

final as (

    select
        prediction_id,
        model_id,
        node_id,
        prediction_timestamp,
        target_timestamp,
        horizon_hours,
        flow_rate_predicted,
        flow_rate_lower,
        flow_rate_upper,
        confidence,
        created_at
    from source

)

select * from final
