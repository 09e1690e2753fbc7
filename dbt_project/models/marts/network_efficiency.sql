{{
    config(
        materialized='incremental',
        unique_key=['district', 'time_window', 'window_start'],
        incremental_strategy='merge',
        pre_hook=["{{ refresh_statistics(ref('int_metrics_windowed')) }}", "{{ refresh_statistics(ref('int_district_night_flows_scored')) }}"],
        post_hook=["{{ refresh_statistics(this) }}"],
        indexes=[
            {'columns': ['district', 'time_window', 'window_start'], 'unique': true},
            {'columns': ['computed_at']},
        ] if target.type == 'postgres' else [],
    )
}}
{#- District water balance (IWA quantities) per UTC hour and per local day, for every
    district and for the whole network (district '(network)'). Formulas and the handling of
    incomplete data are in the model description (_marts__anomalies.yml).

    A meter's volume in an hour = its mean flow x 3600 s / 1000 (m3) when at least
    var('balance_min_coverage') of its expected readings carry flow; a meter without flow
    readings uses its totaliser volume under the same coverage rule; otherwise it is unknown,
    and so is every total it enters (never extrapolated). A day's volume is the sum of its
    local hours (23, 24 or 25) and is unknown if any hour is.

    Incremental: district-hours and district-days touched by recomputed node hours (or by a
    re-scored night) are recomputed from all their meters and merged. District membership is
    the current node metadata. -#}
{%- set min_coverage = var('balance_min_coverage') -%}
{%- set network = '(network)' -%}
{%- set double = 'float64' if target.type == 'bigquery' else 'double precision' -%}

with

hourly_windows as (

    select node_id, window_start, reading_count, flow_rate_count, avg_flow_rate,
        volume_reading_count, total_volume, computed_at
    from {{ ref('int_metrics_windowed') }}
    where time_window = '1hour'

),

layout as (

    select node_id, district, balance_role, expected_cadence_s
    from {{ ref('nodes') }}

),

district_layout as (

    select
        district,
        count(*) as total_nodes,
        count(case when balance_role = 'inlet' then 1 end) as inlet_meters,
        count(case when balance_role = 'outlet' then 1 end) as outlet_meters,
        count(case when balance_role = 'consumption' then 1 end) as consumption_meters
    from layout
    group by district

),

network_layout as (

    select
        '{{ network }}' as district,
        sum(total_nodes) as total_nodes,
        sum(inlet_meters) as inlet_meters,
        sum(outlet_meters) as outlet_meters,
        sum(consumption_meters) as consumption_meters,
        {#- Water reaching consumers of a district without inlet meter enters unmetered. -#}
        count(case when inlet_meters = 0 and consumption_meters > 0 then 1 end)
            as districts_without_inlet_meter
    from district_layout

),

nights as (

    select district, night_date, min_night_flow_lps, baseline_median_lps, scored_at
    from {{ ref('int_district_night_flows_scored') }}

),

{% if is_incremental() %}

watermark as (

    {{ last_run_watermark('computed_at') }}

),

touched_node_hours as (

    select hourly_windows.node_id, hourly_windows.window_start
    from hourly_windows
    cross join watermark
    where {{ is_after_watermark('hourly_windows.computed_at') }}

),

touched_hours as (

    select distinct layout.district, touched_node_hours.window_start
    from touched_node_hours
    inner join layout
        on touched_node_hours.node_id = layout.node_id

),

touched_days as (

    select distinct district, cast({{ local_timestamp('window_start') }} as date) as local_date
    from touched_hours

    union distinct

    select nights.district, nights.night_date as local_date
    from nights
    cross join watermark
    where {{ is_after_watermark('nights.scored_at') }}

),

scope_bounds as (

    select {{ utc_from_local_date('min(local_date)') }} as range_start
    from touched_days

),

scoped_windows as (

    select hourly_windows.*
    from hourly_windows
    where hourly_windows.window_start >= (select scope_bounds.range_start from scope_bounds)

),

{% else %}

scoped_windows as (

    select * from hourly_windows

),

{% endif %}

node_hours as (

    select
        scoped_windows.node_id,
        scoped_windows.window_start,
        cast({{ local_timestamp('scoped_windows.window_start') }} as date) as local_date,
        layout.district,
        layout.balance_role,
        case
            when scoped_windows.flow_rate_count * layout.expected_cadence_s >= {{ min_coverage }} * 3600
                then scoped_windows.avg_flow_rate * 3.6
            when scoped_windows.flow_rate_count = 0
                and scoped_windows.volume_reading_count * layout.expected_cadence_s >= {{ min_coverage }} * 3600
                then scoped_windows.total_volume
        end as volume_m3
    from scoped_windows
    inner join layout
        on scoped_windows.node_id = layout.node_id

),

days as (

    select
        local_date,
        {{ utc_from_local_date('local_date') }} as day_start,
        {{ utc_from_local_date(add_days('local_date', 1)) }} as day_end
    from (select distinct local_date from node_hours) as dates

),

node_days as (

    select
        node_hours.node_id,
        node_hours.local_date,
        node_hours.district,
        node_hours.balance_role,
        case
            when count(node_hours.volume_m3) * 3600
                = {{ seconds_between('days.day_start', 'days.day_end') }}
                then sum(node_hours.volume_m3)
        end as volume_m3
    from node_hours
    inner join days
        on node_hours.local_date = days.local_date
    group by 1, 2, 3, 4, days.day_start, days.day_end

),

{#- Meter totals per area and period, before the balance formulas. -#}
{%- set meter_totals %}
        count(distinct node_id) as active_nodes,
        sum(case when balance_role = 'inlet' then volume_m3 end) as inlet_volume_sum,
        count(case when balance_role = 'inlet' then volume_m3 end) as inlet_meters_complete,
        sum(case when balance_role = 'outlet' then volume_m3 end) as outlet_volume_sum,
        count(case when balance_role = 'outlet' then volume_m3 end) as outlet_meters_complete,
        sum(case when balance_role = 'consumption' then volume_m3 end) as consumption_volume_sum,
        count(case when balance_role = 'consumption' then volume_m3 end) as consumption_meters_complete
{%- endset %}

hourly_periods as (

    select 'district' as area_type, district, window_start, {{ meter_totals }}
    from node_hours
    group by district, window_start

    union all

    select 'network' as area_type, '{{ network }}' as district, window_start, {{ meter_totals }}
    from node_hours
    group by window_start

),

daily_periods as (

    select 'district' as area_type, district, local_date, {{ meter_totals }}
    from node_days
    group by district, local_date

    union all

    select 'network' as area_type, '{{ network }}' as district, local_date, {{ meter_totals }}
    from node_days
    group by local_date

),

{%- set total_columns = ['active_nodes', 'inlet_volume_sum', 'inlet_meters_complete', 'outlet_volume_sum',
    'outlet_meters_complete', 'consumption_volume_sum', 'consumption_meters_complete'] %}

resolved as (

    select
        area_type,
        district,
        '1hour' as time_window,
        window_start,
        {{ add_seconds('window_start', 3600) }} as window_end,
        cast({{ local_timestamp('window_start') }} as date) as local_date,
        {{ total_columns | join(', ') }}
    from hourly_periods

    union all

    select
        daily_periods.area_type,
        daily_periods.district,
        '1day' as time_window,
        days.day_start as window_start,
        days.day_end as window_end,
        days.local_date,
        {%- for column in total_columns %}
        daily_periods.{{ column }}{% if not loop.last %},{% endif %}
        {%- endfor %}
    from daily_periods
    inner join days
        on daily_periods.local_date = days.local_date

),

{% if is_incremental() %}

selected as (

    select resolved.*
    from resolved
    inner join (
        select district, window_start, '1hour' as time_window from touched_hours
        union distinct
        select '{{ network }}' as district, window_start, '1hour' as time_window from touched_hours
    ) as touched
        on resolved.district = touched.district
        and resolved.time_window = touched.time_window
        and resolved.window_start = touched.window_start

    union all

    select resolved.*
    from resolved
    inner join (
        select district, local_date from touched_days
        union distinct
        select '{{ network }}' as district, local_date from touched_days
    ) as touched
        on resolved.district = touched.district
        and resolved.time_window = '1day'
        and resolved.local_date = touched.local_date

),

{% else %}

selected as (

    select * from resolved

),

{% endif %}

with_layout as (

    select
        selected.*,
        coalesce(district_layout.total_nodes, network_layout.total_nodes, 0) as total_nodes,
        coalesce(district_layout.inlet_meters, network_layout.inlet_meters, 0) as inlet_meters,
        coalesce(district_layout.outlet_meters, network_layout.outlet_meters, 0) as outlet_meters,
        coalesce(district_layout.consumption_meters, network_layout.consumption_meters, 0) as consumption_meters,
        coalesce(network_layout.districts_without_inlet_meter, 0) as districts_without_inlet_meter
    from selected
    left join district_layout
        on selected.area_type = 'district'
        and selected.district = district_layout.district
    left join network_layout
        on selected.area_type = 'network'

),

volumes as (

    select
        *,
        case
            when inlet_meters > 0 and inlet_meters_complete = inlet_meters
                and districts_without_inlet_meter = 0
                then inlet_volume_sum
        end as inlet_volume_m3,
        case
            when outlet_meters_complete = outlet_meters then coalesce(outlet_volume_sum, 0)
        end as outlet_volume_m3,
        case
            when consumption_meters > 0 and consumption_meters_complete = consumption_meters
                then consumption_volume_sum
        end as metered_consumption_m3
    from with_layout

),

balances as (

    select
        *,
        inlet_volume_m3 - outlet_volume_m3 as system_input_volume_m3
    from volumes

),

night_flow as (

    select district, night_date, min_night_flow_lps, baseline_median_lps
    from nights

    union all

    {# The network's night flow is the sum over its districts when every district with
       inlet meters has a valid one; its trend is against the sum of their baselines. #}
    select
        '{{ network }}' as district,
        nights.night_date,
        case when count(nights.min_night_flow_lps) = max(network_layout.inlet_districts)
            then sum(nights.min_night_flow_lps) end as min_night_flow_lps,
        case when count(nights.baseline_median_lps) = max(network_layout.inlet_districts)
            then sum(nights.baseline_median_lps) end as baseline_median_lps
    from nights
    cross join (
        select count(*) as inlet_districts
        from district_layout
        where inlet_meters > 0
    ) as network_layout
    group by nights.night_date

),

final as (

    select
        balances.district,
        balances.area_type,
        balances.time_window,
        balances.window_start,
        balances.window_end,
        balances.local_date,
        cast(balances.system_input_volume_m3 as {{ double }}) as system_input_volume_m3,
        cast(balances.inlet_volume_m3 as {{ double }}) as inlet_volume_m3,
        cast(balances.outlet_volume_m3 as {{ double }}) as outlet_volume_m3,
        cast(balances.metered_consumption_m3 as {{ double }}) as metered_consumption_m3,
        cast(balances.system_input_volume_m3 - balances.metered_consumption_m3 as {{ double }}) as water_loss_m3,
        case
            when balances.system_input_volume_m3 > 0
                then 100.0 * (balances.system_input_volume_m3 - balances.metered_consumption_m3)
                    / balances.system_input_volume_m3
        end as water_loss_percent,
        case
            when balances.system_input_volume_m3 > 0
                then 100.0 * balances.metered_consumption_m3 / balances.system_input_volume_m3
        end as efficiency_percent,
        case when balances.time_window = '1day' then night_flow.min_night_flow_lps end as min_night_flow_lps,
        case when balances.time_window = '1day' then night_flow.baseline_median_lps end
            as min_night_flow_baseline_lps,
        case
            when balances.time_window = '1day' and night_flow.baseline_median_lps > 0
                then 100.0 * (night_flow.min_night_flow_lps - night_flow.baseline_median_lps)
                    / night_flow.baseline_median_lps
        end as min_night_flow_change_percent,
        cast(balances.active_nodes as integer) as active_nodes,
        cast(balances.total_nodes as integer) as total_nodes,
        cast(balances.inlet_meters as integer) as inlet_meters,
        cast(balances.inlet_meters_complete as integer) as inlet_meters_complete,
        cast(balances.outlet_meters as integer) as outlet_meters,
        cast(balances.outlet_meters_complete as integer) as outlet_meters_complete,
        cast(balances.consumption_meters as integer) as consumption_meters,
        cast(balances.consumption_meters_complete as integer) as consumption_meters_complete,
        {{ join_reasons([
            "case when balances.inlet_meters = 0 then 'no_inlet_meter' end",
            "case when balances.districts_without_inlet_meter > 0 then 'district_without_inlet_meter' end",
            "case when balances.inlet_meters > 0 and balances.inlet_meters_complete < balances.inlet_meters then 'inlet_data_incomplete' end",
            "case when balances.outlet_meters_complete < balances.outlet_meters then 'outlet_data_incomplete' end",
            "case when balances.consumption_meters = 0 then 'no_consumption_meters' end",
            "case when balances.consumption_meters > 0 and balances.consumption_meters_complete < balances.consumption_meters then 'consumption_data_incomplete' end",
            "case when balances.system_input_volume_m3 <= 0 then 'non_positive_system_input' end",
        ]) }} as incomplete_reasons,
        {{ dbt.current_timestamp() }} as computed_at
    from balances
    left join night_flow
        on balances.district = night_flow.district
        and balances.local_date = night_flow.night_date

),

published as (

    select
        *,
        incomplete_reasons is null as is_complete
    from final

)

select * from published
