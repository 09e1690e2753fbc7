{#- Published tables live in the schema the contracts name (water_infrastructure),
    not dbt's default "<target schema>_<custom schema>" concatenation. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema | trim }}
    {%- elif target.type == 'bigquery' and custom_schema_name != 'water_infrastructure' -%}
        {#- One BigQuery dataset per target: staging gets its own dataset beside it. -#}
        {{ target.schema | trim }}_{{ custom_schema_name | trim }}
    {%- elif target.type == 'bigquery' -%}
        {{ target.schema | trim }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
