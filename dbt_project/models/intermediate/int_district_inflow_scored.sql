{{
    config(
        materialized='table',
        indexes=[
            {'columns': ['district', 'window_start'], 'unique': true},
        ] if target.type == 'postgres' else [],
    )
}}
{#- The district's 5-minute unexplained inflow against its expected profile, for bursts
    (docs/anomalies.md "Bursts"): residual = sum(inlet flow) - sum(outlet flow) - sum(metered
    consumption), in L/s.

    Readings are snapped to their meter's own cadence (each reading to the nearest multiple of
    its expected cadence, so +-2 s of timestamp jitter neither empties nor doubles a window; a
    meter slower than 5 minutes gives its value to every 5-minute window of its slot). A window
    is complete when every inlet, outlet and consumption meter of the district has a value.

    Expected value and spread: median and 1.4826 x MAD of the complete residuals of the previous
    var('burst_baseline_days') days of the same day type (weekday; weekend or public holiday) within
    +-var('burst_baseline_slot_margin') windows of the same local time of day. Deviation z_k = mean
    excess over the last k windows / mean spread; a window is a burst candidate when z_k reaches
    the var('burst_thresholds') for some k (15 minutes to 2 hours: a large burst is found at
    once, a small one once it lasted). Only the last var('burst_history_days') days are read. -#}
{%- set baseline_days = var('burst_baseline_days') -%}
{%- set margin = var('burst_baseline_slot_margin') -%}
{%- set thresholds = var('burst_thresholds') -%}

with

readings as (

    select node_id, reading_at, flow_rate
    from {{ ref('int_readings_deduplicated') }}
    where flow_rate is not null

),

meters as (

    select
        node_id,
        district,
        balance_role,
        coalesce(expected_cadence_s, {{ var('default_expected_cadence_s') }}) as cadence_s,
        greatest(coalesce(expected_cadence_s, {{ var('default_expected_cadence_s') }}), 300) as slot_s
    from {{ ref('stg_raw__node_metadata') }}
    where balance_role in ('inlet', 'outlet', 'consumption')

),

holidays as (

    -- depends_on: {{ ref('italian_public_holidays') }}
    {{ public_holidays() }}

),

horizon as (

    select {{ epoch_seconds('max(reading_at)') }} - 86400 * {{ var('burst_history_days') }} as first_epoch
    from readings

),

meter_slots as (

    select
        meters.node_id,
        meters.district,
        meters.balance_role,
        cast(
            meters.slot_s * floor(({{ epoch_seconds('readings.reading_at') }} + meters.cadence_s / 2.0) / meters.slot_s)
            as bigint
        ) as slot_epoch,
        avg(readings.flow_rate) as flow_lps
    from readings
    inner join meters
        on readings.node_id = meters.node_id
    where {{ epoch_seconds('readings.reading_at') }} >= (select horizon.first_epoch from horizon)
    group by 1, 2, 3, 4

),

district_windows as (

    select distinct meter_slots.district, meter_slots.slot_epoch as window_epoch
    from meter_slots
    where meter_slots.balance_role = 'inlet'

),

window_meters as (

    select
        district_windows.district,
        district_windows.window_epoch,
        meters.balance_role,
        meter_slots.flow_lps
    from district_windows
    inner join meters
        on district_windows.district = meters.district
    left join meter_slots
        on meters.node_id = meter_slots.node_id
        and meter_slots.slot_epoch = cast(
            meters.slot_s * floor((district_windows.window_epoch + meters.cadence_s / 2.0) / meters.slot_s)
            as bigint
        )

),

residuals as (

    select
        district,
        window_epoch,
        sum(case when balance_role = 'inlet' then flow_lps end) as inlet_flow_lps,
        sum(case when balance_role = 'outlet' then flow_lps else 0 end) as outlet_flow_lps,
        sum(case when balance_role = 'consumption' then flow_lps else 0 end) as metered_flow_lps,
        count(flow_lps) = count(*) as is_complete
    from window_meters
    group by 1, 2

),

located as (

    select
        residuals.district,
        residuals.window_epoch,
        {{ add_seconds(utc_timestamp('1970-01-01 00:00:00+00'), 'residuals.window_epoch') }} as window_start,
        residuals.inlet_flow_lps,
        residuals.outlet_flow_lps,
        residuals.metered_flow_lps,
        residuals.inlet_flow_lps - residuals.outlet_flow_lps - residuals.metered_flow_lps as residual_lps,
        residuals.is_complete
    from residuals

),

