{{
    config(
        materialized='incremental',
        unique_key=['batch_id', 'batch_row'],
        incremental_strategy='merge',
        indexes=[
            {'columns': ['batch_id', 'batch_row'], 'unique': true},
            {'columns': ['loaded_at']},
        ] if target.type == 'postgres' else [],
        post_hook=["{{ bigquery_record_scope() }}"],
        meta={'bigquery_scope': {'column': 'timestamp', 'with_invalid_partitions': true}},
    )
}}
{#- Quarantine: every reading that failed validation, with its values as loaded
    (NaN shown as null: it means "missing") and machine-readable reasons. On BigQuery it
    reads and merges only the partitions of rows landed since the last run, plus the NULL and
    pre-2000 ones (docs/bigquery.md "Cost model"). -#}
with

readings as (

    select * from {{ ref('stg_raw__sensor_readings') }}
    where {{ bigquery_partition_filter('reading_at', with_invalid_partitions=true) }}

),

final as (

    select
        batch_id,
        batch_row,
        node_id,
        reading_at as {{ adapter.quote('timestamp') }},
        node_name,
        flow_rate,
        pressure,
        temperature,
        volume,
        quality_score,
        rejection_reasons,
        loaded_at,
        {{ dbt.current_timestamp() }} as rejected_at
    from readings
    where not is_valid
    {% if is_incremental() %}
        and loaded_at > (
            select coalesce(max(published.loaded_at), {{ utc_timestamp('1900-01-01 00:00:00+00') }})
            from {{ this }} as published
            where {{ bigquery_partition_filter(
                'published.' ~ adapter.quote('timestamp'), with_invalid_partitions=true
            ) }}
        )
    {% endif %}

)

select * from final
