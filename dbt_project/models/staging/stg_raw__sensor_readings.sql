{#- Statistics of the raw table are refreshed here, the one model that reads it, before the
    de-duplication scans it (a view is rebuilt on every run). -#}
{{ config(post_hook=["{{ refresh_statistics(source('raw', 'sensor_readings')) }}"]) }}
{#- Every raw reading, typed and checked against DESIGN.md's validation rules.
    Nothing is filtered here: `is_valid` and `rejection_reasons` say what happens next. -#}
with

source as (

    select * from {{ source('raw', 'sensor_readings') }}

),

cleaned as (

    select
        nullif(trim(node_id), '') as node_id,
        {{ adapter.quote('timestamp') }} as reading_at,
        node_name,
        {{ nan_as_null('flow_rate') }} as flow_rate,
        {{ nan_as_null('pressure') }} as pressure,
        {{ nan_as_null('temperature') }} as temperature,
        {{ nan_as_null('volume') }} as volume,
        {{ nan_as_null('quality_score') }} as quality_score,
        loaded_at,
        batch_id,
        batch_row

    from source

),

checked as (

    select
        *,
        {{ join_reasons([
            "case when node_id is null then 'node_id_missing' end",
            "case when reading_at is null then 'timestamp_missing' end",
            "case when reading_at < " ~ utc_timestamp(var('min_valid_timestamp') ~ ' 00:00:00+00') ~ " then 'timestamp_too_old' end",
            "case when reading_at > " ~ add_seconds('loaded_at', var('max_future_seconds')) ~ " then 'timestamp_in_future' end",
            "case when flow_rate is null and pressure is null and temperature is null and volume is null then 'no_measurement' end",
            "case when " ~ is_infinite('flow_rate') ~ " or abs(flow_rate) > " ~ var('flow_rate_abs_max') ~ " then 'flow_rate_out_of_range' end",
            "case when " ~ is_infinite('pressure') ~ " or pressure < " ~ var('pressure_min_bar') ~ " or pressure > " ~ var('pressure_max_bar') ~ " then 'pressure_out_of_range' end",
            "case when " ~ is_infinite('temperature') ~ " or temperature < " ~ var('temperature_min_c') ~ " or temperature > " ~ var('temperature_max_c') ~ " then 'temperature_out_of_range' end",
            "case when " ~ is_infinite('volume') ~ " or volume < 0 or volume > " ~ var('volume_max_m3') ~ " then 'volume_out_of_range' end",
            "case when " ~ is_infinite('quality_score') ~ " or quality_score < 0 or quality_score > 1 then 'quality_score_out_of_range' end",
        ]) }} as rejection_reasons

    from cleaned

),

final as (

    select
        *,
        rejection_reasons is null as is_valid
    from checked

)

select * from final
