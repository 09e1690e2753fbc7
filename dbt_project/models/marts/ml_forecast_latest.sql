{{ config(materialized='view') }}
{#- What "latest forecast" means: per node and active model, the rows of its newest
    prediction_timestamp (the next 24 hours from the newest origin). A view, because which
    model is active changes with the registry, not with dbt runs. Redis and the API read it
    (flows/publish/publisher.py, api/queries.py), so they cannot disagree. -#}
with

predictions as (

    select * from {{ ref('ml_predictions_cache') }}

),

active_models as (

    select model_id from {{ ref('stg_ml_registry__ml_models') }}
    where status = 'active'

),

newest as (

    select
        node_id,
        model_id,
        max(prediction_timestamp) as origin
    from predictions
    group by node_id, model_id

),

final as (

    select
        predictions.node_id,
        predictions.target_timestamp,
        -- The seed's column name in the cache; Redis and the API keep flow_rate_predicted.
        predictions.predicted_flow_rate as flow_rate_predicted,
        predictions.flow_rate_lower,
        predictions.flow_rate_upper,
        predictions.model_id
    from predictions
    inner join active_models
        on predictions.model_id = active_models.model_id
    inner join newest
        on
            predictions.node_id = newest.node_id
            and predictions.model_id = newest.model_id
            and predictions.prediction_timestamp = newest.origin

)

select * from final
