{#- Median of `expression` as an aggregate (nulls ignored). Exact on duckdb and postgres
    (interpolated between the two middle values); approximate on BigQuery, which has no
    exact percentile aggregate. -#}
{% macro median(expression) -%}
    {{ return(adapter.dispatch('median', 'water_infrastructure')(expression)) }}
{%- endmacro %}

{% macro default__median(expression) -%}
    percentile_cont(0.5) within group (order by {{ expression }})
{%- endmacro %}

{% macro duckdb__median(expression) -%}
    quantile_cont({{ expression }}, 0.5)
{%- endmacro %}

{% macro bigquery__median(expression) -%}
    approx_quantiles({{ expression }}, 2)[offset(1)]
{%- endmacro %}
