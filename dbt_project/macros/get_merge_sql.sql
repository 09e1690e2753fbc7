{#- BigQuery cost scoping, step 4: a model with `meta: {bigquery_scope: {column: C}}` merges
    only into the partitions of C that this run can write (the same constant bound as its
    reads, bigquery_partition_filter; `lookback_days` when the model rewrites days before the
    new data's), so the MERGE does not scan the destination's history.
    Every other case is dbt's own MERGE. -#}
{% macro bigquery__get_merge_sql(target, source, unique_key, dest_columns, incremental_predicates=none) -%}
    {%- set scope = config.get('meta', {}).get('bigquery_scope') -%}
    {%- set predicates = (incremental_predicates or []) | list -%}
    {%- if scope -%}
        {%- set bound = bigquery_partition_filter(
            'DBT_INTERNAL_DEST.' ~ adapter.quote(scope['column']),
            scope.get('lookback_days', 0),
            scope.get('with_invalid_partitions', false),
        ) | trim -%}
        {%- if bound != 'true' -%}
            {%- do predicates.append(bound) -%}
        {%- endif -%}
    {%- endif -%}
    {{ return(default__get_merge_sql(target, source, unique_key, dest_columns, predicates)) }}
{%- endmacro %}
