{{
    config(
        unique_key=['district', 'night_date'],
        incremental_strategy='merge',
        pre_hook=["{{ refresh_statistics(ref('int_metrics_windowed')) }}"],
        post_hook=["{{ refresh_statistics(this) }}"],
        indexes=[
            {'columns': ['district', 'night_date'], 'unique': true},
            {'columns': ['scored_at']},
        ] if target.type == 'postgres' else [],
    )
}}
{#- Minimum night flow (MNF) of each district per local night, against its trailing
    baseline: the standard leak indicator (demand is lowest at night, so a rise is mostly
    leakage).

    MNF = mean over the night window [night_flow_start_hour, night_flow_end_hour) local time
    of the district's 5-minute net inflow, sum(inlet mean flow) - sum(outlet mean flow), using
    only the 5-minute windows in which every inlet and outlet meter of the district reported
    flow. Valid with at least var('night_flow_min_windows') such windows (the spring-forward
    night is one hour long, the fall-back night three). Baseline: median and MAD of the valid
    MNFs of the nights of the same day type (weekday: Monday-Friday, weekend: Saturday and
    Sunday, whose demand differs) in the previous var('night_flow_baseline_days') days.

    Incremental: nights touched by new inlet/outlet windows are recomputed, and the nights
    after them (whose baselines include them) are re-scored. -#}
{%- set days = var('night_flow_baseline_days') -%}
{%- set start_hour = var('night_flow_start_hour') -%}
{%- set end_hour = var('night_flow_end_hour') -%}

with

windows as (

    select node_id, window_start, avg_flow_rate, computed_at
    from {{ ref('int_metrics_windowed') }}
    where time_window = '5min'

),

balance_meters as (

    select node_id, district, balance_role
    from {{ ref('stg_raw__node_metadata') }}
    where balance_role in ('inlet', 'outlet')

),

district_meters as (

    select
        district,
        count(case when balance_role = 'inlet' then 1 end) as inlet_meters,
        count(case when balance_role = 'outlet' then 1 end) as outlet_meters
    from balance_meters
    group by district
    having count(case when balance_role = 'inlet' then 1 end) > 0

),

{% if is_incremental() %}

watermark as (

    {{ last_run_watermark('scored_at') }}

),

touched_nights as (

    select distinct
        balance_meters.district,
        cast({{ local_timestamp('windows.window_start') }} as date) as night_date
    from windows
    inner join balance_meters
        on windows.node_id = balance_meters.node_id
    cross join watermark
    where
        {{ is_after_watermark('windows.computed_at') }}
        and extract(hour from {{ local_timestamp('windows.window_start') }}) >= {{ start_hour }}
        and extract(hour from {{ local_timestamp('windows.window_start') }}) < {{ end_hour }}

),

touched_ranges as (

    select
        district,
        {{ utc_from_local_date('min(night_date)') }} as range_start,
        {{ utc_from_local_date(add_days('max(night_date)', 1)) }} as range_end
    from touched_nights
    group by district

),

night_windows as (

    select
        windows.window_start,
        windows.avg_flow_rate,
        balance_meters.district,
        balance_meters.balance_role,
        cast({{ local_timestamp('windows.window_start') }} as date) as night_date
    from windows
    inner join balance_meters
        on windows.node_id = balance_meters.node_id
    inner join touched_ranges
        on balance_meters.district = touched_ranges.district
        and windows.window_start >= touched_ranges.range_start
        and windows.window_start < touched_ranges.range_end
    where
        windows.window_start >= (select min(touched_ranges.range_start) from touched_ranges)
        and extract(hour from {{ local_timestamp('windows.window_start') }}) >= {{ start_hour }}
        and extract(hour from {{ local_timestamp('windows.window_start') }}) < {{ end_hour }}

),

{% else %}

night_windows as (

    select
        windows.window_start,
        windows.avg_flow_rate,
        balance_meters.district,
        balance_meters.balance_role,
        cast({{ local_timestamp('windows.window_start') }} as date) as night_date
    from windows
    inner join balance_meters
        on windows.node_id = balance_meters.node_id
    where
        extract(hour from {{ local_timestamp('windows.window_start') }}) >= {{ start_hour }}
        and extract(hour from {{ local_timestamp('windows.window_start') }}) < {{ end_hour }}

),

{% endif %}

district_windows as (

    select
        district,
        night_date,
        window_start,
        sum(case when balance_role = 'inlet' then avg_flow_rate end) as inlet_flow_lps,
        count(case when balance_role = 'inlet' and avg_flow_rate is not null then 1 end) as inlets_reporting,
        sum(case when balance_role = 'outlet' then avg_flow_rate end) as outlet_flow_lps,
        count(case when balance_role = 'outlet' and avg_flow_rate is not null then 1 end) as outlets_reporting
    from night_windows
    group by 1, 2, 3

),

computed_nights as (

    select
        district_windows.district,
        district_windows.night_date,
        district_meters.inlet_meters,
        district_meters.outlet_meters,
        count(*) as window_count,
        count(
            case
                when district_windows.inlets_reporting = district_meters.inlet_meters
                    and district_windows.outlets_reporting = district_meters.outlet_meters
                    then 1
            end
        ) as complete_window_count,
        avg(
            case
                when district_windows.inlets_reporting = district_meters.inlet_meters
                    and district_windows.outlets_reporting = district_meters.outlet_meters
                    then district_windows.inlet_flow_lps - coalesce(district_windows.outlet_flow_lps, 0)
            end
        ) as mean_complete_flow_lps
    from district_windows
    inner join district_meters
        on district_windows.district = district_meters.district
    {% if is_incremental() %}
    inner join touched_nights
        on district_windows.district = touched_nights.district
        and district_windows.night_date = touched_nights.night_date
    {% endif %}
    group by 1, 2, 3, 4

),

recomputed as (

    select
        district,
        night_date,
        cast(inlet_meters as integer) as inlet_meters,
        cast(outlet_meters as integer) as outlet_meters,
        cast(window_count as integer) as window_count,
        cast(complete_window_count as integer) as complete_window_count,
        case
            when complete_window_count >= {{ var('night_flow_min_windows') }} then mean_complete_flow_lps
        end as min_night_flow_lps
    from computed_nights

),

{% if is_incremental() %}

all_nights as (

    {#- Stored nights near the touched ones supply the baselines and get re-scored. -#}
    select * from recomputed

    union all

    select
        stored.district,
        stored.night_date,
        stored.inlet_meters,
        stored.outlet_meters,
        stored.window_count,
        stored.complete_window_count,
        stored.min_night_flow_lps
    from {{ this }} as stored
    inner join (
        select district, min(night_date) as first_night, max(night_date) as last_night
        from recomputed
        group by district
    ) as touched_span
        on stored.district = touched_span.district
        and stored.night_date >= {{ add_days('touched_span.first_night', -days) }}
        and stored.night_date <= {{ add_days('touched_span.last_night', days) }}
    left join recomputed
        on stored.district = recomputed.district
        and stored.night_date = recomputed.night_date
    where recomputed.district is null

),

nights_to_score as (

    select all_nights.*
    from all_nights
    inner join (
        select district, min(night_date) as first_night
        from recomputed
        group by district
    ) as touched_start
        on all_nights.district = touched_start.district
        and all_nights.night_date >= touched_start.first_night

),

{% else %}

all_nights as (

    select * from recomputed

),

nights_to_score as (

    select * from recomputed

),

{% endif %}

baseline_samples as (

    select
        nights_to_score.district,
        nights_to_score.night_date,
        history.min_night_flow_lps
    from nights_to_score
    inner join all_nights as history
        on nights_to_score.district = history.district
        and nights_to_score.night_date > history.night_date
        and history.night_date >= {{ add_days('nights_to_score.night_date', -days) }}
        and ({{ iso_day_of_week('history.night_date') }} >= 6)
        = ({{ iso_day_of_week('nights_to_score.night_date') }} >= 6)
        and history.min_night_flow_lps is not null

),

baseline_medians as (

    select
        district,
        night_date,
        count(*) as baseline_nights,
        {{ median('min_night_flow_lps') }} as baseline_median_lps
    from baseline_samples
    group by 1, 2

),

baseline_mads as (

    select
        baseline_samples.district,
        baseline_samples.night_date,
        {{ median('abs(baseline_samples.min_night_flow_lps - baseline_medians.baseline_median_lps)') }}
            as baseline_mad_lps
    from baseline_samples
    inner join baseline_medians
        on baseline_samples.district = baseline_medians.district
        and baseline_samples.night_date = baseline_medians.night_date
    group by 1, 2

),

scored as (

    select
        nights_to_score.*,
        cast(coalesce(baseline_medians.baseline_nights, 0) as integer) as baseline_nights,
        baseline_medians.baseline_median_lps,
        baseline_mads.baseline_mad_lps,
        {#- The rise must beat the noise (robust sigma) and be material (share of baseline). -#}
        baseline_medians.baseline_median_lps + greatest(
            {{ var('night_flow_zscore') }} * 1.4826 * coalesce(baseline_mads.baseline_mad_lps, 0),
            {{ var('night_flow_min_rise_ratio') }} * abs(baseline_medians.baseline_median_lps),
            {{ var('anomaly_flow_sigma_floor_lps') }}
        ) as threshold_lps
    from nights_to_score
    left join baseline_medians
        on nights_to_score.district = baseline_medians.district
        and nights_to_score.night_date = baseline_medians.night_date
    left join baseline_mads
        on nights_to_score.district = baseline_mads.district
        and nights_to_score.night_date = baseline_mads.night_date

),

final as (

    select
        district,
        night_date,
        {{ iso_day_of_week('night_date') }} >= 6 as is_weekend,
        {{ utc_from_local_date('night_date', start_hour) }} as night_start_at,
        {{ utc_from_local_date('night_date', end_hour) }} as night_end_at,
        inlet_meters,
        outlet_meters,
        window_count,
        complete_window_count,
        min_night_flow_lps,
        baseline_nights,
        baseline_median_lps,
        baseline_mad_lps,
        case when baseline_nights >= {{ var('night_flow_min_baseline_nights') }} then threshold_lps end
            as threshold_lps,
        case
            when baseline_median_lps > 0
                then 100.0 * (min_night_flow_lps - baseline_median_lps) / baseline_median_lps
        end as change_percent,
        coalesce(
            baseline_nights >= {{ var('night_flow_min_baseline_nights') }}
            and min_night_flow_lps > threshold_lps,
            false
        ) as is_elevated,
        case
            when min_night_flow_lps is null then 'incomplete_night'
            when baseline_nights < {{ var('night_flow_min_baseline_nights') }} then 'insufficient_history'
            else 'ok'
        end as status,
        {{ dbt.current_timestamp() }} as scored_at
    from scored

)

select * from final
