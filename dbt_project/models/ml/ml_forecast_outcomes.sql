{{ config(materialized='view') }}
{#- Every served forecast vintage (ml_forecast_history: all horizons, not only the latest
    per hour) whose target hour is now observed, with the actual flow, the seasonal-naive
    forecast (the same local hour one week earlier) and the node's type: the input of
    `water evaluate` (skill per horizon and per node type). -#}
with

predictions as (

    select * from {{ ref('ml_forecast_history') }}

),

observed_hours as (

    select * from {{ ref('ml_features') }}
    where is_complete and flow_rate is not null

),

final as (

    select
        predictions.model_id,
        predictions.node_id,
        predictions.prediction_timestamp,
        predictions.target_timestamp,
        predictions.horizon_hours,
        predictions.predicted_flow_rate as flow_rate_predicted,
        predictions.flow_rate_lower,
        predictions.flow_rate_upper,
        observed_hours.flow_rate as flow_rate_actual,
        observed_hours.flow_last_week_local as flow_rate_seasonal_naive,
        observed_hours.node_type
    from predictions
    inner join observed_hours
        on predictions.node_id = observed_hours.node_id
        and predictions.target_timestamp = observed_hours.window_start

)

select * from final
