{{
    config(
        materialized='table',
        indexes=[
            {'columns': ['district', 'night_date'], 'unique': true},
        ] if target.type == 'postgres' else [],
    )
}}
{#- Night loss per district and local night (IWA night-flow analysis, docs/anomalies.md
    "Leaks from the balance"): at night demand is lowest, so what enters a district and is not
    metered is mostly leakage.

    Per balance meter, the median of its 5-minute mean flows in the night window
    [night_flow_start_hour, night_flow_end_hour) local time (a median: one spiked reading or a
    5-minute window left empty by timestamp jitter does not move it). Night inflow = sum of the
    inlet medians - sum of the outlet medians; metered night use = sum of the consumption meter
    medians; night loss = inflow - metered night use (unmetered legitimate night use stays in it
    and is part of the baseline). A night is complete when every inlet, outlet and consumption
    meter of the district has var('night_loss_min_windows') windows; otherwise its loss is null.

    Baselines, per night and for both day types (weekday; weekend = Saturday, Sunday or a public
    holiday from the seed italian_public_holidays): median and MAD of the complete nights of that
    day type in the previous var('night_flow_baseline_days') days, at least
    var('night_flow_min_baseline_nights'). The leak tracker freezes these at a leak's onset.
    A table (one row per district-night, small): rebuilt on every run. -#}
{%- set days = var('night_flow_baseline_days') -%}
{%- set start_hour = var('night_flow_start_hour') -%}
{%- set end_hour = var('night_flow_end_hour') -%}

with

windows as (

    select node_id, window_start, avg_flow_rate
    from {{ ref('int_metrics_windowed') }}
    where time_window = '5min' and avg_flow_rate is not null

),

meters as (

    select node_id, district, balance_role
    from {{ ref('stg_raw__node_metadata') }}
    where balance_role in ('inlet', 'outlet', 'consumption')

),

holidays as (

    -- depends_on: {{ ref('italian_public_holidays') }}
    {{ public_holidays() }}

),

district_meters as (

    select
        district,
        count(*) as balance_meters,
        count(case when balance_role = 'consumption' then 1 end) as consumption_meters
    from meters
    group by district
    having count(case when balance_role = 'inlet' then 1 end) > 0

),

night_windows as (

    select
        windows.node_id,
        windows.avg_flow_rate,
        meters.district,
        meters.balance_role,
        cast({{ local_timestamp('windows.window_start') }} as date) as night_date
    from windows
    inner join meters
        on windows.node_id = meters.node_id
    where
        extract(hour from {{ local_timestamp('windows.window_start') }}) >= {{ start_hour }}
        and extract(hour from {{ local_timestamp('windows.window_start') }}) < {{ end_hour }}

),

meter_nights as (

    select
        district,
        night_date,
        node_id,
        balance_role,
        count(*) as window_count,
        {{ median('avg_flow_rate') }} as median_flow_lps
    from night_windows
    group by 1, 2, 3, 4

),

district_nights as (

    select
        meter_nights.district,
        meter_nights.night_date,
        district_meters.balance_meters,
        district_meters.consumption_meters,
        count(
            case when meter_nights.window_count >= {{ var('night_loss_min_windows') }} then 1 end
        ) as meters_complete,
        sum(case when meter_nights.balance_role = 'inlet' then meter_nights.median_flow_lps else 0 end)
        - sum(case when meter_nights.balance_role = 'outlet' then meter_nights.median_flow_lps else 0 end)
            as night_inflow_lps,
        sum(case when meter_nights.balance_role = 'consumption' then meter_nights.median_flow_lps else 0 end)
            as metered_night_use_lps
    from meter_nights
    inner join district_meters
        on meter_nights.district = district_meters.district
    group by 1, 2, 3, 4

),

nights as (

    select
        district_nights.district,
        district_nights.night_date,
        holidays.holiday_date is not null as is_holiday,
        {{ iso_day_of_week('district_nights.night_date') }} >= 6 or holidays.holiday_date is not null
            as is_weekend,
        cast(district_nights.balance_meters as integer) as balance_meters,
        cast(district_nights.meters_complete as integer) as meters_complete,
        case
            when district_nights.meters_complete = district_nights.balance_meters
                then district_nights.night_inflow_lps
        end as night_inflow_lps,
        case
            when district_nights.meters_complete = district_nights.balance_meters
                then district_nights.metered_night_use_lps
        end as metered_night_use_lps,
        case
            when district_nights.meters_complete = district_nights.balance_meters
                then district_nights.night_inflow_lps - district_nights.metered_night_use_lps
        end as night_loss_lps
    from district_nights
    left join holidays
        on district_nights.night_date = holidays.holiday_date

),

baseline_samples as (

    select
        nights.district,
        nights.night_date,
        history.is_weekend as sample_is_weekend,
        history.night_loss_lps
    from nights
    inner join nights as history
        on nights.district = history.district
        and nights.night_date > history.night_date
        and {{ add_days('nights.night_date', -days) }} <= history.night_date
        and history.night_loss_lps is not null

),

baseline_medians as (

    select
        district,
        night_date,
        sample_is_weekend,
        count(*) as baseline_nights,
        {{ median('night_loss_lps') }} as baseline_median_lps
    from baseline_samples
    group by 1, 2, 3

),

baselines as (

    select
        baseline_medians.district,
        baseline_medians.night_date,
        baseline_medians.sample_is_weekend,
        baseline_medians.baseline_nights,
        baseline_medians.baseline_median_lps,
        {{ median('abs(baseline_samples.night_loss_lps - baseline_medians.baseline_median_lps)') }}
            as baseline_mad_lps
    from baseline_medians
    inner join baseline_samples
        on baseline_medians.district = baseline_samples.district
        and baseline_medians.night_date = baseline_samples.night_date
        and baseline_medians.sample_is_weekend = baseline_samples.sample_is_weekend
    group by 1, 2, 3, 4, 5

),

{# sigma = max(1.4826 x MAD, a share of the median, an absolute floor): a few quiet nights
    must not make a tiny MAD the yardstick. #}
{%- set sigma -%}
    greatest(
        1.4826 * coalesce({0}.baseline_mad_lps, 0),
        {{ var('night_loss_sigma_floor_ratio') }} * abs({0}.baseline_median_lps),
        {{ var('anomaly_flow_sigma_floor_lps') }}
    )
{%- endset %}

final as (

    select
        nights.*,
        {{ utc_from_local_date('nights.night_date', start_hour) }} as night_start_at,
        {{ utc_from_local_date('nights.night_date', end_hour) }} as night_end_at,
        cast(coalesce(weekday_baseline.baseline_nights, 0) as integer) as weekday_baseline_nights,
        weekday_baseline.baseline_median_lps as weekday_baseline_lps,
        {{ sigma.replace('{0}', 'weekday_baseline') }} as weekday_sigma_lps,
        cast(coalesce(weekend_baseline.baseline_nights, 0) as integer) as weekend_baseline_nights,
        weekend_baseline.baseline_median_lps as weekend_baseline_lps,
        {{ sigma.replace('{0}', 'weekend_baseline') }} as weekend_sigma_lps
    from nights
    left join baselines as weekday_baseline
        on nights.district = weekday_baseline.district
        and nights.night_date = weekday_baseline.night_date
        and not weekday_baseline.sample_is_weekend
    left join baselines as weekend_baseline
        on nights.district = weekend_baseline.district
        and nights.night_date = weekend_baseline.night_date
        and weekend_baseline.sample_is_weekend

)

select * from final
