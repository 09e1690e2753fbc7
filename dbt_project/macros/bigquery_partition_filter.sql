{#- BigQuery cost scoping, step 2: a filter on a partitioning `column` that BigQuery can prune
    on: `column >= <constant>` from bigquery_scope_start(lookback_days); with
    `with_invalid_partitions`, also the NULL and pre-min_valid_timestamp partitions (where the
    quarantine's rows live). `true` when there is no bound (other targets, full builds), so
    DuckDB and PostgreSQL run the same query as before. -#}
{% macro bigquery_partition_filter(column, lookback_days=0, with_invalid_partitions=false) -%}
    {%- set start = bigquery_scope_start(lookback_days) -%}
    {%- if start is none -%}
        true
    {%- elif with_invalid_partitions -%}
        ({{ column }} >= {{ start }} or {{ column }} is null or {{ column }} < timestamp '{{ var("min_valid_timestamp") }} 00:00:00+00')
    {%- else -%}
        {{ column }} >= {{ start }}
    {%- endif -%}
{%- endmacro %}
