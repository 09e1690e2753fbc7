{{
    config(
        materialized='incremental',
        unique_key=['node_id', 'time_window', 'window_start'],
        incremental_strategy='merge',
        pre_hook=["{{ refresh_statistics(ref('int_metrics_scored')) }}", "{{ refresh_statistics(ref('rejected_readings')) }}"],
        post_hook=["{{ refresh_statistics(this) }}"],
        indexes=[
            {'columns': ['node_id', 'time_window', 'window_start'], 'unique': true},
            {'columns': ['computed_at']},
        ] if target.type == 'postgres' else [],
    )
}}
{#- Data quality per node per 5min / 1hour / 1day UTC window that received at least one
    reading (valid or rejected): completeness, validity, consistency, timeliness and an
    overall score; formulas in the model description (_marts__anomalies.yml).

    Built from the 5-minute partial sums of int_metrics_scored and the per-window counts of
    rejected_readings; 1hour and 1day roll the 5-minute partials up exactly. Incremental: the
    windows containing a re-scored 5-minute window or a newly rejected reading are
    recomputed and merged. -#}
{%- set widths = window_widths() -%}
{%- set weights = var('quality_weights') -%}
{%- set tolerance = var('quality_consistency_tolerance') -%}

with

scored as (

    select
        node_id,
        window_start,
        reading_count,
        flow_rate_count,
        volume_reading_count,
        consistency_reading_count,
        checked_volume_delta_m3,
        integrated_flow_m3,
        ingestion_lag_sum_s,
        max_ingestion_lag_s,
        on_time_reading_count,
        scored_at
    from {{ ref('int_metrics_scored') }}

),

{# Rejected readings without a node id or a timestamp belong to no window; they are
    counted in rejected_readings only. -#}
rejected as (

    select
        node_id,
        {{ adapter.quote('timestamp') }} as reading_at,
        rejected_at
    from {{ ref('rejected_readings') }}
    where node_id is not null and {{ adapter.quote('timestamp') }} is not null

),

node_settings as (

    select node_id, expected_cadence_s from {{ ref('stg_raw__node_metadata') }}

),

{% if is_incremental() %}

watermark as (

    {{ last_run_watermark('computed_at') }}

),

touched_points as (

    select scored.node_id, scored.window_start
    from scored
    cross join watermark
    where {{ is_after_watermark('scored.scored_at') }}

    union distinct

    select rejected.node_id, {{ time_bucket_start(300, 'rejected.reading_at') }} as window_start
    from rejected
    cross join watermark
    where {{ is_after_watermark('rejected.rejected_at') }}

),

touched_windows as (

    {{ windows_containing('touched_points', 'window_start', widths) }}

),

scope as (

    select node_id, min(window_start) as first_window_start
    from touched_windows
    group by node_id

),

scoped_scored as (

    select scored.*
    from scored
    inner join scope
        on scored.node_id = scope.node_id
        and scored.window_start >= scope.first_window_start
    where scored.window_start >= (select min(scope.first_window_start) from scope)

),

scoped_rejected as (

    select rejected.*
    from rejected
    inner join scope
        on rejected.node_id = scope.node_id
        and rejected.reading_at >= scope.first_window_start

),

{% else %}

scoped_scored as (

    select * from scored

),

scoped_rejected as (

    select * from rejected

),

{% endif %}

rejected_by_window as (

    select node_id, {{ time_bucket_start(300, 'reading_at') }} as window_start, count(*) as rejected_count
    from scoped_rejected
    group by 1, 2

),

five_minute_partials as (

    select
        scoped_scored.checked_volume_delta_m3,
        scoped_scored.integrated_flow_m3,
        scoped_scored.ingestion_lag_sum_s,
        scoped_scored.max_ingestion_lag_s,
        coalesce(scoped_scored.node_id, rejected_by_window.node_id) as node_id,
        coalesce(scoped_scored.window_start, rejected_by_window.window_start) as window_start,
        coalesce(scoped_scored.reading_count, 0) as reading_count,
        coalesce(rejected_by_window.rejected_count, 0) as rejected_count,
        coalesce(scoped_scored.flow_rate_count, 0) as flow_rate_count,
        coalesce(scoped_scored.volume_reading_count, 0) as volume_reading_count,
        coalesce(scoped_scored.consistency_reading_count, 0) as consistency_reading_count,
        coalesce(scoped_scored.on_time_reading_count, 0) as on_time_reading_count
    from scoped_scored
    full outer join rejected_by_window
        on scoped_scored.node_id = rejected_by_window.node_id
        and scoped_scored.window_start = rejected_by_window.window_start

),

rolled_up as (

    {% for name, width in widths.items() %}
    select
        node_id,
        '{{ name }}' as time_window,
        {{ time_bucket_start(width, 'window_start') }} as window_start,
        {{ width }} as window_seconds,
        sum(reading_count) as reading_count,
        sum(rejected_count) as rejected_count,
        sum(flow_rate_count) as flow_rate_count,
        sum(volume_reading_count) as volume_reading_count,
        sum(consistency_reading_count) as consistency_reading_count,
        sum(checked_volume_delta_m3) as checked_volume_delta_m3,
        sum(integrated_flow_m3) as integrated_flow_m3,
        sum(ingestion_lag_sum_s) as ingestion_lag_sum_s,
        max(max_ingestion_lag_s) as max_ingestion_lag_s,
        sum(on_time_reading_count) as on_time_reading_count
    from five_minute_partials
    group by 1, 2, 3
    {% if not loop.last %}union all{% endif %}
    {% endfor %}

),

{% if is_incremental() %}

selected as (

    select rolled_up.*
    from rolled_up
    inner join touched_windows
        on rolled_up.node_id = touched_windows.node_id
        and rolled_up.time_window = touched_windows.time_window
        and rolled_up.window_start = touched_windows.window_start

),

{% else %}

selected as (

    select * from rolled_up

),

{% endif %}

scores as (

    select
        selected.*,
        coalesce(node_settings.expected_cadence_s, {{ var('default_expected_cadence_s') }}) as expected_cadence_s,
        least(
            1.0,
            1.0 * selected.reading_count
            * coalesce(node_settings.expected_cadence_s, {{ var('default_expected_cadence_s') }})
            / selected.window_seconds
        ) as completeness,
        1.0 * selected.reading_count / (selected.reading_count + selected.rejected_count) as validity,
        case
            when selected.consistency_reading_count > 0
                then abs(selected.checked_volume_delta_m3 - selected.integrated_flow_m3)
                    / greatest(abs(selected.integrated_flow_m3), 0.001)
        end as volume_deviation,
        case
            when selected.reading_count > 0 then 1.0 * selected.on_time_reading_count / selected.reading_count
        end as timeliness
    from selected
    left join node_settings
        on selected.node_id = node_settings.node_id

),

final as (

    select
        node_id,
        time_window,
        window_start,
        {{ add_seconds('window_start', 'window_seconds') }} as window_end,
        cast(reading_count + rejected_count as integer) as received_count,
        cast(reading_count as integer) as valid_count,
        cast(rejected_count as integer) as rejected_count,
        cast(window_seconds / expected_cadence_s as integer) as expected_count,
        expected_cadence_s,
        {{ round_double('completeness', 6) }} as completeness,
        {{ round_double('validity', 6) }} as validity,
        {{ round_double('case when volume_deviation is not null then greatest(0.0, 1.0 - volume_deviation) end', 6) }}
            as consistency,
        checked_volume_delta_m3 as totaliser_volume_m3,
        integrated_flow_m3 as integrated_flow_volume_m3,
        volume_deviation <= {{ tolerance }} as is_volume_consistent,
        {{ round_double('timeliness', 6) }} as timeliness,
        case when reading_count > 0 then ingestion_lag_sum_s / reading_count end as avg_ingestion_lag_s,
        max_ingestion_lag_s,
        {#- Weighted mean of the scores that apply (consistency needs a totaliser and flow). -#}
        {{ round_double(
            '(' ~ weights.completeness ~ ' * completeness + ' ~ weights.validity ~ ' * validity'
            ~ ' + ' ~ weights.consistency ~ ' * coalesce(greatest(0.0, 1.0 - volume_deviation), 0)'
            ~ ' + ' ~ weights.timeliness ~ ' * coalesce(timeliness, 0))'
            ~ ' / (' ~ (weights.completeness + weights.validity) ~ ' + case when volume_deviation is not null then '
            ~ weights.consistency ~ ' else 0 end + case when timeliness is not null then ' ~ weights.timeliness ~ ' else 0 end)',
            6
        ) }} as overall_score,
        {{ join_reasons([
            "case when reading_count = 0 then 'only_rejected_readings' end",
            "case when reading_count > 0 and volume_deviation is null and (flow_rate_count = 0 or volume_reading_count = 0) then 'consistency_not_measured' end",
            "case when reading_count > 0 and volume_deviation is null and flow_rate_count > 0 and volume_reading_count > 0 then 'no_consecutive_totaliser_readings' end",
            "case when volume_deviation > " ~ tolerance ~ " then 'totaliser_flow_mismatch' end",
            "case when completeness < 1 then 'readings_missing' end",
            "case when rejected_count > 0 then 'readings_rejected' end",
        ]) }} as quality_notes,
        {{ dbt.current_timestamp() }} as computed_at
    from scores

)

select * from final
