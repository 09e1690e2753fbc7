{#- Volume (m3) a cumulative totaliser delivered since its previous reading.

    - no previous reading, or one older than var('totaliser_max_gap_s'): null (unknown),
      so a long outage is not booked into the window where the node comes back;
    - counter went up: the difference;
    - counter dropped below var('totaliser_reset_ratio') of its previous value: a reset
      (counter restarted from zero), so the new reading itself is what was delivered;
    - a smaller drop: the meter ran backwards; 0 is delivered (anomalies reports it).
-#}
{% macro totaliser_delta(volume, previous_volume, seconds_since_previous) -%}
    case
        when {{ previous_volume }} is null then null
        when {{ seconds_since_previous }} > {{ var('totaliser_max_gap_s') }} then null
        when {{ volume }} >= {{ previous_volume }} then {{ volume }} - {{ previous_volume }}
        when {{ volume }} < {{ previous_volume }} * {{ var('totaliser_reset_ratio') }} then {{ volume }}
        else 0
    end
{%- endmacro %}
