{{
    config(
        materialized='incremental',
        unique_key=['node_id', 'time_window', 'window_start'],
        incremental_strategy='merge',
        indexes=[
            {'columns': ['node_id', 'time_window', 'window_start'], 'unique': true},
            {'columns': ['time_window', 'window_end']},
        ] if target.type == 'postgres' else [],
    )
}}
{#- The published windowed metrics (DESIGN.md contract). Windows recomputed in
    int_metrics_windowed since the last run are merged here. -#}
with

windowed as (

    select * from {{ ref('int_metrics_windowed') }}
    {% if is_incremental() %}
    where computed_at > (select max(computed_at) from {{ this }})
    {% endif %}

),

final as (

    select
        node_id,
        time_window,
        window_start,
        window_end,
        reading_count,
        avg_flow_rate,
        min_flow_rate,
        max_flow_rate,
        avg_pressure,
        min_pressure,
        max_pressure,
        avg_temperature,
        min_temperature,
        max_temperature,
        total_volume,
        cast(0 as integer) as anomaly_count,
        quality_score,
        expected_reading_count,
        flow_rate_count,
        pressure_count,
        temperature_count,
        volume_reading_count,
        avg_sensor_quality,
        first_reading_at,
        last_reading_at,
        computed_at
    from windowed

)

select * from final
