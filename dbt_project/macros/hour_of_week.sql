{#- Hour of the ISO week of a local (wall-clock) timestamp: 0 = Monday 00:00-01:00,
    167 = Sunday 23:00-24:00. -#}
{% macro hour_of_week(local_ts) -%}
    {{ return(adapter.dispatch('hour_of_week', 'water_infrastructure')(local_ts)) }}
{%- endmacro %}

{% macro default__hour_of_week(local_ts) -%}
    ((cast(extract(isodow from {{ local_ts }}) as integer) - 1) * 24 + cast(extract(hour from {{ local_ts }}) as integer))
{%- endmacro %}

{% macro bigquery__hour_of_week(local_ts) -%}
    (mod(extract(dayofweek from {{ local_ts }}) + 5, 7) * 24 + extract(hour from {{ local_ts }}))
{%- endmacro %}
