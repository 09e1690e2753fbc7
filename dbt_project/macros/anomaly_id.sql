{#- Deterministic anomaly_id: md5 of subject (node_id, or 'district:<name>' for district-level
    anomalies), anomaly_type, measurement_type, window_start (epoch seconds) and
    detection_method, '|'-separated, nulls as ''. The same event always gets the same id, on
    every engine, so re-running a detector updates its row instead of adding one. -#}
{% macro anomaly_id(subject, anomaly_type, measurement_type, window_start, detection_method) -%}
    {%- set parts = [
        subject,
        anomaly_type,
        measurement_type,
        "cast(" ~ epoch_seconds(window_start) ~ " as " ~ dbt.type_string() ~ ")",
        detection_method,
    ] -%}
    {%- set pieces = [] -%}
    {%- for part in parts -%}
        {%- do pieces.append("coalesce(cast(" ~ part ~ " as " ~ dbt.type_string() ~ "), '')") -%}
    {%- endfor -%}
    {{ md5_hex("concat(" ~ pieces | join(", '|', ") ~ ")") }}
{%- endmacro %}
