{#- Every node known to the platform: registered in node metadata, reporting, or both.
    A reporting node without metadata gets the documented defaults (district unknown,
    role monitoring, default cadence). -#}
with

metadata as (

    select * from {{ ref('stg_raw__node_metadata') }}

),

daily_windows as (

    select * from {{ ref('int_metrics_windowed') }}
    where time_window = '1day'

),

reporting as (

    select
        node_id,
        min(first_reading_at) as first_reading_at,
        max(last_reading_at) as last_reading_at,
        sum(reading_count) as reading_count,
        max(node_name) as node_name
    from daily_windows
    group by node_id

),

final as (

    select
        coalesce(metadata.node_id, reporting.node_id) as node_id,
        coalesce(metadata.node_name, reporting.node_name, coalesce(metadata.node_id, reporting.node_id)) as node_name,
        metadata.node_type,
        coalesce(metadata.district, 'unknown') as district,
        metadata.latitude,
        metadata.longitude,
        coalesce(metadata.balance_role, 'monitoring') as balance_role,
        coalesce(metadata.expected_cadence_s, {{ var('default_expected_cadence_s') }}) as expected_cadence_s,
        metadata.pressure_min_bar,
        metadata.pressure_max_bar,
        coalesce(metadata.is_bidirectional, false) as is_bidirectional,
        metadata.node_id is not null as has_metadata,
        reporting.first_reading_at,
        reporting.last_reading_at,
        coalesce(reporting.reading_count, 0) as reading_count
    from metadata
    full outer join reporting
        on metadata.node_id = reporting.node_id

)

select * from final