typed as (

    select
        located.*,
        cast({{ local_timestamp('located.window_start') }} as date) as local_date,
        cast(extract(hour from {{ local_timestamp('located.window_start') }}) as integer) * 12
        + {{ floor_divide('extract(minute from ' ~ local_timestamp('located.window_start') ~ ')', 5) }}
            as slot_of_day,
        {{ iso_day_of_week(local_timestamp('located.window_start')) }} >= 6
        or holidays.holiday_date is not null as is_weekend
    from located
    left join holidays
        on cast({{ local_timestamp('located.window_start') }} as date) = holidays.holiday_date

),

complete_windows as (

    select * from typed
    where is_complete

),

{# Each past window serves the slots within the margin of its own: an equality join on the
    slot (a hash join on every engine) instead of a range join. #}
slot_offsets as (

    {% for offset in range(-margin, margin + 1) %}
    select {{ offset }} as slot_offset
    {% if not loop.last %}union all{% endif %}
    {% endfor %}

),

history as (

    select
        complete_windows.district,
        complete_windows.local_date,
        complete_windows.is_weekend,
        complete_windows.residual_lps,
        complete_windows.slot_of_day + slot_offsets.slot_offset as serves_slot
    from complete_windows
    cross join slot_offsets

),

baseline_samples as (

    select
        complete_windows.district,
        complete_windows.window_epoch,
        history.residual_lps
    from complete_windows
    inner join history
        on complete_windows.district = history.district
        and complete_windows.is_weekend = history.is_weekend
        and complete_windows.slot_of_day = history.serves_slot
        and complete_windows.local_date > history.local_date
        and {{ add_days('complete_windows.local_date', -baseline_days) }} <= history.local_date

),

baseline_medians as (

    select
        district,
        window_epoch,
        count(*) as baseline_samples,
        {{ median('residual_lps') }} as expected_lps
    from baseline_samples
    group by 1, 2

),

baselines as (

    select
        baseline_medians.district,
        baseline_medians.window_epoch,
        baseline_medians.baseline_samples,
        baseline_medians.expected_lps,
        greatest(
            1.4826 * {{ median('abs(baseline_samples.residual_lps - baseline_medians.expected_lps)') }},
            {{ var('anomaly_flow_sigma_floor_lps') }}
        ) as spread_lps
    from baseline_medians
    inner join baseline_samples
        on baseline_medians.district = baseline_samples.district
        and baseline_medians.window_epoch = baseline_samples.window_epoch
    group by 1, 2, 3, 4

),

scored as (

    select
        complete_windows.district,
        complete_windows.window_epoch,
        complete_windows.window_start,
        complete_windows.is_weekend,
        complete_windows.inlet_flow_lps,
        complete_windows.outlet_flow_lps,
        complete_windows.metered_flow_lps,
        complete_windows.residual_lps,
        baselines.expected_lps,
        baselines.spread_lps,
        cast(baselines.baseline_samples as integer) as baseline_samples,
        complete_windows.residual_lps - baselines.expected_lps as excess_lps
    from complete_windows
    inner join baselines
        on complete_windows.district = baselines.district
        and complete_windows.window_epoch = baselines.window_epoch
    where baselines.baseline_samples >= {{ var('burst_baseline_min_samples') }}

),

{# z over the last k windows, only where those k windows are consecutive (no gap). #}
windowed as (

    select
        scored.*,
        {% for k in thresholds %}
        case
            when lag(window_epoch, {{ k - 1 }}) over district_time = window_epoch - {{ 300 * (k - 1) }}
                then avg(excess_lps) over (district_time rows between {{ k - 1 }} preceding and current row)
                / avg(spread_lps) over (district_time rows between {{ k - 1 }} preceding and current row)
        end as z_{{ k }}{{ ',' if not loop.last }}
        {% endfor %}
    from scored
    window district_time as (partition by district order by window_epoch)

),

final as (

    select
        district,
        window_start,
        {{ add_seconds('window_start', 300) }} as window_end,
        is_weekend,
        inlet_flow_lps,
        outlet_flow_lps,
        metered_flow_lps,
        residual_lps,
        expected_lps,
        spread_lps,
        baseline_samples,
        excess_lps,
        {% for k in thresholds %}
        z_{{ k }} as z_{{ 5 * k }}min,
        {% endfor %}
        coalesce(
            {% for k, z in thresholds.items() %}
            z_{{ k }} >= {{ z }}{{ ' or' if not loop.last }}
            {% endfor %}, false
        ) as is_burst_candidate
    from windowed

)

select * from final
