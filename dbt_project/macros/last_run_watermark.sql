{#- Incremental scoping, step 1: the model's own watermark, the newest `column` among the rows
    it holds (null while it is empty). Put it in a one-row CTE named `watermark`, cross join
    it, and keep the input rows that `is_after_watermark` says arrived since the last run.
    With `partition_column`, on BigQuery only the partitions this run can touch are read
    (bigquery_partition_filter): a watermark from fewer rows is never newer, so at most rows
    already folded in are folded in again, which the models are idempotent for. -#}
{% macro last_run_watermark(column, partition_column=none) -%}
    select max({{ column }}) as last_run_at from {{ this }}
    {%- if partition_column %} where {{ bigquery_partition_filter(partition_column) }}{% endif %}
{%- endmacro %}
