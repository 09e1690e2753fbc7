{#- Incremental scoping, step 2: true for a row whose `column` (an ingestion or scoring time)
    is newer than the model's last run (see last_run_watermark), and for every row on the
    first run, when the model holds nothing yet. -#}
{% macro is_after_watermark(column) -%}
    (watermark.last_run_at is null or {{ column }} > watermark.last_run_at)
{%- endmacro %}
