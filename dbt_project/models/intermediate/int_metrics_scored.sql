{{
    config(
        unique_key=['node_id', 'window_start'],
        incremental_strategy='merge',
        pre_hook=["{{ refresh_statistics(ref('int_metrics_windowed')) }}", "{{ refresh_statistics(ref('int_readings_deduplicated')) }}", "{{ refresh_statistics(ref('int_node_baselines_computed')) }}"],
        post_hook=["{{ refresh_statistics(this) }}", "{{ bigquery_record_scope() }}"],
        meta={'bigquery_scope': {'column': 'window_start', 'lookback_days': var('bigquery_rescore_lookback_days')}},
        indexes=[
            {'columns': ['node_id', 'window_start'], 'unique': true},
            {'columns': ['scored_at']},
        ] if target.type == 'postgres' else [],
    )
}}
{#- Every node's 5-minute window with the evidence the detectors and the data-quality
    scores need: robust z-scores against the node's hour-of-week baseline, the change from
    the previous window, the pressure band, runs of unchanged readings, the silence after
    the window, totaliser resets / backward steps, reverse flow, and the totaliser-vs-flow
    and ingestion-lag partial sums. One row per (node_id, window_start) that has readings.

    Incremental: a window is re-scored when anything it depends on changed since the last
    run: its own readings, the previous window (step change), a later window (the silence
    after it, runs of unchanged readings and totaliser steps that start before it), or its
    baseline (late data in an earlier week). The re-scored set is the touched windows of each
    node, from the last window before them to var('anomaly_stuck_min_readings') readings
    after them, plus the windows whose baseline was recomputed. On BigQuery windows and
    readings are read from var('bigquery_rescore_lookback_days') days before the new data's
    earliest day (a constant partition bound), so a window before a longer silence is not
    re-scored there (docs/bigquery.md "Cost model"). -#}
{%- set stuck_n = var('anomaly_stuck_min_readings') -%}
{%- set max_gap = var('totaliser_max_gap_s') -%}
{%- set default_cadence = var('default_expected_cadence_s') -%}
{%- set default_lookback = [max_gap, 2 * stuck_n * default_cadence] | max -%}
{#- A public holiday is its own day type: its windows are judged against the previous week's
    Sunday baseline (here holidays count as Sundays; ml_features learns them as a day type of
    their own). Holidays come from macro public_holidays. -#}

with

windows as (

    select
        node_id,
        window_start,
        window_end,
        reading_count,
        flow_rate_count,
        avg_flow_rate,
        min_flow_rate,
        max_flow_rate,
        pressure_count,
        avg_pressure,
        min_pressure,
        max_pressure,
        total_volume,
        volume_reading_count,
        first_reading_at,
        last_reading_at,
        computed_at
    from {{ ref('int_metrics_windowed') }}
    where time_window = '5min'
        and {{ bigquery_partition_filter('window_start', var('bigquery_rescore_lookback_days')) }}

),

holidays as (

    -- depends_on: {{ ref('italian_public_holidays') }}
    {{ public_holidays() }}

),

readings as (

    select node_id, reading_at, flow_rate, pressure, volume, loaded_at
    from {{ ref('int_readings_deduplicated') }}
    -- the earlier readings a re-scored window's checks look at: a day more
    where {{ bigquery_partition_filter('reading_at', var('bigquery_rescore_lookback_days') + 1) }}

),

baselines as (

    select * from {{ ref('int_node_baselines_computed') }}
    -- a key's first hour lies within two hours of its windows
    where {{ bigquery_partition_filter('key_hour_start', var('bigquery_rescore_lookback_days') + 1) }}

),

node_settings as (

    {#- Readings before a window that its checks look at: a totaliser step, or a run of
        unchanged readings (twice the run length in time, to allow for missing readings). -#}
    select
        node_id,
        district,
        balance_role,
        expected_cadence_s,
        pressure_min_bar,
        pressure_max_bar,
        is_bidirectional,
        greatest({{ max_gap }}, 2 * {{ stuck_n }} * expected_cadence_s) as lookback_s
    from {{ ref('stg_raw__node_metadata') }}

),

{% if is_incremental() %}

watermark as (

    {{ last_run_watermark('scored_at', 'window_start') }}

),

touched_ranges as (

    select
        windows.node_id,
        min(windows.window_start) as first_touched,
        max(windows.window_start) as last_touched,
        {{ time_bucket_start(86400, 'min(windows.window_start)') }} as first_touched_day
    from windows
    cross join watermark
    where {{ is_after_watermark('windows.computed_at') }}
    group by windows.node_id

),

{# The last window before the touched ones: the silence after it may have changed. -#}
earlier_same_day as (

    select
        touched_ranges.node_id,
        max(windows.window_start) as previous_window_start
    from touched_ranges
    inner join windows
        on touched_ranges.node_id = windows.node_id
        and touched_ranges.first_touched_day <= windows.window_start
        and touched_ranges.first_touched > windows.window_start
    group by touched_ranges.node_id

),

earlier_days as (

    select
        touched_ranges.node_id,
        max(days.last_reading_at) as previous_reading_at
    from touched_ranges
    inner join {{ ref('int_metrics_windowed') }} as days
        on touched_ranges.node_id = days.node_id
        and days.time_window = '1day'
        and touched_ranges.first_touched_day > days.window_start
    where {{ bigquery_partition_filter('days.window_start', var('bigquery_rescore_lookback_days')) }}
    group by touched_ranges.node_id

),

rescore_ranges as (

    select
        touched_ranges.node_id,
        coalesce(
            earlier_same_day.previous_window_start,
            {{ time_bucket_start(300, 'earlier_days.previous_reading_at') }},
            touched_ranges.first_touched
        ) as range_start,
        {{ add_seconds('touched_ranges.last_touched', 'coalesce(node_settings.lookback_s, ' ~ default_lookback ~ ')') }}
            as range_last
    from touched_ranges
    left join earlier_same_day
        on touched_ranges.node_id = earlier_same_day.node_id
    left join earlier_days
        on touched_ranges.node_id = earlier_days.node_id
    left join node_settings
        on touched_ranges.node_id = node_settings.node_id

),

changed_baselines as (

    select baselines.node_id, baselines.baseline_week, baselines.hour_of_week, baselines.key_hour_start
    from baselines
    cross join watermark
    where {{ is_after_watermark('baselines.computed_at') }}

),

rebaselined as (

    {#- A local hour of the week spans one UTC hour, two on the fall-back night. -#}
    select windows.node_id, windows.window_start
    from windows
    inner join changed_baselines
        on windows.node_id = changed_baselines.node_id
        and windows.window_start >= {{ add_seconds('changed_baselines.key_hour_start', -3600) }}
        and windows.window_start < {{ add_seconds('changed_baselines.key_hour_start', 7200) }}
    where
        windows.window_start >= (select {{ add_seconds('min(key_hour_start)', -3600) }} from changed_baselines)
        and {{ week_start_date(local_timestamp('windows.window_start')) }} = changed_baselines.baseline_week
        and {{ hour_of_week(local_timestamp('windows.window_start')) }} = changed_baselines.hour_of_week

),

rebaselined_holidays as (

    select windows.node_id, windows.window_start
    from windows
    inner join holidays
        on cast({{ local_timestamp('windows.window_start') }} as date) = holidays.holiday_date
    inner join changed_baselines
        on windows.node_id = changed_baselines.node_id
        and {{ week_start_date(local_timestamp('windows.window_start')) }}
        = {{ add_days('changed_baselines.baseline_week', 7) }}
        and 144 + mod({{ hour_of_week(local_timestamp('windows.window_start')) }}, 24) = changed_baselines.hour_of_week
    where windows.window_start >= (select min(changed_baselines.key_hour_start) from changed_baselines)

),

scope_keys as (

    select windows.node_id, windows.window_start
    from windows
    inner join rescore_ranges
        on windows.node_id = rescore_ranges.node_id
        and windows.window_start >= rescore_ranges.range_start
        and windows.window_start <= rescore_ranges.range_last
    where windows.window_start >= (select min(rescore_ranges.range_start) from rescore_ranges)

    union distinct

    select node_id, window_start from rebaselined

    union distinct

    select node_id, window_start from rebaselined_holidays

),

node_scope as (

    select node_id, min(window_start) as first_window_start, max(window_start) as last_window_start
    from scope_keys
    group by node_id

),

{# Windows from each node's first re-scored window onwards (the next window after a
    silence can be far later); the global bound lets the engine skip older data. -#}
nearby_windows as (

    select windows.*
    from windows
    inner join node_scope
        on windows.node_id = node_scope.node_id
        and windows.window_start >= {{ add_seconds('node_scope.first_window_start', -600) }}
    where windows.window_start >= (select {{ add_seconds('min(first_window_start)', -600) }} from node_scope)

),

scope_windows as (

    select nearby_windows.*
    from nearby_windows
    inner join scope_keys
        on nearby_windows.node_id = scope_keys.node_id
        and nearby_windows.window_start = scope_keys.window_start

),

scoped_readings as (

    select readings.*
    from readings
    inner join node_scope
        on readings.node_id = node_scope.node_id
    left join node_settings
        on readings.node_id = node_settings.node_id
    where
        readings.reading_at >= {{ add_seconds(
            'node_scope.first_window_start',
            '-coalesce(node_settings.lookback_s, ' ~ default_lookback ~ ')'
        ) }}
        and readings.reading_at < {{ add_seconds('node_scope.last_window_start', 300) }}
        and readings.reading_at >= (
            select {{ add_seconds('min(first_window_start)', -default_lookback - 86400) }} from node_scope
        )

),

{% else %}

nearby_windows as (

    select * from windows

),

scope_windows as (

    select * from windows

),

scoped_readings as (

    select * from readings

),

{% endif %}

readings_sequenced as (

    {#- Partitioning by "has a value" makes lag skip readings without that measurement. -#}
    select
        node_id,
        reading_at,
        flow_rate,
        pressure,
        volume,
        loaded_at,
        lag(volume) over volume_readings as previous_volume,
        {{ seconds_between('lag(reading_at) over volume_readings', 'reading_at') }} as seconds_since_previous_volume,
        case
            when flow_rate is not null and flow_rate = lag(flow_rate) over flow_readings then 0 else 1
        end as starts_flow_run,
        case
            when pressure is not null and pressure = lag(pressure) over pressure_readings then 0 else 1
        end as starts_pressure_run
    from scoped_readings
    window
        volume_readings as (partition by node_id, volume is null order by reading_at),
        flow_readings as (partition by node_id, flow_rate is null order by reading_at),
        pressure_readings as (partition by node_id, pressure is null order by reading_at)

),

readings_in_runs as (

    select
        *,
        sum(starts_flow_run) over (
            partition by node_id, flow_rate is null order by reading_at
            rows between unbounded preceding and current row
        ) as flow_run_id,
        sum(starts_pressure_run) over (
            partition by node_id, pressure is null order by reading_at
            rows between unbounded preceding and current row
        ) as pressure_run_id
    from readings_sequenced

),

readings_checked as (

    select
        node_id,
        reading_at,
        flow_rate,
        pressure,
        previous_volume,
        volume,
        case when flow_rate is not null then row_number() over (
            partition by node_id, flow_rate is null, flow_run_id order by reading_at
        ) end as flow_run_length,
        case when pressure is not null then row_number() over (
            partition by node_id, pressure is null, pressure_run_id order by reading_at
        ) end as pressure_run_length,
        case
            when volume is not null
                then {{ totaliser_delta('volume', 'previous_volume', 'seconds_since_previous_volume') }}
        end as volume_delta,
        coalesce(
            seconds_since_previous_volume <= {{ max_gap }}
            and volume < previous_volume * {{ var('totaliser_reset_ratio') }},
            false
        ) as is_totaliser_reset,
        coalesce(
            seconds_since_previous_volume <= {{ max_gap }}
            and volume < previous_volume
            and volume >= previous_volume * {{ var('totaliser_reset_ratio') }},
            false
        ) as is_totaliser_backwards,
        case
            when seconds_since_previous_volume <= {{ max_gap }} and flow_rate is not null
                then flow_rate * seconds_since_previous_volume / 1000.0
        end as integrated_flow_m3,
        greatest({{ seconds_between('reading_at', 'loaded_at') }}, 0) as ingestion_lag_s
    from readings_in_runs

),

readings_by_window as (

    select
        node_id,
        {{ time_bucket_start(300, 'reading_at') }} as window_start,
        {#- Counted up to the stuck length: a re-scored window sees that many earlier readings.
            (least/greatest skip nulls on duckdb and postgres, hence the explicit null checks.) -#}
        max(case when flow_rate <> 0 and flow_run_length is not null then least(flow_run_length, {{ stuck_n }}) end)
            as flow_unchanged_readings,
        max(case when flow_rate <> 0 and flow_run_length >= {{ stuck_n }} then flow_rate end) as stuck_flow_value,
        max(case when pressure_run_length is not null then least(pressure_run_length, {{ stuck_n }}) end)
            as pressure_unchanged_readings,
        max(case when pressure_run_length >= {{ stuck_n }} then pressure end) as stuck_pressure_value,
        count(case when is_totaliser_reset then 1 end) as totaliser_reset_count,
        min(case when is_totaliser_reset then reading_at end) as first_totaliser_reset_at,
        max(case when is_totaliser_reset then previous_volume end) as volume_before_reset,
        min(case when is_totaliser_reset then volume end) as volume_after_reset,
        count(case when is_totaliser_backwards then 1 end) as totaliser_backwards_count,
        sum(case when is_totaliser_backwards then previous_volume - volume end) as totaliser_backwards_m3,
        min(case when is_totaliser_backwards then reading_at end) as first_totaliser_backwards_at,
        count(case when integrated_flow_m3 is not null and volume_delta is not null then 1 end)
            as consistency_reading_count,
        sum(case when integrated_flow_m3 is not null then volume_delta end) as checked_volume_delta_m3,
        sum(case when volume_delta is not null then integrated_flow_m3 end) as integrated_flow_m3,
        sum(ingestion_lag_s) as ingestion_lag_sum_s,
        max(ingestion_lag_s) as max_ingestion_lag_s,
        count(case when ingestion_lag_s <= {{ var('quality_timeliness_max_lag_s') }} then 1 end)
            as on_time_reading_count
    from readings_checked
    group by 1, 2

),

following_windows as (

    select
        node_id,
        window_start,
        lead(first_reading_at) over (partition by node_id order by window_start) as next_reading_at
    from nearby_windows

),

localised as (

    select
        scope_windows.*,
        case
            when holidays.holiday_date is not null
                then {{ add_days(week_start_date(local_timestamp('scope_windows.window_start')), -7) }}
            else {{ week_start_date(local_timestamp('scope_windows.window_start')) }}
        end as baseline_week,
        case
            when holidays.holiday_date is not null
                then 144 + mod({{ hour_of_week(local_timestamp('scope_windows.window_start')) }}, 24)
            else {{ hour_of_week(local_timestamp('scope_windows.window_start')) }}
        end as hour_of_week
    from scope_windows
    left join holidays
        on cast({{ local_timestamp('scope_windows.window_start') }} as date) = holidays.holiday_date

),

joined as (

    select
        localised.*,
        node_settings.node_id is not null as has_metadata,
        coalesce(node_settings.district, 'unknown') as district,
        coalesce(node_settings.balance_role, 'monitoring') as balance_role,
        coalesce(node_settings.expected_cadence_s, {{ default_cadence }}) as expected_cadence_s,
        node_settings.pressure_min_bar,
        node_settings.pressure_max_bar,
        coalesce(node_settings.is_bidirectional, false) as is_bidirectional,
        baselines.flow_sample_count,
        baselines.flow_week_count,
        baselines.flow_median,
        baselines.flow_mad,
        baselines.pressure_sample_count,
        baselines.pressure_week_count,
        baselines.pressure_median,
        baselines.pressure_mad,
        previous_window.avg_flow_rate as previous_avg_flow_rate,
        previous_window.avg_pressure as previous_avg_pressure,
        earlier_window.avg_flow_rate as earlier_avg_flow_rate,
        earlier_window.avg_pressure as earlier_avg_pressure,
        following_windows.next_reading_at,
        readings_by_window.flow_unchanged_readings,
        readings_by_window.stuck_flow_value,
        readings_by_window.pressure_unchanged_readings,
        readings_by_window.stuck_pressure_value,
        coalesce(readings_by_window.totaliser_reset_count, 0) as totaliser_reset_count,
        readings_by_window.first_totaliser_reset_at,
        readings_by_window.volume_before_reset,
        readings_by_window.volume_after_reset,
        coalesce(readings_by_window.totaliser_backwards_count, 0) as totaliser_backwards_count,
        readings_by_window.totaliser_backwards_m3,
        readings_by_window.first_totaliser_backwards_at,
        coalesce(readings_by_window.consistency_reading_count, 0) as consistency_reading_count,
        readings_by_window.checked_volume_delta_m3,
        readings_by_window.integrated_flow_m3,
        readings_by_window.ingestion_lag_sum_s,
        readings_by_window.max_ingestion_lag_s,
        coalesce(readings_by_window.on_time_reading_count, 0) as on_time_reading_count
    from localised
    left join node_settings
        on localised.node_id = node_settings.node_id
    left join baselines
        on localised.node_id = baselines.node_id
        and localised.baseline_week = baselines.baseline_week
        and localised.hour_of_week = baselines.hour_of_week
    left join nearby_windows as previous_window
        on localised.node_id = previous_window.node_id
        and previous_window.window_start = {{ add_seconds('localised.window_start', -300) }}
    left join nearby_windows as earlier_window
        on localised.node_id = earlier_window.node_id
        and earlier_window.window_start = {{ add_seconds('localised.window_start', -600) }}
    left join following_windows
        on localised.node_id = following_windows.node_id
        and localised.window_start = following_windows.window_start
    left join readings_by_window
        on localised.node_id = readings_by_window.node_id
        and localised.window_start = readings_by_window.window_start

),

{# A step is measured against the window 5 or 10 minutes earlier, whichever differs more:
    a change that starts mid-window is split over two windows, and at a 5-minute cadence a
    window may have no reading. -#}
steps as (

    select
        *,
        case
            when previous_avg_flow_rate is null then earlier_avg_flow_rate
            when earlier_avg_flow_rate is null then previous_avg_flow_rate
            when abs(avg_flow_rate - previous_avg_flow_rate) >= abs(avg_flow_rate - earlier_avg_flow_rate)
                then previous_avg_flow_rate
            else earlier_avg_flow_rate
        end as step_reference_flow_rate,
        case
            when previous_avg_pressure is null then earlier_avg_pressure
            when earlier_avg_pressure is null then previous_avg_pressure
            when abs(avg_pressure - previous_avg_pressure) >= abs(avg_pressure - earlier_avg_pressure)
                then previous_avg_pressure
            else earlier_avg_pressure
        end as step_reference_pressure
    from joined

),

scored as (

    select
        *,
        case
            when avg_flow_rate is not null
                and flow_sample_count >= {{ var('anomaly_baseline_min_samples') }}
                and flow_week_count >= {{ var('anomaly_baseline_min_weeks') }}
                then (avg_flow_rate - flow_median) / greatest(
                    1.4826 * coalesce(flow_mad, 0),
                    {{ var('anomaly_flow_sigma_floor_ratio') }} * abs(flow_median),
                    {{ var('anomaly_flow_sigma_floor_lps') }}
                )
        end as flow_robust_z,
        case
            when avg_pressure is not null
                and pressure_sample_count >= {{ var('anomaly_baseline_min_samples') }}
                and pressure_week_count >= {{ var('anomaly_baseline_min_weeks') }}
                then (avg_pressure - pressure_median) / greatest(
                    1.4826 * coalesce(pressure_mad, 0),
                    {{ var('anomaly_pressure_sigma_floor_bar') }}
                )
        end as pressure_robust_z,
        avg_flow_rate - step_reference_flow_rate as flow_step_lps,
        {#- A step is large against the usual level: the earlier windows or the baseline. -#}
        greatest(
            {{ var('anomaly_step_flow_ratio') }} * greatest(
                abs(coalesce(previous_avg_flow_rate, 0)),
                abs(coalesce(earlier_avg_flow_rate, 0)),
                abs(coalesce(flow_median, 0))
            ),
            {{ var('anomaly_step_flow_min_lps') }}
        ) as flow_step_threshold_lps,
        avg_pressure - step_reference_pressure as pressure_step_bar,
        case
            when avg_pressure < pressure_min_bar then pressure_min_bar - avg_pressure
            when avg_pressure > pressure_max_bar then avg_pressure - pressure_max_bar
            when avg_pressure is not null and coalesce(pressure_min_bar, pressure_max_bar) is not null then 0
        end as pressure_band_excess_bar,
        {{ seconds_between('last_reading_at', 'next_reading_at') }} as gap_seconds,
        greatest({{ var('anomaly_gap_cadence_multiple') }} * expected_cadence_s, 300) as gap_threshold_s
    from steps

),

final as (

    select
        node_id,
        window_start,
        window_end,
        district,
        balance_role,
        has_metadata,
        expected_cadence_s,
        is_bidirectional,
        pressure_min_bar,
        pressure_max_bar,
        reading_count,
        flow_rate_count,
        avg_flow_rate,
        min_flow_rate,
        max_flow_rate,
        pressure_count,
        avg_pressure,
        min_pressure,
        max_pressure,
        total_volume,
        volume_reading_count,
        first_reading_at,
        last_reading_at,
        next_reading_at,
        baseline_week,
        hour_of_week,
        flow_sample_count as flow_baseline_samples,
        flow_median as flow_baseline_median,
        flow_mad as flow_baseline_mad,
        flow_robust_z,
        case
            when avg_flow_rate is null then 'no_measurement'
            when flow_robust_z is null then 'insufficient_history'
            else 'ok'
        end as flow_baseline_status,
        pressure_sample_count as pressure_baseline_samples,
        pressure_median as pressure_baseline_median,
        pressure_mad as pressure_baseline_mad,
        pressure_robust_z,
        case
            when avg_pressure is null then 'no_measurement'
            when pressure_robust_z is null then 'insufficient_history'
            else 'ok'
        end as pressure_baseline_status,
        coalesce(abs(flow_robust_z) >= {{ var('anomaly_zscore_warning') }}, false) as is_flow_outlier,
        coalesce(abs(pressure_robust_z) >= {{ var('anomaly_zscore_warning') }}, false) as is_pressure_outlier,
        step_reference_flow_rate,
        flow_step_lps,
        flow_step_threshold_lps,
        coalesce(abs(flow_step_lps) >= flow_step_threshold_lps, false) as is_flow_step,
        step_reference_pressure,
        pressure_step_bar,
        coalesce(abs(pressure_step_bar) >= {{ var('anomaly_step_pressure_bar') }}, false) as is_pressure_step,
        pressure_band_excess_bar,
        coalesce(pressure_band_excess_bar > 0, false) as is_pressure_out_of_band,
        flow_unchanged_readings,
        stuck_flow_value,
        coalesce(flow_unchanged_readings >= {{ stuck_n }}, false) as is_flow_stuck,
        pressure_unchanged_readings,
        stuck_pressure_value,
        coalesce(pressure_unchanged_readings >= {{ stuck_n }}, false) as is_pressure_stuck,
        gap_seconds,
        gap_threshold_s,
        coalesce(gap_seconds > gap_threshold_s, false) as is_gap_after,
        totaliser_reset_count,
        first_totaliser_reset_at,
        volume_before_reset,
        volume_after_reset,
        totaliser_backwards_count,
        totaliser_backwards_m3,
        first_totaliser_backwards_at,
        coalesce(
            not is_bidirectional and avg_flow_rate <= -{{ var('anomaly_reverse_flow_min_lps') }}, false
        ) as is_reverse_flow,
        consistency_reading_count,
        checked_volume_delta_m3,
        integrated_flow_m3,
        ingestion_lag_sum_s,
        max_ingestion_lag_s,
        on_time_reading_count,
        computed_at as metrics_computed_at,
        {{ dbt.current_timestamp() }} as scored_at
    from scored

)

select * from final
