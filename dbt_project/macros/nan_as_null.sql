{#- NaN means "missing" (DESIGN.md): turn it into null. Infinity is kept (it is invalid). -#}
{% macro nan_as_null(column) -%}
    {{ return(adapter.dispatch('nan_as_null', 'water_infrastructure')(column)) }}
{%- endmacro %}

{% macro default__nan_as_null(column) -%}
    nullif({{ column }}, cast('NaN' as double precision))
{%- endmacro %}

{% macro duckdb__nan_as_null(column) -%}
    case when isnan({{ column }}) then null else {{ column }} end
{%- endmacro %}

{% macro bigquery__nan_as_null(column) -%}
    if(is_nan({{ column }}), null, {{ column }})
{%- endmacro %}
