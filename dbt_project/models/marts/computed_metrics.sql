{{
    config(
        materialized='incremental',
        unique_key=['node_id', 'time_window', 'window_start'],
        incremental_strategy='merge',
        indexes=[
            {'columns': ['node_id', 'time_window', 'window_start'], 'unique': true},
            {'columns': ['time_window', 'window_end']},
        ] if target.type == 'postgres' else [],
        post_hook=["{{ bigquery_record_scope() }}"],
        meta={'bigquery_scope': {'column': 'window_start', 'lookback_days': var('bigquery_rescore_lookback_days')}},
    )
}}
{#- The published windowed metrics (DESIGN.md contract). Windows recomputed in
    int_metrics_windowed since the last run are merged here, and so are windows whose
    anomaly_count may have changed: a 5-minute window re-scored by the detectors (its
    anomalies re-derived or retracted) or an anomaly published since the last run.
    anomaly_count = node-level anomalies of the node whose window_start lies in the window
    (district-level ones have node_id 'district:<name>' and count nowhere here).
    computed_at = when this row was last merged, the model's own watermark.

    A 1hour or 1day window is published once it is closed: the node has reported at or after
    window_end, or the network's clock (its newest reading) is `window_close_grace_s` past
    window_end, so the last partial hour and day of a node that fell silent still appear.
    An open one would present a partial total as the hour's or day's, and its window_end, in
    the future, would make a silent node look fresh to the monitoring query
    `NOW() - MAX(window_end) > INTERVAL '1 hour'`; this way MAX(window_end) is within
    5 minutes of the node's last reading, or at least the grace (default 2 hours) in the
    past. 5-minute windows are published as they fill, so the hot cache shows the newest
    readings. Windows that close in this run are merged even when no new reading falls in
    them. On BigQuery reads and the MERGE stay within the partitions from
    var('bigquery_rescore_lookback_days') days before the new data (docs/bigquery.md).
    -#}
{%- set widths = window_widths() -%}
-- depends_on: {{ ref('int_metrics_scored') }}
with

closing_clocks as (

    {{ node_closing_clocks(ref('nodes')) }}

),

{% if is_incremental() %}

watermark as (

    {{ last_run_watermark('computed_at', 'window_start') }}

),

recount_points as (

    select scored.node_id, scored.window_start
    from {{ ref('int_metrics_scored') }} as scored
    cross join watermark
    where {{ is_after_watermark('scored.scored_at') }}
        and {{ bigquery_partition_filter('scored.window_start', var('bigquery_rescore_lookback_days')) }}

    union distinct

    select published.node_id, published.window_start
    from {{ ref('anomalies') }} as published
    cross join watermark
    where {{ is_after_watermark('published.evaluated_at') }}

),

changed_windows as (

    select recomputed.node_id, recomputed.time_window, recomputed.window_start
    from {{ ref('int_metrics_windowed') }} as recomputed
    cross join watermark
    where {{ is_after_watermark('recomputed.computed_at') }}
        and {{ bigquery_partition_filter('recomputed.window_start') }}

    union distinct

    {{ windows_containing('recount_points', 'window_start', widths, 'union distinct') }}

),

{# Windows close in order of window_end and each run publishes every window that closed, so
    all a node's 1hour and 1day windows ending by its latest published one are published:
    the windows that can have closed since end later, up to the node's closing clock. -#}
published_windows as (

    select
        closing_clocks.node_id,
        closing_clocks.closed_until,
        coalesce(max(published.window_end), {{ utc_timestamp('1970-01-01 00:00:00+00') }}) as published_until
    from closing_clocks
    left join {{ this }} as published
        on closing_clocks.node_id = published.node_id
        and published.time_window <> '5min'
        -- (BigQuery: a node with nothing published in the scope re-publishes its closed
        -- windows of the scope, unchanged)
        and {{ bigquery_partition_filter('published.window_start', var('bigquery_rescore_lookback_days')) }}
    group by closing_clocks.node_id, closing_clocks.closed_until

),

closed_windows as (

    select candidates.node_id, candidates.time_window, candidates.window_start
    from {{ ref('int_metrics_windowed') }} as candidates
    inner join published_windows on candidates.node_id = published_windows.node_id
    where candidates.time_window <> '5min'
        and candidates.window_end <= published_windows.closed_until
        and candidates.window_end > published_windows.published_until
        -- implied by the line above (no window is wider than a day); lets PostgreSQL use the key index
        and candidates.window_start > {{ add_seconds('published_windows.published_until', -86400) }}
        and {{ bigquery_partition_filter('candidates.window_start', var('bigquery_rescore_lookback_days')) }}

),

publishable_windows as (

    select * from changed_windows
    union distinct
    select * from closed_windows

),

windowed as (

    select all_windows.*
    from {{ ref('int_metrics_windowed') }} as all_windows
    inner join publishable_windows
        on all_windows.node_id = publishable_windows.node_id
        and all_windows.time_window = publishable_windows.time_window
        and all_windows.window_start = publishable_windows.window_start
    where all_windows.window_start >= (select min(publishable_windows.window_start) from publishable_windows)
        -- the constant bound BigQuery prunes on; windows before it are not merged there
        and {{ bigquery_partition_filter('all_windows.window_start', var('bigquery_rescore_lookback_days')) }}

),

{% else %}

windowed as (

    select * from {{ ref('int_metrics_windowed') }}

),

{% endif %}

node_anomalies as (

    select published.node_id, published.window_start
    from {{ ref('anomalies') }} as published
    {% if is_incremental() %}
    where published.window_start >= (select min(publishable_windows.window_start) from publishable_windows)
    {% endif %}

),

anomaly_counts as (

    {% for name, width in widths.items() %}
    select
        node_id,
        '{{ name }}' as time_window,
        {{ time_bucket_start(width, 'window_start') }} as window_start,
        count(*) as anomaly_count
    from node_anomalies
    group by 1, 2, 3
    {% if not loop.last %}union all{% endif %}
    {% endfor %}

),

final as (

    select
        windowed.node_id,
        windowed.time_window,
        windowed.window_start,
        windowed.window_end,
        windowed.reading_count,
        windowed.avg_flow_rate,
        windowed.min_flow_rate,
        windowed.max_flow_rate,
        windowed.avg_pressure,
        windowed.min_pressure,
        windowed.max_pressure,
        windowed.avg_temperature,
        windowed.min_temperature,
        windowed.max_temperature,
        windowed.total_volume,
        cast(coalesce(anomaly_counts.anomaly_count, 0) as integer) as anomaly_count,
        windowed.quality_score,
        windowed.expected_reading_count,
        windowed.flow_rate_count,
        windowed.pressure_count,
        windowed.temperature_count,
        windowed.volume_reading_count,
        windowed.avg_sensor_quality,
        windowed.first_reading_at,
        windowed.last_reading_at,
        {{ dbt.current_timestamp() }} as computed_at
    from windowed
    left join anomaly_counts
        on windowed.node_id = anomaly_counts.node_id
        and windowed.time_window = anomaly_counts.time_window
        and windowed.window_start = anomaly_counts.window_start
    inner join closing_clocks on windowed.node_id = closing_clocks.node_id
    where windowed.time_window = '5min' or windowed.window_end <= closing_clocks.closed_until

)

select * from final
