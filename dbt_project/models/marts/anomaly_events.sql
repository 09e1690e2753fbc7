{{
    config(
        materialized='table',
        indexes=[
            {'columns': ['event_id'], 'unique': true},
            {'columns': ['subject', 'started_at']},
            {'columns': ['last_seen_at']},
        ] if target.type == 'postgres' else [],
    )
}}
{#- Incidents, not windows (DESIGN.md contract; docs/anomalies.md "Events"): the windows of
    `anomalies` with the same subject (node_id, or 'district:<name>') and condition
    (anomaly_type, measurement_type) that follow each other with no more than a quiet period
    between them form one event. An event whose last window ended a quiet period before the
    data horizon (the network's newest reading) is closed; otherwise it is open.

    The operator's alarm budget is counted in events. An event is a warning (or critical) only
    when its condition persisted long enough to be acted on: node conditions measured per
    window must last var('anomaly_event_min_duration_s') (criticals
    var('anomaly_event_critical_min_duration_s')); a stuck sensor
    var('anomaly_event_stuck_min_duration_s') (a deadband meter holds a value at night), a stuck
    tank or pressure logger var('anomaly_event_stuck_deadband_min_duration_s').
    Until then (or for good, if it stops earlier) the event is info. Conditions that are
    incidents by themselves (gaps, silence, totaliser steps, a night's flow) count at once.

    Rebuilt from `anomalies` on every run (a table of incidents is small): the same anomalies
    give the same events and ids, so re-running changes nothing. event_id = md5(subject |
    anomaly_type | measurement_type | started_at epoch seconds).

    The district balance's leaks and bursts (int_district_balance_events) join as events of their
    own (district_leak, district_burst) with an estimated flow (L/s) and lost volume (m3). -#}
{%- set node_quiet_s = var('anomaly_event_quiet_period_s') -%}
{%- set night_quiet_s = var('anomaly_event_night_quiet_period_s') -%}
{%- set night_s = 3600 * (var('night_flow_end_hour') - var('night_flow_start_hour')) -%}
{%- set min_s = var('anomaly_event_min_duration_s') -%}
{%- set critical_min_s = var('anomaly_event_critical_min_duration_s') -%}
{%- set stuck_min_s = var('anomaly_event_stuck_min_duration_s') -%}
{%- set stuck_deadband_min_s = var('anomaly_event_stuck_deadband_min_duration_s') -%}
{%- set immediate_types = ['data_gap', 'sensor_silent', 'totaliser_reset', 'totaliser_backwards', 'night_flow_high'] -%}
{%- set deadband_node_types = var('anomaly_deadband_node_types') -%}
{%- set double = 'float64' if target.type == 'bigquery' else 'double precision' -%}

with

anomalies as (

    select * from {{ ref('anomalies') }}

),

nodes as (

    select node_id, node_type from {{ ref('stg_raw__node_metadata') }}

),

horizon as (

    select max(last_reading_at) as horizon_at
    from {{ ref('int_metrics_windowed') }}
    where time_window = '1day'

),

windows as (

    select
        anomalies.node_id as subject,
        anomalies.district,
        anomalies.anomaly_type,
        anomalies.measurement_type,
        anomalies.window_start,
        {#- the ML detector scores hourly windows (ml.scoring): an hour, not 5 minutes -#}
        {{ add_seconds('anomalies.window_start',
            "case when anomalies.detection_method = 'night_flow_baseline' then " ~ night_s
            ~ " when anomalies.anomaly_type = 'ml_outlier' then 3600 else 300 end") }}
            as window_end,
        case
            when anomalies.detection_method = 'night_flow_baseline' then {{ night_quiet_s }}
            else {{ node_quiet_s }}
        end as quiet_s,
        case anomalies.severity when 'critical' then 3 when 'warning' then 2 else 1 end as severity_rank,
        anomalies.actual_value,
        anomalies.expected_value,
        anomalies.deviation_percentage,
        nodes.node_type
    from anomalies
    left join nodes
        on anomalies.node_id = nodes.node_id

),

{# A window starts a new event when the condition's previous windows all ended more than a
    quiet period before it. #}
flagged as (

    select
        *,
        case
            when max(window_end) over (
                partition by subject, anomaly_type, measurement_type
                order by window_start
                rows between unbounded preceding and 1 preceding
            ) >= {{ add_seconds('window_start', '-quiet_s') }} then 0
            else 1
        end as starts_event
    from windows

),

numbered as (

    select
        *,
        sum(starts_event) over (
            partition by subject, anomaly_type, measurement_type
            order by window_start
            rows between unbounded preceding and current row
        ) as event_number
    from flagged

),

ranked as (

    select
        *,
        row_number() over (
            partition by subject, anomaly_type, measurement_type, event_number
            order by severity_rank desc, abs(coalesce(deviation_percentage, 0)) desc, window_start
        ) as peak_rank
    from numbered

),

grouped as (

    select
        subject,
        anomaly_type,
        measurement_type,
        event_number,
        min(district) as district,
        min(node_type) as node_type,
        min(window_start) as started_at,
        max(window_end) as last_seen_at,
        max(quiet_s) as quiet_s,
        count(*) as window_count,
        max(severity_rank) as peak_severity_rank,
        min(case when severity_rank >= 2 then window_end end) as first_warning_at,
        min(case when severity_rank >= 3 then window_end end) as first_critical_at,
        {{ median('actual_value') }} as typical_actual_value,
        {{ median('expected_value') }} as typical_expected_value
    from ranked
    group by 1, 2, 3, 4

),

peaks as (

    select
        subject,
        anomaly_type,
        measurement_type,
        event_number,
        actual_value as peak_actual_value,
        expected_value as peak_expected_value,
        deviation_percentage as peak_deviation_percentage
    from ranked
    where peak_rank = 1

),

{# How long the condition must last before the event alarms (null: never). #}
persistence as (

    select
        *,
        {{ seconds_between('started_at', 'last_seen_at') }} as duration_s,
        case
            when anomaly_type in ('{{ immediate_types | join("', '") }}') then 0  -- noqa: LT05
            when anomaly_type = 'stuck_sensor'
                and node_type in ('{{ deadband_node_types | join("', '") }}') then {{ stuck_deadband_min_s }}  -- noqa: LT05
            when anomaly_type = 'stuck_sensor' then {{ stuck_min_s }}
            else {{ min_s }}
        end as warning_after_s
    from grouped

),

{%- set event_key = "concat(persistence.subject, '|', persistence.anomaly_type, '|', "
    ~ "coalesce(persistence.measurement_type, ''), '|', cast("
    ~ epoch_seconds('persistence.started_at') ~ " as " ~ dbt.type_string() ~ "))" %}

final as (

    select
        {{ md5_hex(event_key) }} as event_id,  -- noqa: LT05
        persistence.subject,
        persistence.district,
        persistence.anomaly_type,
        persistence.measurement_type,
        case
            when persistence.peak_severity_rank = 3
                and (persistence.warning_after_s = 0 or persistence.duration_s >= {{ critical_min_s }})
                then 'critical'
            when persistence.peak_severity_rank >= 2
                and persistence.duration_s >= persistence.warning_after_s
                then 'warning'
            else 'info'
        end as severity,
        persistence.started_at,
        persistence.last_seen_at,
        case
            when horizon.horizon_at >= {{ add_seconds('persistence.last_seen_at', 'persistence.quiet_s') }}
                then persistence.last_seen_at
        end as ended_at,
        case
            when horizon.horizon_at >= {{ add_seconds('persistence.last_seen_at', 'persistence.quiet_s') }}
                then 'closed'
            else 'open'
        end as status,
        {#- When the event first met its severity's conditions (null for info). -#}
        case
            when persistence.peak_severity_rank >= 2
                and persistence.duration_s >= persistence.warning_after_s
                then greatest(
                    persistence.first_warning_at,
                    {{ add_seconds('persistence.started_at', 'persistence.warning_after_s') }}
                )
        end as alerted_at,
        cast(persistence.window_count as integer) as window_count,
        persistence.duration_s,
        peaks.peak_actual_value,
        peaks.peak_expected_value,
        peaks.peak_deviation_percentage,
        persistence.typical_actual_value,
        persistence.typical_expected_value,
        cast(null as {{ double }}) as estimated_flow_lps,
        cast(null as {{ double }}) as lost_volume_m3
    from persistence
    inner join peaks
        on persistence.subject = peaks.subject
        and persistence.anomaly_type = peaks.anomaly_type
        and coalesce(persistence.measurement_type, '') = coalesce(peaks.measurement_type, '')
        and persistence.event_number = peaks.event_number
    cross join horizon

),

{# Leaks and bursts of the district water balance, already grouped into incidents. #}
balance_events as (

    select
        {{ md5_hex("concat(subject, '|', anomaly_type, '|', measurement_type, '|', cast("
            ~ epoch_seconds('started_at') ~ " as " ~ dbt.type_string() ~ "))") }} as event_id,
        subject,
        district,
        anomaly_type,
        measurement_type,
        severity,
        started_at,
        last_seen_at,
        ended_at,
        status,
        alerted_at,
        window_count,
        duration_s,
        peak_actual_value,
        peak_expected_value,
        peak_deviation_percentage,
        typical_actual_value,
        typical_expected_value,
        estimated_flow_lps,
        lost_volume_m3
    from {{ ref('int_district_balance_events') }}

)

select * from final
union all
select * from balance_events
