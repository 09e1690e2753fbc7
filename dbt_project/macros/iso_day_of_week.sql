{#- ISO day of the week of a date or local timestamp: 1 = Monday ... 7 = Sunday. -#}
{% macro iso_day_of_week(day) -%}
    {{ return(adapter.dispatch('iso_day_of_week', 'water_infrastructure')(day)) }}
{%- endmacro %}

{% macro default__iso_day_of_week(day) -%}
    cast(extract(isodow from {{ day }}) as integer)
{%- endmacro %}

{% macro bigquery__iso_day_of_week(day) -%}
    (mod(extract(dayofweek from {{ day }}) + 5, 7) + 1)
{%- endmacro %}
