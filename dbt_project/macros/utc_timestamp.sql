{#- A timestamp-with-time-zone literal from ISO text such as '2000-01-01 00:00:00+00'. -#}
{% macro utc_timestamp(iso_text) -%}
    {{ return(adapter.dispatch('utc_timestamp', 'water_infrastructure')(iso_text)) }}
{%- endmacro %}

{% macro default__utc_timestamp(iso_text) -%}
    cast('{{ iso_text }}' as timestamptz)
{%- endmacro %}

{% macro bigquery__utc_timestamp(iso_text) -%}
    timestamp('{{ iso_text }}')
{%- endmacro %}
