{#- The public holidays (seed italian_public_holidays) as rows of `holiday_date`, or no rows when
    the seed was not built (`dbt build` / `dbt seed` build it; a bare `dbt run` knows no holidays).
    The calling model keeps a `-- depends_on: {{ ref('italian_public_holidays') }}` line. -#}
{% macro public_holidays() -%}
    {%- set seed = ref('italian_public_holidays') -%}
    {%- set built = load_relation(seed) if execute and seed.schema else none -%}
    {%- if built is not none -%}
    select holiday_date from {{ seed }}
    {%- else -%}
    select cast(null as date) as holiday_date
    from (select 1 as one) as no_holidays
    where 1 = 0
    {%- endif -%}
{%- endmacro %}
