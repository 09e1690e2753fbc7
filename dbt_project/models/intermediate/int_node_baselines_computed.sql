{{
    config(
        unique_key=['node_id', 'baseline_week', 'hour_of_week'],
        incremental_strategy='merge',
        pre_hook=["{{ refresh_statistics(ref('int_metrics_windowed')) }}"],
        post_hook=["{{ refresh_statistics(this) }}"],
        indexes=[
            {'columns': ['node_id', 'baseline_week', 'hour_of_week'], 'unique': true},
            {'columns': ['computed_at']},
        ] if target.type == 'postgres' else [],
    )
}}
{#- Robust baseline of each node's 5-minute mean flow and pressure for one local hour of
    the week (Europe/Rome wall clock, so demand cycles stay aligned across DST): median and
    MAD of the 5-minute means of the same hour of the week in the
    var('anomaly_baseline_weeks') weeks before `baseline_week`.

    One row per (node, local week, hour of week) in which the node has data. Incremental:
    a key is computed when its first window arrives, and recomputed when windows of the
    same hour in one of the weeks it draws on are (re)computed (late data). Keys whose
    inputs did not change are not touched, so a normal cycle computes one key per node
    per new hour. -#}
{%- set weeks = var('anomaly_baseline_weeks') -%}

with

windows as (

    select
        node_id,
        window_start,
        avg_flow_rate,
        avg_pressure,
        computed_at
    from {{ ref('int_metrics_windowed') }}
    where time_window = '5min'

),

{% if is_incremental() %}

watermark as (

    {{ last_run_watermark('computed_at') }}

),

touched as (

    select
        windows.node_id,
        windows.window_start,
        {{ week_start_date(local_timestamp('windows.window_start')) }} as local_week,
        {{ hour_of_week(local_timestamp('windows.window_start')) }} as hour_of_week
    from windows
    cross join watermark
    where {{ is_after_watermark('windows.computed_at') }}

),

existing_keys as (

    select node_id, baseline_week, hour_of_week, key_hour_start
    from {{ this }}

),

{# A key is needed to score its own windows; compute it once, when it is first seen. -#}
new_keys as (

    select
        touched.node_id,
        touched.local_week as baseline_week,
        touched.hour_of_week,
        {{ time_bucket_start(3600, 'min(touched.window_start)') }} as key_hour_start
    from touched
    left join existing_keys
        on touched.node_id = existing_keys.node_id
        and touched.local_week = existing_keys.baseline_week
        and touched.hour_of_week = existing_keys.hour_of_week
    where existing_keys.node_id is null
    group by 1, 2, 3

),

{# Windows that changed feed the baselines of the same hour in the following weeks. -#}
affected_keys as (

    {% for k in range(1, weeks + 1) %}
    select existing_keys.*
    from existing_keys
    inner join (
        select distinct node_id, local_week, hour_of_week from touched
    ) as changed
        on existing_keys.node_id = changed.node_id
        and existing_keys.baseline_week = {{ add_days('changed.local_week', 7 * k) }}
        and existing_keys.hour_of_week = changed.hour_of_week
    {% if not loop.last %}union distinct{% endif %}
    {% endfor %}

),

target_keys as (

    select * from new_keys
    union distinct
    select * from affected_keys

),

history_ranges as (

    select
        node_id,
        {{ add_seconds('min(key_hour_start)', -(weeks + 1) * 7 * 86400) }} as range_start,
        {{ add_seconds('max(key_hour_start)', 86400) }} as range_end
    from target_keys
    group by node_id

),

history as (

    select
        windows.node_id,
        windows.avg_flow_rate,
        windows.avg_pressure,
        {{ week_start_date(local_timestamp('windows.window_start')) }} as local_week,
        {{ hour_of_week(local_timestamp('windows.window_start')) }} as hour_of_week
    from windows
    inner join history_ranges
        on windows.node_id = history_ranges.node_id
        and windows.window_start >= history_ranges.range_start
        and windows.window_start < history_ranges.range_end

),

{% else %}

history as (

    select
        node_id,
        avg_flow_rate,
        avg_pressure,
        {{ week_start_date(local_timestamp('window_start')) }} as local_week,
        {{ hour_of_week(local_timestamp('window_start')) }} as hour_of_week,
        window_start
    from windows

),

target_keys as (

    select
        node_id,
        local_week as baseline_week,
        hour_of_week,
        {{ time_bucket_start(3600, 'min(window_start)') }} as key_hour_start
    from history
    group by 1, 2, 3

),

{% endif %}

samples as (

    select
        target_keys.node_id,
        target_keys.baseline_week,
        target_keys.hour_of_week,
        history.local_week,
        history.avg_flow_rate,
        history.avg_pressure
    from target_keys
    inner join history
        on target_keys.node_id = history.node_id
        and target_keys.hour_of_week = history.hour_of_week
        and target_keys.baseline_week > history.local_week
        and history.local_week >= {{ add_days('target_keys.baseline_week', -7 * weeks) }}

),

medians as (

    select
        node_id,
        baseline_week,
        hour_of_week,
        count(avg_flow_rate) as flow_sample_count,
        count(distinct case when avg_flow_rate is not null then local_week end) as flow_week_count,
        {{ median('avg_flow_rate') }} as flow_median,
        count(avg_pressure) as pressure_sample_count,
        count(distinct case when avg_pressure is not null then local_week end) as pressure_week_count,
        {{ median('avg_pressure') }} as pressure_median
    from samples
    group by 1, 2, 3

),

deviations as (

    select
        samples.node_id,
        samples.baseline_week,
        samples.hour_of_week,
        abs(samples.avg_flow_rate - medians.flow_median) as flow_deviation,
        abs(samples.avg_pressure - medians.pressure_median) as pressure_deviation
    from samples
    inner join medians
        on samples.node_id = medians.node_id
        and samples.baseline_week = medians.baseline_week
        and samples.hour_of_week = medians.hour_of_week

),

mads as (

    select
        node_id,
        baseline_week,
        hour_of_week,
        {{ median('flow_deviation') }} as flow_mad,
        {{ median('pressure_deviation') }} as pressure_mad
    from deviations
    group by 1, 2, 3

),

final as (

    select
        target_keys.node_id,
        target_keys.baseline_week,
        target_keys.hour_of_week,
        target_keys.key_hour_start,
        cast(coalesce(medians.flow_sample_count, 0) as integer) as flow_sample_count,
        cast(coalesce(medians.flow_week_count, 0) as integer) as flow_week_count,
        medians.flow_median,
        mads.flow_mad,
        cast(coalesce(medians.pressure_sample_count, 0) as integer) as pressure_sample_count,
        cast(coalesce(medians.pressure_week_count, 0) as integer) as pressure_week_count,
        medians.pressure_median,
        mads.pressure_mad,
        {{ dbt.current_timestamp() }} as computed_at
    from target_keys
    left join medians
        on target_keys.node_id = medians.node_id
        and target_keys.baseline_week = medians.baseline_week
        and target_keys.hour_of_week = medians.hour_of_week
    left join mads
        on target_keys.node_id = mads.node_id
        and target_keys.baseline_week = mads.baseline_week
        and target_keys.hour_of_week = mads.hour_of_week

)

select * from final
