{{
    config(
        unique_key=['node_id', 'time_window', 'window_start'],
        incremental_strategy='merge',
        indexes=[
            {'columns': ['node_id', 'time_window', 'window_start'], 'unique': true},
            {'columns': ['computed_at']},
        ] if target.type == 'postgres' else [],
        post_hook=["{{ refresh_statistics(this) }}", "{{ bigquery_record_scope() }}"],
        meta={'bigquery_scope': {'column': 'window_start'}},
    )
}}
{#- 5min / 1hour / 1day statistics per node, UTC epoch-aligned.

    Incremental by ingestion time: readings loaded since the last run (any lateness)
    mark their windows as touched, plus the window of the next totaliser reading (its
    delta changes when a reading is inserted before it). Only touched windows are
    merged; they are recomputed from whole UTC days of the affected nodes, so the
    result equals a full rebuild. 1hour and 1day roll up exact partial aggregates of
    the 5min windows (widths 300 | 3600 | 86400 nest). On BigQuery the reads and the MERGE
    stay within the day partitions of rows landed since the last run, plus the day before
    (docs/bigquery.md "Cost model"). -#}
{%- set max_gap = var('totaliser_max_gap_s') -%}
{%- set widths = window_widths() -%}

with

readings as (

    select * from {{ ref('int_readings_deduplicated') }}

),

nodes as (

    select * from {{ ref('stg_raw__node_metadata') }}

),

{% if is_incremental() %}

watermark as (

    {{ last_run_watermark('last_loaded_at', 'window_start') }}

),

new_readings as (

    select readings.node_id, readings.reading_at
    from readings
    cross join watermark
    where {{ is_after_watermark('readings.loaded_at') }}
        and {{ bigquery_partition_filter('readings.reading_at') }}

),

recompute_ranges as (

    select
        node_id,
        {{ time_bucket_start(86400, 'min(reading_at)') }} as range_start,
        {{ add_seconds(time_bucket_start(86400, add_seconds('max(reading_at)', max_gap)), 86400) }}
            as range_end
    from new_readings
    group by node_id

),

scoped_readings as (

    select
        readings.*,
        {{ is_after_watermark('readings.loaded_at') }}
            as is_new,
        readings.reading_at >= recompute_ranges.range_start as is_in_range
    from readings
    inner join recompute_ranges
        on readings.node_id = recompute_ranges.node_id
        and readings.reading_at >= {{ add_seconds('recompute_ranges.range_start', -max_gap) }}
        and readings.reading_at < recompute_ranges.range_end
    cross join watermark
    -- a constant bound BigQuery prunes on: the day before the earliest new reading's day
    where {{ bigquery_partition_filter('readings.reading_at', 1) }}

),

{% else %}

scoped_readings as (

    select
        readings.*,
        true as is_new,
        true as is_in_range
    from readings

),

{% endif %}

with_volume_deltas as (

    {#- Partitioning by "has a volume" makes lag/lead skip readings without one. -#}
    select
        *,
        case
            when volume is not null then {{ totaliser_delta(
                'volume',
                'lag(volume) over volume_readings',
                seconds_between('lag(reading_at) over volume_readings', 'reading_at'),
            ) }}
        end as volume_delta,
        case
            when volume is not null then lead(reading_at) over volume_readings
        end as next_volume_reading_at
    from scoped_readings
    window volume_readings as (partition by node_id, volume is null order by reading_at)

),

five_minute_partials as (

    select
        node_id,
        {{ time_bucket_start(300, 'reading_at') }} as window_start,
        max(node_name) as node_name,
        count(*) as reading_count,
        count(flow_rate) as flow_rate_count,
        sum(flow_rate) as flow_rate_sum,
        min(flow_rate) as min_flow_rate,
        max(flow_rate) as max_flow_rate,
        count(pressure) as pressure_count,
        sum(pressure) as pressure_sum,
        min(pressure) as min_pressure,
        max(pressure) as max_pressure,
        count(temperature) as temperature_count,
        sum(temperature) as temperature_sum,
        min(temperature) as min_temperature,
        max(temperature) as max_temperature,
        count(volume) as volume_reading_count,
        count(volume_delta) as volume_delta_count,
        sum(volume_delta) as volume_delta_sum,
        count(quality_score) as sensor_quality_count,
        sum(quality_score) as sensor_quality_sum,
        min(reading_at) as first_reading_at,
        max(reading_at) as last_reading_at,
        max(loaded_at) as last_loaded_at
    from with_volume_deltas
    where is_in_range
    group by 1, 2

),

{% for name, width in widths.items() %}
{% if width == 300 %}
windows_{{ name }} as (

    select '{{ name }}' as time_window, {{ width }} as window_seconds, *
    from five_minute_partials

),
{% else %}
windows_{{ name }} as (

    select
        '{{ name }}' as time_window,
        {{ width }} as window_seconds,
        node_id,
        {{ time_bucket_start(width, 'window_start') }} as window_start,
        max(node_name) as node_name,
        sum(reading_count) as reading_count,
        sum(flow_rate_count) as flow_rate_count,
        sum(flow_rate_sum) as flow_rate_sum,
        min(min_flow_rate) as min_flow_rate,
        max(max_flow_rate) as max_flow_rate,
        sum(pressure_count) as pressure_count,
        sum(pressure_sum) as pressure_sum,
        min(min_pressure) as min_pressure,
        max(max_pressure) as max_pressure,
        sum(temperature_count) as temperature_count,
        sum(temperature_sum) as temperature_sum,
        min(min_temperature) as min_temperature,
        max(max_temperature) as max_temperature,
        sum(volume_reading_count) as volume_reading_count,
        sum(volume_delta_count) as volume_delta_count,
        sum(volume_delta_sum) as volume_delta_sum,
        sum(sensor_quality_count) as sensor_quality_count,
        sum(sensor_quality_sum) as sensor_quality_sum,
        min(first_reading_at) as first_reading_at,
        max(last_reading_at) as last_reading_at,
        max(last_loaded_at) as last_loaded_at
    from five_minute_partials
    group by 3, 4

),
{% endif %}
{% endfor %}

all_windows as (

    {% for name in widths %}
    select * from windows_{{ name }}
    {% if not loop.last %}union all{% endif %}
    {% endfor %}

),

{% if is_incremental() %}

touched_points as (

    select node_id, reading_at as touched_at
    from with_volume_deltas
    where is_new and is_in_range

    union all

    -- a new reading changes the totaliser delta of the next reading after it
    select node_id, next_volume_reading_at as touched_at
    from with_volume_deltas
    where is_new and next_volume_reading_at is not null

),

touched_windows as (

    {{ windows_containing('touched_points', 'touched_at', widths) }}

),

selected_windows as (

    select all_windows.*
    from all_windows
    inner join touched_windows
        on all_windows.node_id = touched_windows.node_id
        and all_windows.time_window = touched_windows.time_window
        and all_windows.window_start = touched_windows.window_start

),

{% else %}

selected_windows as (

    select * from all_windows

),

{% endif %}

scored as (

    select
        selected_windows.*,
        coalesce(nodes.expected_cadence_s, {{ var('default_expected_cadence_s') }}) as expected_cadence_s,
        selected_windows.sensor_quality_sum / nullif(selected_windows.sensor_quality_count, 0)
            as avg_sensor_quality,
        least(
            1.0,
            1.0 * selected_windows.reading_count
            * coalesce(nodes.expected_cadence_s, {{ var('default_expected_cadence_s') }})
            / selected_windows.window_seconds
        ) as completeness
    from selected_windows
    left join nodes
        on selected_windows.node_id = nodes.node_id

),

final as (

    select
        node_id,
        time_window,
        window_start,
        node_name,
        {{ add_seconds('window_start', 'window_seconds') }} as window_end,
        cast(reading_count as integer) as reading_count,
        cast(flow_rate_count as integer) as flow_rate_count,
        flow_rate_sum / nullif(flow_rate_count, 0) as avg_flow_rate,
        min_flow_rate,
        max_flow_rate,
        cast(pressure_count as integer) as pressure_count,
        pressure_sum / nullif(pressure_count, 0) as avg_pressure,
        min_pressure,
        max_pressure,
        cast(temperature_count as integer) as temperature_count,
        temperature_sum / nullif(temperature_count, 0) as avg_temperature,
        min_temperature,
        max_temperature,
        cast(volume_reading_count as integer) as volume_reading_count,
        case when volume_delta_count > 0 then volume_delta_sum end as total_volume,
        {{ floor_divide("window_seconds", "expected_cadence_s") }} as expected_reading_count,
        avg_sensor_quality,
        {{ round_double('completeness * coalesce(avg_sensor_quality, 1.0)', 6) }} as quality_score,
        first_reading_at,
        last_reading_at,
        last_loaded_at,
        {{ dbt.current_timestamp() }} as computed_at
    from scored

)

select * from final
