{{
    config(
        indexes=[
            {'columns': ['district', 'local_date'], 'unique': true},
        ] if target.type == 'postgres' else [],
    )
}}
{#- Daily water balance and night flow per district (local days), the input of the
    leakage estimate. Derived here from the hourly node features because it needs only
    complete hours and per-hour balance completeness:

    - an hour is balanced when every inlet, outlet and consumption meter of the district
      reported flow in it;
    - system input = inlets - outlets (exports); water loss = system input - metered
      consumption (all L/s, hourly means averaged over the balanced hours of the day);
    - night = local hours var ml_night_first_hour..ml_night_last_hour (default 02-04),
      when legitimate use is lowest: the minimum night flow of the system input and the
      loss in those hours are the classic leakage indicators. -#}
{%- set night_first = var('ml_night_first_hour', 2) -%}
{%- set night_last = var('ml_night_last_hour', 4) -%}

with

features as (

    select * from {{ ref('ml_features') }}
    where is_complete

),

nodes as (

    select * from {{ ref('nodes') }}

),

district_meters as (

    select
        district,
        sum(case when balance_role = 'inlet' then 1 else 0 end) as inlet_meters,
        sum(case when balance_role = 'outlet' then 1 else 0 end) as outlet_meters,
        sum(case when balance_role = 'consumption' then 1 else 0 end) as consumption_meters
    from nodes
    group by district

),

hourly_district as (

    select
        district,
        window_start,
        local_date,
        local_hour,
        max(local_day_of_week) as local_day_of_week,
        max(case when is_holiday then 1 else 0 end) as is_holiday,
        sum(case when balance_role = 'inlet' then flow_rate end) as inlet_flow,
        sum(case when balance_role = 'outlet' then flow_rate end) as outlet_flow,
        sum(case when balance_role = 'consumption' then flow_rate end) as consumption_flow,
        count(case when balance_role = 'inlet' then flow_rate end) as inlets_reporting,
        count(case when balance_role = 'outlet' then flow_rate end) as outlets_reporting,
        count(case when balance_role = 'consumption' then flow_rate end) as consumers_reporting,
        avg(pressure) as mean_pressure,
        avg(district_temperature) as district_temperature
    from features
    group by district, window_start, local_date, local_hour

),

hourly_balance as (

    select
        hourly_district.*,
        hourly_district.inlet_flow - coalesce(hourly_district.outlet_flow, 0) as system_input,
        hourly_district.inlet_flow - coalesce(hourly_district.outlet_flow, 0)
            - coalesce(hourly_district.consumption_flow, 0) as water_loss,
        district_meters.inlet_meters > 0
            and hourly_district.inlets_reporting = district_meters.inlet_meters
            and hourly_district.outlets_reporting = district_meters.outlet_meters
            and hourly_district.consumers_reporting = district_meters.consumption_meters
            as is_balanced,
        hourly_district.local_hour between {{ night_first }} and {{ night_last }} as is_night,
        district_meters.consumption_meters
    from hourly_district
    inner join district_meters
        on hourly_district.district = district_meters.district

),

final as (

    select
        district,
        local_date,
        max(local_day_of_week) as local_day_of_week,
        max(is_holiday) = 1 as is_holiday,
        max(consumption_meters) as consumption_meters,
        count(*) as hours_observed,
        sum(case when is_balanced then 1 else 0 end) as hours_balanced,
        avg(case when is_balanced then system_input end) as system_input_ls,
        avg(case when is_balanced then consumption_flow end) as metered_consumption_ls,
        avg(case when is_balanced then water_loss end) as water_loss_ls,
        sum(case when is_balanced and is_night then 1 else 0 end) as night_hours_balanced,
        min(case when is_balanced and is_night then system_input end) as minimum_night_flow_ls,
        avg(case when is_balanced and is_night then consumption_flow end) as night_consumption_ls,
        avg(case when is_balanced and is_night then water_loss end) as night_loss_ls,
        avg(case when is_night then mean_pressure end) as night_pressure_bar,
        avg(mean_pressure) as pressure_bar,
        avg(district_temperature) as district_temperature
    from hourly_balance
    group by district, local_date

)

select * from final
