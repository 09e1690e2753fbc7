{#- The date `days` (an integer literal or expression) after the date `day`. -#}
{% macro add_days(day, days) -%}
    {{ return(adapter.dispatch('add_days', 'water_infrastructure')(day, days)) }}
{%- endmacro %}

{% macro default__add_days(day, days) -%}
    ({{ day }} + cast({{ days }} as integer))
{%- endmacro %}

{% macro bigquery__add_days(day, days) -%}
    date_add({{ day }}, interval {{ days }} day)
{%- endmacro %}
