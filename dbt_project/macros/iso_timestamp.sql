{#- ISO-8601 UTC text of the timestamp `ts` ('2024-03-04T10:00:00Z'), the same on every
    engine and independent of the session time zone. -#}
{% macro iso_timestamp(ts) -%}
    {{ return(adapter.dispatch('iso_timestamp', 'water_infrastructure')(ts)) }}
{%- endmacro %}

{% macro default__iso_timestamp(ts) -%}
    to_char({{ ts }} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
{%- endmacro %}

{% macro duckdb__iso_timestamp(ts) -%}
    strftime(timezone('UTC', {{ ts }}), '%Y-%m-%dT%H:%M:%SZ')
{%- endmacro %}

{% macro bigquery__iso_timestamp(ts) -%}
    format_timestamp('%Y-%m-%dT%H:%M:%SZ', {{ ts }})
{%- endmacro %}
