{#- `ts` shifted by `seconds` (an integer literal or integer expression). -#}
{% macro add_seconds(ts, seconds) -%}
    {{ return(adapter.dispatch('add_seconds', 'water_infrastructure')(ts, seconds)) }}
{%- endmacro %}

{% macro default__add_seconds(ts, seconds) -%}
    ({{ ts }} + ({{ seconds }}) * interval '1 second')
{%- endmacro %}

{% macro duckdb__add_seconds(ts, seconds) -%}
    ({{ ts }} + to_seconds(cast({{ seconds }} as bigint)))
{%- endmacro %}

{% macro bigquery__add_seconds(ts, seconds) -%}
    timestamp_add({{ ts }}, interval cast({{ seconds }} as int64) second)
{%- endmacro %}
