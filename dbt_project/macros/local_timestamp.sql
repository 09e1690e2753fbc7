{#- Local wall-clock time (timestamp without time zone) of the UTC instant `ts` in
    var('local_timezone') (Europe/Rome by default). DST is the engine's tz database:
    the spring-forward hour does not exist locally, the fall-back hour occurs twice. -#}
{% macro local_timestamp(ts) -%}
    {{ return(adapter.dispatch('local_timestamp', 'water_infrastructure')(ts, var('local_timezone'))) }}
{%- endmacro %}

{% macro default__local_timestamp(ts, tz) -%}
    ({{ ts }} at time zone '{{ tz }}')
{%- endmacro %}

{% macro duckdb__local_timestamp(ts, tz) -%}
    timezone('{{ tz }}', {{ ts }})
{%- endmacro %}

{% macro bigquery__local_timestamp(ts, tz) -%}
    datetime({{ ts }}, '{{ tz }}')
{%- endmacro %}
