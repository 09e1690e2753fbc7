{#- `partition by <expression> cluster by <columns>` for a table this project creates with DDL
    on BigQuery. Partitions follow WATER_BIGQUERY_PARTITIONS (as the models' partition_by in
    dbt_project.yml; 0 only for emulators that cannot create partitioned tables); clustering
    is always on. -#}
{% macro bigquery_table_layout(partition_expression, cluster_columns) -%}
    {%- if env_var('WATER_BIGQUERY_PARTITIONS', '1') == '1' %} partition by {{ partition_expression }}{% endif %}
    cluster by {{ cluster_columns | join(', ') }}
{%- endmacro %}
