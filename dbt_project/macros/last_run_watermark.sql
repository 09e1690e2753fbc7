{#- Incremental scoping, step 1: the model's own watermark, the newest `column` among the rows
    it holds (null while it is empty). Put it in a one-row CTE named `watermark`, cross join
    it, and keep the input rows that `is_after_watermark` says arrived since the last run. -#}
{% macro last_run_watermark(column) -%}
    select max({{ column }}) as last_run_at from {{ this }}
{%- endmacro %}
