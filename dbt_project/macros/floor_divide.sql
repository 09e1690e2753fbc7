{#- Whole number of times `denominator` fits in `numerator` (floor), as an integer.
    A bare cast of a quotient rounds on BigQuery (300 / 120 -> 3) and truncates elsewhere. -#}
{% macro floor_divide(numerator, denominator) -%}
    {{ return(adapter.dispatch('floor_divide')(numerator, denominator)) }}
{%- endmacro %}

{% macro default__floor_divide(numerator, denominator) -%}
    cast(floor(cast({{ numerator }} as double precision) / {{ denominator }}) as integer)
{%- endmacro %}

{% macro bigquery__floor_divide(numerator, denominator) -%}
    cast(floor({{ numerator }} / {{ denominator }}) as int64)
{%- endmacro %}
