{#- `partition by <expression> cluster by <columns>` for a table this project creates with DDL
    on BigQuery. Partitions follow var('bigquery_partitions') (off only for emulators that
    cannot create partitioned tables); clustering is always on. -#}
{% macro bigquery_table_layout(partition_expression, cluster_columns) -%}
    {%- if var('bigquery_partitions') in [true, 'True', 'true'] %} partition by {{ partition_expression }}{% endif %}
    cluster by {{ cluster_columns | join(', ') }}
{%- endmacro %}
