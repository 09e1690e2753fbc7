{{ config(materialized='view') }}
{#- Served forecasts whose target hour is now observed, with the actual flow and the
    seasonal-naive forecast (the same local hour one week earlier): the input of `water evaluate`. -#}
with

predictions as (

    select * from {{ ref('ml_predictions_cache') }}

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
        predictions.flow_rate_predicted,
        predictions.flow_rate_lower,
        predictions.flow_rate_upper,
        observed_hours.flow_rate as flow_rate_actual,
        observed_hours.flow_last_week_local as flow_rate_seasonal_naive
    from predictions
    inner join observed_hours
        on predictions.node_id = observed_hours.node_id
        and predictions.target_timestamp = observed_hours.window_start

)

select * from final
