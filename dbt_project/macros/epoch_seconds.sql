{#- Whole seconds since 1970-01-01 UTC of the timestamp `ts` (a bigint). -#}
{% macro epoch_seconds(ts) -%}
    {{ return(adapter.dispatch('epoch_seconds', 'water_infrastructure')(ts)) }}
{%- endmacro %}

{% macro default__epoch_seconds(ts) -%}
    cast(floor(extract(epoch from {{ ts }})) as bigint)
{%- endmacro %}

{% macro duckdb__epoch_seconds(ts) -%}
    cast(floor(epoch({{ ts }})) as bigint)
{%- endmacro %}

{% macro bigquery__epoch_seconds(ts) -%}
    unix_seconds({{ ts }})
{%- endmacro %}
