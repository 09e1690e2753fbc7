{#- Registered node metadata, with the documented defaults for missing fields. -#}
with

source as (

    select * from {{ source('raw', 'node_metadata') }}

),

final as (

    select
        node_id,
        node_name,
        node_type,
        coalesce(nullif(trim(district), ''), 'unknown') as district,
        latitude,
        longitude,
        case
            when lower(balance_role) in ('inlet', 'outlet', 'consumption', 'monitoring')
                then lower(balance_role)
            else 'monitoring'
        end as balance_role,
        case
            when expected_cadence_s > 0 then expected_cadence_s
            else {{ var('default_expected_cadence_s') }}
        end as expected_cadence_s,
        pressure_min_bar,
        pressure_max_bar,
        coalesce(is_bidirectional, false) as is_bidirectional,
        updated_at
    from source

)

select * from final
