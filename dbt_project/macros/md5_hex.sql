{#- Lower-case hex md5 of the text `expression` (32 characters) on every engine. -#}
{% macro md5_hex(expression) -%}
    {{ return(adapter.dispatch('md5_hex', 'water_infrastructure')(expression)) }}
{%- endmacro %}

{% macro default__md5_hex(expression) -%}
    md5({{ expression }})
{%- endmacro %}

{% macro bigquery__md5_hex(expression) -%}
    to_hex(md5({{ expression }}))
{%- endmacro %}
