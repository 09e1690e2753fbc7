{#- Incremental scoping, step 3: every (node_id, time_window, window_start) of `widths`
    (name -> seconds) whose window contains a point of `points`, a relation with node_id and
    `at_column`. The selects are joined by `set_operator`; pass 'union distinct' to continue
    a `union distinct` chain. -#}
{% macro windows_containing(points, at_column, widths, set_operator='union all') -%}
    {%- for name, width in widths.items() %}
    select distinct
        node_id,
        '{{ name }}' as time_window,
        {{ time_bucket_start(width, at_column) }} as window_start
    from {{ points }}
    {%- if not loop.last %}
    {{ set_operator }}
    {%- endif %}
    {%- endfor %}
{%- endmacro %}
