{#- True when `column` is +/- infinity. -#}
{% macro is_infinite(column) -%}
    {{ return(adapter.dispatch('is_infinite', 'water_infrastructure')(column)) }}
{%- endmacro %}

{% macro default__is_infinite(column) -%}
    ({{ column }} in (cast('Infinity' as double precision), cast('-Infinity' as double precision)))
{%- endmacro %}

{% macro duckdb__is_infinite(column) -%}
    isinf({{ column }})
{%- endmacro %}

{% macro bigquery__is_infinite(column) -%}
    is_inf({{ column }})
{%- endmacro %}
