{#- The UTC instant of local wall-clock time `local_date` + `hours` hours in
    var('local_timezone'), e.g. local midnight (hours=0) or the start of the night window.
    A wall-clock time that does not exist (spring-forward) maps one hour later, as the
    engines' tz databases do; local midnight always exists in Europe/Rome. -#}
{% macro utc_from_local_date(local_date, hours=0) -%}
    {{ return(adapter.dispatch('utc_from_local_date', 'water_infrastructure')(local_date, hours, var('local_timezone'))) }}
{%- endmacro %}

{% macro default__utc_from_local_date(local_date, hours, tz) -%}
    ((cast({{ local_date }} as timestamp) + ({{ hours }}) * interval '1 hour') at time zone '{{ tz }}')
{%- endmacro %}

{% macro duckdb__utc_from_local_date(local_date, hours, tz) -%}
    timezone('{{ tz }}', cast({{ local_date }} as timestamp) + to_hours(cast({{ hours }} as bigint)))
{%- endmacro %}

{% macro bigquery__utc_from_local_date(local_date, hours, tz) -%}
    timestamp(datetime_add(datetime({{ local_date }}), interval {{ hours }} hour), '{{ tz }}')
{%- endmacro %}
