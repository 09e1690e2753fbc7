{#- Each window starts on its UTC epoch-aligned boundary and ends `width` later:
    5min = 300 s, 1hour = 3600 s, 1day = 86400 s. -#}
{% test windows_are_aligned(model) %}

{%- set widths = {'5min': 300, '1hour': 3600, '1day': 86400} -%}
select node_id, time_window, window_start, window_end
from {{ model }}
where
    {%- for name, width in widths.items() %}
    (time_window = '{{ name }}' and (
        window_start <> {{ time_bucket_start(width, 'window_start') }}
        or window_end <> {{ add_seconds('window_start', width) }}
    )) or
    {%- endfor %}
    time_window not in ({% for name in widths %}'{{ name }}'{% if not loop.last %}, {% endif %}{% endfor %})

{% endtest %}
