{{
    config(materialized='table')
}}
{#- Leak and burst incidents of the district water balance, in the shape of anomaly_events
    (which publishes them with the node events; docs/anomalies.md "Leaks from the balance",
    "Bursts").

    district_leak: one event per leak of int_district_leaks_tracked: started_at = the start of
    its onset night (the CUSUM run's first night: "since when"), alerted_at = the end of the
    night it was raised on, last_seen_at = the end of its last open night; open until the
    tracker closes it (repair). Estimated flow = median excess of its nights over the frozen
    reference (L/s); lost volume = the sum of those excesses over whole days (m3). Critical when
    the estimated flow is >= var('leak_critical_ratio') of the reference night loss.

    district_burst: consecutive burst-candidate windows of int_district_inflow_scored (no more
    than var('anomaly_event_quiet_period_s') apart); a warning once it lasted
    var('burst_min_duration_s'), critical when its peak excess is >= var('burst_critical_ratio')
    of the expected inflow. Estimated flow = median excess; lost volume = excess x 5 min. -#}
{%- set quiet_s = var('anomaly_event_quiet_period_s') -%}
{%- set min_s = var('burst_min_duration_s') -%}
{%- set start_hour = var('night_flow_start_hour') -%}

with

nights as (

    select * from {{ ref('int_district_leaks_tracked') }}

),

bursts as (

    select * from {{ ref('int_district_inflow_scored') }}
    where is_burst_candidate

),

horizon as (

    select max(last_reading_at) as horizon_at
    from {{ ref('int_metrics_windowed') }}
    where time_window = '1day'

),

latest_nights as (

    select district, max(night_date) as last_night
    from nights
    group by district

),

leak_nights as (

    select
        nights.*,
        case when nights.is_weekend then nights.ref_weekend_baseline_lps else nights.ref_weekday_baseline_lps end
            as reference_lps,
        nights.night_date = latest_nights.last_night as is_latest
    from nights
    inner join latest_nights
        on nights.district = latest_nights.district
    where nights.is_open

),

leaks as (

    select
        district,
        leak_number,
        min(onset_date) as onset_date,
        min(alarm_date) as alarm_date,
        max(night_end_at) as last_seen_at,
        max(case when is_latest then 1 else 0 end) = 1 as is_open_now,
        count(night_loss_lps) as night_count,
        max(night_loss_lps) as peak_loss_lps,
        {{ median('night_loss_lps') }} as typical_loss_lps,
        {{ median('reference_lps') }} as typical_reference_lps,
        {{ median('excess_lps') }} as estimated_flow_lps,
        sum(excess_lps) * 86.4 as lost_volume_m3
    from leak_nights
    group by 1, 2

),

leak_peaks as (

    select
        district,
        leak_number,
        night_loss_lps,
        reference_lps,
        row_number() over (
            partition by district, leak_number order by night_loss_lps desc, night_date asc
        ) as peak_rank
    from leak_nights
    where night_loss_lps is not null

),

leak_events as (

    select
        concat('district:', leaks.district) as subject,
        leaks.district,
        'district_leak' as anomaly_type,
        'flow_rate' as measurement_type,
        case
            when leaks.estimated_flow_lps >= {{ var('leak_critical_ratio') }} * leaks.typical_reference_lps
                then 'critical'
            else 'warning'
        end as severity,
        {{ utc_from_local_date('leaks.onset_date', start_hour) }} as started_at,
        leaks.last_seen_at,
        not leaks.is_open_now as is_closed,
        {{ utc_from_local_date('leaks.alarm_date', var('night_flow_end_hour')) }} as alerted_at,
        leaks.night_count as window_count,
        leak_peaks.night_loss_lps as peak_actual_value,
        leak_peaks.reference_lps as peak_expected_value,
        leaks.typical_loss_lps as typical_actual_value,
        leaks.typical_reference_lps as typical_expected_value,
        leaks.estimated_flow_lps,
        leaks.lost_volume_m3
    from leaks
    left join leak_peaks
        on leaks.district = leak_peaks.district
        and leaks.leak_number = leak_peaks.leak_number
        and leak_peaks.peak_rank = 1

),

burst_flagged as (

    select
        bursts.*,
        case
            when max(window_end) over (
                partition by district order by window_start
                rows between unbounded preceding and 1 preceding
            ) >= {{ add_seconds('window_start', -quiet_s) }} then 0
            else 1
        end as starts_event
    from bursts

),

burst_numbered as (

    select
        *,
        sum(starts_event) over (
            partition by district order by window_start
            rows between unbounded preceding and current row
        ) as event_number,
        row_number() over (partition by district order by window_start) as candidate_seq
    from burst_flagged

),

burst_groups as (

    select
        district,
        event_number,
        min(window_start) as started_at,
        max(window_end) as last_seen_at,
        min(window_end) as first_window_end,
        count(*) as window_count,
        max(excess_lps / nullif(expected_lps, 0)) as peak_excess_ratio,
        {{ median('residual_lps') }} as typical_actual_value,
        {{ median('expected_lps') }} as typical_expected_value,
        {{ median('excess_lps') }} as estimated_flow_lps,
        sum(excess_lps) * 0.3 as lost_volume_m3
    from burst_numbered
    group by 1, 2

),

burst_peaks as (

    select
        district,
        event_number,
        residual_lps,
        expected_lps,
        row_number() over (partition by district, event_number order by excess_lps desc, window_start asc) as peak_rank
    from burst_numbered

),

burst_events as (

    select
        concat('district:', burst_groups.district) as subject,
        burst_groups.district,
        'district_burst' as anomaly_type,
        'flow_rate' as measurement_type,
        case
            when {{ seconds_between('burst_groups.started_at', 'burst_groups.last_seen_at') }} < {{ min_s }}
                then 'info'
            when burst_groups.peak_excess_ratio >= {{ var('burst_critical_ratio') }} then 'critical'
            else 'warning'
        end as severity,
        burst_groups.started_at,
        burst_groups.last_seen_at,
        horizon.horizon_at >= {{ add_seconds('burst_groups.last_seen_at', quiet_s) }} as is_closed,
        case
            when {{ seconds_between('burst_groups.started_at', 'burst_groups.last_seen_at') }} >= {{ min_s }}
                then greatest(burst_groups.first_window_end, {{ add_seconds('burst_groups.started_at', min_s) }})
        end as alerted_at,
        burst_groups.window_count,
        burst_peaks.residual_lps as peak_actual_value,
        burst_peaks.expected_lps as peak_expected_value,
        burst_groups.typical_actual_value,
        burst_groups.typical_expected_value,
        burst_groups.estimated_flow_lps,
        burst_groups.lost_volume_m3
    from burst_groups
    inner join burst_peaks
        on burst_groups.district = burst_peaks.district
        and burst_groups.event_number = burst_peaks.event_number
        and burst_peaks.peak_rank = 1
    cross join horizon

),

all_events as (

    select * from leak_events
    union all
    select * from burst_events

),

final as (

    select
        subject,
        district,
        anomaly_type,
        measurement_type,
        severity,
        started_at,
        last_seen_at,
        case when is_closed then last_seen_at end as ended_at,
        case when is_closed then 'closed' else 'open' end as status,
        alerted_at,
        cast(window_count as integer) as window_count,
        {{ seconds_between('started_at', 'last_seen_at') }} as duration_s,
        peak_actual_value,
        peak_expected_value,
        100.0 * (peak_actual_value - peak_expected_value) / nullif(abs(peak_expected_value), 0)
            as peak_deviation_percentage,
        typical_actual_value,
        typical_expected_value,
        estimated_flow_lps,
        lost_volume_m3
    from all_events

)

select * from final
