{{
    config(
        unique_key=['node_id', 'reading_at'],
        incremental_strategy='merge',
        indexes=[
            {'columns': ['node_id', 'reading_at'], 'unique': true},
            {'columns': ['loaded_at']},
        ] if target.type == 'postgres' else [],
        post_hook=["{{ refresh_statistics(this) }}", "{{ bigquery_record_scope() }}"],
        meta={'bigquery_scope': {'column': 'reading_at'}},
    )
}}
{#- Valid readings, one per (node_id, reading_at): of repeats the highest quality_score
    wins (ties: first loaded). Incremental by ingestion time: new rows only compete with
    the current winner of their key, which gives the same result as ranking everything.
    On BigQuery every read and the MERGE stay within the day partitions of the rows landed
    since the last run (bigquery_partition_filter; docs/bigquery.md "Cost model"). -#}
with

valid_readings as (

    select
        node_id,
        reading_at,
        node_name,
        flow_rate,
        pressure,
        temperature,
        volume,
        quality_score,
        loaded_at,
        batch_id,
        batch_row
    from {{ ref('stg_raw__sensor_readings') }}
    where is_valid and {{ bigquery_partition_filter('reading_at') }}

),

{% if is_incremental() %}

watermark as (

    {{ last_run_watermark('loaded_at', 'reading_at') }}

),

new_readings as (

    select valid_readings.*
    from valid_readings
    cross join watermark
    where {{ is_after_watermark('valid_readings.loaded_at') }}

),

new_keys as (

    select distinct node_id, reading_at from new_readings

),

candidates as (

    select * from new_readings

    union all

    select current_winners.*
    from {{ this }} as current_winners
    inner join new_keys
        on current_winners.node_id = new_keys.node_id
        and current_winners.reading_at = new_keys.reading_at
    where {{ bigquery_partition_filter('current_winners.reading_at') }}

),

{% else %}

candidates as (

    select * from valid_readings

),

{% endif %}

ranked as (

    select
        *,
        row_number() over (
            partition by node_id, reading_at
            order by coalesce(quality_score, -1) desc, loaded_at asc, batch_id asc, batch_row asc
        ) as repeat_rank
    from candidates

),

final as (

    select
        node_id,
        reading_at,
        node_name,
        flow_rate,
        pressure,
        temperature,
        volume,
        quality_score,
        loaded_at,
        batch_id,
        batch_row
    from ranked
    where repeat_rank = 1

)

select * from final
