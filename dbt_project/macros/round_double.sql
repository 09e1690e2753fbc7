{#- `value` rounded to `digits` decimals, still a double (postgres only rounds numerics). -#}
{% macro round_double(value, digits) -%}
    {{ return(adapter.dispatch('round_double', 'water_infrastructure')(value, digits)) }}
{%- endmacro %}

{% macro default__round_double(value, digits) -%}
    round({{ value }}, {{ digits }})
{%- endmacro %}

{% macro postgres__round_double(value, digits) -%}
    cast(round(cast({{ value }} as numeric), {{ digits }}) as double precision)
{%- endmacro %}
