{#- A JSON object as text from `fields`, a list of [key, kind, sql_expression] with kind
    number | integer | text | timestamp | boolean; a null value is written as JSON null.
    Built with plain string functions so it is the same text on every engine. -#}
{% macro json_details(fields) -%}
    {%- set string_type = dbt.type_string() -%}
    {%- set pieces = [] -%}
    {%- for key, kind, expression in fields -%}
        {%- if kind == 'number' -%}
            {%- set value = "cast(" ~ round_double(expression, 6) ~ " as " ~ string_type ~ ")" -%}
        {%- elif kind == 'integer' -%}
            {%- set value = "cast(cast(" ~ expression ~ " as bigint) as " ~ string_type ~ ")" -%}
        {%- elif kind == 'text' -%}
            {%- set value = "concat('\"', replace(cast(" ~ expression ~ " as " ~ string_type ~ "), '\"', '\\\"'), '\"')" -%}
        {%- elif kind == 'timestamp' -%}
            {%- set value = "concat('\"', " ~ iso_timestamp(expression) ~ ", '\"')" -%}
        {%- elif kind == 'boolean' -%}
            {%- set value = "case when " ~ expression ~ " then 'true' when not " ~ expression ~ " then 'false' end" -%}
        {%- else -%}
            {{ exceptions.raise_compiler_error("json_details: unknown kind " ~ kind ~ " for key " ~ key) }}
        {%- endif -%}
        {%- do pieces.append("'" ~ ('' if loop.first else ', ') ~ '"' ~ key ~ '": ' ~ "', coalesce(" ~ value ~ ", 'null')") -%}
    {%- endfor -%}
    concat('{', {{ pieces | join(', ') }}, '}')
{%- endmacro %}
