{{ config(materialized='view') }}
{#- What "latest" means for the water balance: per district (and '(network)') and per
    time_window, the latest COMPLETE period (period_status 'complete') and, separately, the
    open period so far (period_status 'partial', absent when none is open). A period is
    complete once it is closed by the rule computed_metrics publishes hours and days by
    (macro node_closing_clocks): every node of the area has reported at or after its end, or
    the network's clock is var('window_close_grace_s') past it. A view, because closing
    depends on the clock, not only on the rows network_efficiency last merged. Redis and the
    API read it (flows/publish/publisher.py, api/queries.py). -#}
with

efficiency as (

    select * from {{ ref('network_efficiency') }}
    where time_window in ('1hour', '1day')

),

node_districts as (

    select node_id, district from {{ ref('nodes') }}

),

closing_clocks as (

    {{ node_closing_clocks(ref('nodes')) }}

),

area_clocks as (

    select node_districts.district, min(closing_clocks.closed_until) as closed_until
    from closing_clocks
    inner join node_districts
        on closing_clocks.node_id = node_districts.node_id
    group by node_districts.district

    union all

    select '(network)' as district, min(closed_until) as closed_until
    from closing_clocks

),

periods as (

    select
        efficiency.*,
        case
            when efficiency.window_end <= area_clocks.closed_until then 'complete'
            else 'partial'
        end as period_status
    from efficiency
    inner join area_clocks
        on efficiency.district = area_clocks.district

),

latest as (

    select district, time_window, period_status, max(window_start) as window_start
    from periods
    group by district, time_window, period_status

),

final as (

    select periods.*
    from periods
    inner join latest
        on periods.district = latest.district
        and periods.time_window = latest.time_window
        and periods.period_status = latest.period_status
        and periods.window_start = latest.window_start

)

select * from final
