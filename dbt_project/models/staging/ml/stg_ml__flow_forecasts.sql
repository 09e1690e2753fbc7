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
        predicted_flow_rate,
        flow_rate_lower,
        flow_rate_upper,
        confidence_score,
        created_at
    from source

)

select * from final
