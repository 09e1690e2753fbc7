{#- Custom incremental strategy `replace_by_key` (dbt's documented extension point):
    delete the target rows whose unique_key appears in the new batch, then insert the
    batch rows that are not tombstones (`is_retracted`). A model emits a tombstone for a
    previously published row that its re-evaluation no longer finds, so a retracted
    anomaly disappears instead of lingering, which `merge` cannot express portably.
    The target's columns (from the full build, without is_retracted) are the ones inserted. -#}
{% macro get_incremental_replace_by_key_sql(arg_dict) %}
    {%- set target = arg_dict['target_relation'] -%}
    {%- set source = arg_dict['temp_relation'] -%}
    {%- set unique_key = arg_dict['unique_key'] -%}
    {%- if unique_key is none or unique_key is not string -%}
        {{ exceptions.raise_compiler_error("replace_by_key needs a single-column unique_key") }}
    {%- endif -%}
    {%- set columns = arg_dict['dest_columns'] | map(attribute='name') | reject('equalto', 'is_retracted') | list -%}
    {%- set quoted = [] -%}
    {%- for column in columns -%}{%- do quoted.append(adapter.quote(column)) -%}{%- endfor -%}
    delete from {{ target }}
    where {{ unique_key }} in (select {{ unique_key }} from {{ source }});

    insert into {{ target }} ({{ quoted | join(', ') }})
    select {{ quoted | join(', ') }}
    from {{ source }}
    where not is_retracted
{% endmacro %}
