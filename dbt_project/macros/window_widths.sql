{#- The published window widths (DESIGN.md "Windowed metrics"): time_window -> seconds, in
    nesting order. One definition for every model that buckets, rolls up or scopes windows. -#}
{% macro window_widths() -%}
    {{ return({'5min': 300, '1hour': 3600, '1day': 86400}) }}
{%- endmacro %}
