{#- The model registry (ml.registry): the forecast scoring model reads the active model here. -#}
with

source as (

    select * from {{ source('ml_registry', 'ml_models') }}

),

final as (

    select
        model_id,
        model_type,
        version,
        status,
        active_model_type,
        algorithm,
        metrics,
        champion_metrics,
        primary_metric,
        training_start,
        training_end,
        holdout_start,
        holdout_end,
        training_rows,
        artifact_path,
        artifact_sha256,
        created_at,
        validated_at,
        activated_at,
        retired_at,
        reason
    from source

)

select * from final
