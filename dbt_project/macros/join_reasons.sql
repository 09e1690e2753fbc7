{#- Comma-separated list of the non-null reason codes, or null when there is none. -#}
{% macro join_reasons(reason_expressions) -%}
    {{ return(adapter.dispatch('join_reasons', 'water_infrastructure')(reason_expressions)) }}
{%- endmacro %}

{% macro default__join_reasons(reason_expressions) -%}
    nullif(concat_ws(',', {{ reason_expressions | join(', ') }}), '')
{%- endmacro %}

{% macro bigquery__join_reasons(reason_expressions) -%}
    nullif(array_to_string([{{ reason_expressions | join(', ') }}], ','), '')
{%- endmacro %}
