{#- Seconds from `start_ts` to `end_ts` as a floating-point number. -#}
{% macro seconds_between(start_ts, end_ts) -%}
    {{ return(adapter.dispatch('seconds_between', 'water_infrastructure')(start_ts, end_ts)) }}
{%- endmacro %}

{% macro default__seconds_between(start_ts, end_ts) -%}
    extract(epoch from ({{ end_ts }} - {{ start_ts }}))
{%- endmacro %}

{% macro duckdb__seconds_between(start_ts, end_ts) -%}
    (epoch_us({{ end_ts }}) - epoch_us({{ start_ts }})) / 1e6
{%- endmacro %}

{% macro bigquery__seconds_between(start_ts, end_ts) -%}
    timestamp_diff({{ end_ts }}, {{ start_ts }}, microsecond) / 1e6
{%- endmacro %}
