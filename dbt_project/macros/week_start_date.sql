{#- The Monday (a date) of the ISO week of a local (wall-clock) timestamp. -#}
{% macro week_start_date(local_ts) -%}
    {{ return(adapter.dispatch('week_start_date', 'water_infrastructure')(local_ts)) }}
{%- endmacro %}

{% macro default__week_start_date(local_ts) -%}
    cast(date_trunc('week', {{ local_ts }}) as date)
{%- endmacro %}

{% macro bigquery__week_start_date(local_ts) -%}
    date_trunc(date({{ local_ts }}), isoweek)
{%- endmacro %}
