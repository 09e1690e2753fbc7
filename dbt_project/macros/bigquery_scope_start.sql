{#- BigQuery cost scoping, step 1 (docs/bigquery.md "Cost model"): the earliest day partition
    that rows landed since this model's last run can be in, as a constant timestamp literal
    (`timestamp 'YYYY-MM-DD 00:00:00+00'`), minus `lookback_days`. BigQuery prunes partitions
    only on constant filters, so the bound is read before the model's query from two small
    tables: pipeline_state (what the model folded in, `bigquery_record_scope`) and the landing
    log (each landing batch's scope, `land_sensor_readings`).
    none (no bound) on other targets, on a full build, and on the first run of a model with no
    recorded state. Assumes landing and dbt runs do not overlap (a cycle runs them in turn). -#}
{% macro bigquery_scope_start(lookback_days=0) -%}
    {%- if target.type != 'bigquery' or not execute or not is_incremental() -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set sql -%}
        with folded as (
            select max(watermark) as folded_until
            from {{ bigquery_state_relation() }}
            where state_key = '{{ bigquery_scope_key(this) }}'
        )
        select
            folded.folded_until,
            timestamp_sub(
                timestamp_trunc(coalesce(min(landed.scope_start), current_timestamp()), day),
                interval {{ lookback_days | int }} day
            ) as scope_start
        from folded
        left join {{ bigquery_raw_relation('sensor_readings_landing_log') }} as landed
            on landed.landed_at >= folded.folded_until
        group by folded.folded_until
    {%- endset -%}
    {%- set row = run_query(sql).rows[0] -%}
    {%- if row['folded_until'] is none -%}
        {{ log("bigquery_scope_start: no state for " ~ this ~ ": this run reads every partition", info=True) }}
        {{ return(none) }}
    {%- endif -%}
    {{ return("timestamp '" ~ row['scope_start'].strftime('%Y-%m-%d %H:%M:%S') ~ "+00'") }}
{%- endmacro %}

{#- The pipeline_state key of a model's BigQuery scope. -#}
{% macro bigquery_scope_key(relation) -%}
    {{ return('dbt-scope:' ~ relation.schema ~ '.' ~ relation.identifier) }}
{%- endmacro %}

{#- pipeline_state in the target dataset (created by create_bigquery_sources). -#}
{% macro bigquery_state_relation() -%}
    {{ return(api.Relation.create(database=target.project, schema=target.schema, identifier='pipeline_state')) }}
{%- endmacro %}
