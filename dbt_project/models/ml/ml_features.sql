{{
    config(
        indexes=[
            {'columns': ['node_id', 'window_start'], 'unique': true},
            {'columns': ['hours_after_origin']},
        ] if target.type == 'postgres' else [],
    )
}}
{#- Hourly features per node: the one feature table behind training and scoring.

    Every feature of a row looks only at that hour and earlier hours of the same node
    (lags and trailing windows over hour_index), so rows arriving later can never change
    an earlier row's features. Besides the observed hours, each node gets the 24 hours
    after its latest complete hour (its forecast origin) as rows without measurements:
    their calendar and seasonal lags are known in advance and are what the forecast
    reads for the targets. -#}
{%- set epoch = utc_timestamp('1970-01-01 00:00:00+00') -%}
{%- set float_type = 'float64' if target.type == 'bigquery' else 'double precision' -%}

with

hourly_metrics as (

    select * from {{ ref('computed_metrics') }}
    where time_window = '1hour'

),

nodes as (

    select * from {{ ref('nodes') }}

),

holidays as (

    select * from {{ ref('italian_public_holidays') }}

),

{# The network's newest reading; from the 5-minute windows, which are published as they
    fill (computed_metrics publishes an hour only once it is closed). -#}
data_clock as (

    select max(last_reading_at) as data_clock_at from {{ ref('computed_metrics') }}
    where time_window = '5min'

),

observed as (

    select
        hourly_metrics.node_id,
        hourly_metrics.window_start,
        true as is_observed,
        hourly_metrics.window_end <= data_clock.data_clock_at as is_complete,
        hourly_metrics.avg_flow_rate as flow_rate,
        hourly_metrics.min_flow_rate,
        hourly_metrics.max_flow_rate,
        hourly_metrics.avg_pressure as pressure,
        hourly_metrics.min_pressure,
        hourly_metrics.max_pressure,
        hourly_metrics.avg_temperature as temperature,
        hourly_metrics.reading_count,
        hourly_metrics.expected_reading_count,
        hourly_metrics.quality_score
    from hourly_metrics
    cross join data_clock

),

origins as (

    select
        node_id,
        max(window_start) as origin_at
    from observed
    where is_complete
    group by node_id

),

horizon_steps as (

    {% for step in range(1, 25) %}
    select {{ step }} as horizon_hours
    {% if not loop.last %}union all{% endif %}
    {% endfor %}

),

forecast_hours as (

    select
        origins.node_id,
        {{ add_seconds('origins.origin_at', 'horizon_steps.horizon_hours * 3600') }} as window_start
    from origins
    cross join horizon_steps

),

unobserved_forecast_hours as (

    select
        forecast_hours.node_id,
        forecast_hours.window_start,
        false as is_observed,
        false as is_complete,
        cast(null as {{ float_type }}) as flow_rate,
        cast(null as {{ float_type }}) as min_flow_rate,
        cast(null as {{ float_type }}) as max_flow_rate,
        cast(null as {{ float_type }}) as pressure,
        cast(null as {{ float_type }}) as min_pressure,
        cast(null as {{ float_type }}) as max_pressure,
        cast(null as {{ float_type }}) as temperature,
        cast(null as integer) as reading_count,
        cast(null as integer) as expected_reading_count,
        cast(null as {{ float_type }}) as quality_score
    from forecast_hours
    left join observed
        on forecast_hours.node_id = observed.node_id
        and forecast_hours.window_start = observed.window_start
    where observed.node_id is null

),

all_hours as (

    select * from observed
    union all
    select * from unobserved_forecast_hours

),

district_temperature as (

    select
        nodes.district,
        observed.window_start,
        avg(observed.temperature) as district_temperature
    from observed
    inner join nodes
        on observed.node_id = nodes.node_id
    where observed.temperature is not null
    group by nodes.district, observed.window_start

),

enriched as (

    select
        all_hours.*,
        nodes.district,
        nodes.balance_role,
        coalesce(nodes.node_type, 'unknown') as node_type,
        cast(round({{ seconds_between(epoch, 'all_hours.window_start') }} / 3600) as bigint)
            as hour_index,
        {{ local_timestamp('all_hours.window_start') }} as local_start,
        district_temperature.district_temperature
    from all_hours
    inner join nodes
        on all_hours.node_id = nodes.node_id
    left join district_temperature
        on nodes.district = district_temperature.district
        and all_hours.window_start = district_temperature.window_start

),

with_calendar as (

    select
        enriched.*,
        cast(extract(hour from enriched.local_start) as integer) as local_hour,
        {{ iso_day_of_week('enriched.local_start') }} as local_day_of_week,
        cast(enriched.local_start as date) as local_date,
        ({{ iso_day_of_week('enriched.local_start') }} - 1) * 24
            + cast(extract(hour from enriched.local_start) as integer) as local_hour_of_week,
        holidays.holiday_date is not null as is_holiday,
        -- weekday | saturday | sunday | holiday: days of one type share their demand
        -- profile, so the same local hour of that type is the typical value. A public
        -- holiday is a type of its own, learned from the node's past holidays (a utility's
        -- holiday may look like a Sunday, a Saturday or a normal day); ml.features falls
        -- back to the Sunday profile only while the node has no past holiday.
        case
            when holidays.holiday_date is not null then 'holiday'
            when {{ iso_day_of_week('enriched.local_start') }} = 7 then 'sunday'
            when {{ iso_day_of_week('enriched.local_start') }} = 6 then 'saturday'
            else 'weekday'
        end as day_type
    from enriched
    left join holidays
        on cast(enriched.local_start as date) = holidays.holiday_date

),

windowed as (

    select
        with_calendar.*,
        -- exact-hour lags: a missing hour gives null, never a neighbouring hour
        max(flow_rate) over (
            partition by node_id order by hour_index
            range between 1 preceding and 1 preceding
        ) as flow_lag_1h,
        max(flow_rate) over (
            partition by node_id, mod(hour_index, 24) order by hour_index
            range between 24 preceding and 24 preceding
        ) as flow_lag_24h,
        max(flow_rate) over (
            partition by node_id, mod(hour_index, 168) order by hour_index
            range between 168 preceding and 168 preceding
        ) as flow_lag_168h,
        -- the same local hour of the week one week earlier: 167-169 h back across a DST
        -- change (the seasonal-naive forecast of a clock-driven demand)
        avg(flow_rate) over (
            partition by node_id, local_hour_of_week order by hour_index
            range between 169 preceding and 167 preceding
        ) as flow_last_week_local,
        -- same local hour of the week over the 4 previous weeks (local: demand follows the
        -- clock, so a UTC hour-of-week would be off by an hour for weeks after a DST change)
        avg(flow_rate) over (
            partition by node_id, local_hour_of_week order by hour_index
            range between 673 preceding and 167 preceding
        ) as flow_same_hour_mean_4w,
        count(flow_rate) over (
            partition by node_id, local_hour_of_week order by hour_index
            range between 673 preceding and 167 preceding
        ) as flow_same_hour_weeks,
        -- holidays are rare: their own type looks back a year, the others four weeks
        case
            when day_type = 'holiday' then avg(flow_rate) over (
                partition by node_id, day_type, local_hour order by hour_index
                range between 8784 preceding and 24 preceding
            )
            else avg(flow_rate) over (
                partition by node_id, day_type, local_hour order by hour_index
                range between 672 preceding and 24 preceding
            )
        end as flow_day_type_mean_4w,
        case
            when day_type = 'holiday' then count(flow_rate) over (
                partition by node_id, day_type, local_hour order by hour_index
                range between 8784 preceding and 24 preceding
            )
            else count(flow_rate) over (
                partition by node_id, day_type, local_hour order by hour_index
                range between 672 preceding and 24 preceding
            )
        end as flow_day_type_days_4w,
        -- the same local hour on the Sundays of the 4 weeks before: a holiday's prior
        avg(case when day_type = 'sunday' then flow_rate end) over (
            partition by node_id, local_hour order by hour_index
            range between 672 preceding and 24 preceding
        ) as flow_sunday_mean_4w,
        avg(flow_rate) over (
            partition by node_id order by hour_index
            range between 23 preceding and current row
        ) as flow_mean_24h,
        stddev_samp(flow_rate) over (
            partition by node_id order by hour_index
            range between 23 preceding and current row
        ) as flow_std_24h,
        avg(abs(flow_rate)) over (
            partition by node_id order by hour_index
            range between 167 preceding and current row
        ) as flow_abs_mean_168h,
        count(flow_rate) over (
            partition by node_id order by hour_index
            range between 167 preceding and current row
        ) as flow_hours_168h,
        count(flow_rate) over (
            partition by node_id order by hour_index
            rows between unbounded preceding and current row
        ) as flow_history_hours,
        max(pressure) over (
            partition by node_id, mod(hour_index, 24) order by hour_index
            range between 24 preceding and 24 preceding
        ) as pressure_lag_24h,
        avg(pressure) over (
            partition by node_id, local_hour_of_week order by hour_index
            range between 673 preceding and 167 preceding
        ) as pressure_same_hour_mean_4w,
        avg(pressure) over (
            partition by node_id order by hour_index
            range between 23 preceding and current row
        ) as pressure_mean_24h,
        stddev_samp(pressure) over (
            partition by node_id order by hour_index
            range between 167 preceding and current row
        ) as pressure_std_168h,
        avg(district_temperature) over (
            partition by node_id order by hour_index
            range between 23 preceding and current row
        ) as district_temperature_mean_24h,
        avg(district_temperature) over (
            partition by node_id order by hour_index
            range between 167 preceding and current row
        ) as district_temperature_mean_168h
    from with_calendar

),

final as (

    select
        windowed.node_id,
        windowed.window_start,
        windowed.hour_index,
        windowed.is_observed,
        windowed.is_complete,
        cast(round({{ seconds_between('origins.origin_at', 'windowed.window_start') }} / 3600) as integer)
            as hours_after_origin,
        windowed.district,
        windowed.balance_role,
        windowed.node_type,
        windowed.local_date,
        windowed.local_hour,
        windowed.local_day_of_week,
        windowed.local_hour_of_week,
        windowed.is_holiday,
        windowed.day_type,
        windowed.flow_rate,
        windowed.min_flow_rate,
        windowed.max_flow_rate,
        windowed.flow_lag_1h,
        windowed.flow_lag_24h,
        windowed.flow_lag_168h,
        windowed.flow_last_week_local,
        windowed.flow_same_hour_mean_4w,
        windowed.flow_same_hour_weeks,
        windowed.flow_day_type_mean_4w,
        windowed.flow_day_type_days_4w,
        windowed.flow_sunday_mean_4w,
        windowed.flow_mean_24h,
        windowed.flow_std_24h,
        windowed.flow_abs_mean_168h,
        windowed.flow_hours_168h,
        windowed.flow_history_hours,
        windowed.pressure,
        windowed.min_pressure,
        windowed.max_pressure,
        windowed.pressure_lag_24h,
        windowed.pressure_same_hour_mean_4w,
        windowed.pressure_mean_24h,
        windowed.pressure_std_168h,
        windowed.temperature,
        windowed.district_temperature,
        windowed.district_temperature_mean_24h,
        windowed.district_temperature_mean_168h,
        windowed.reading_count,
        windowed.expected_reading_count,
        windowed.quality_score
    from windowed
    left join origins
        on windowed.node_id = origins.node_id

)

select * from final
