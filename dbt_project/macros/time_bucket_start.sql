{#- Start of the UTC epoch-aligned window of `width_s` seconds containing `ts`.
    Floor semantics (also before 1970); the origin is passed explicitly because
    duckdb's default origin (2000-01-03) shifts buckets that do not divide a week. -#}
{% macro time_bucket_start(width_s, ts) -%}
    {{ return(adapter.dispatch('time_bucket_start', 'water_infrastructure')(width_s, ts)) }}
{%- endmacro %}

{% macro default__time_bucket_start(width_s, ts) -%}
    date_bin(interval '{{ width_s }} seconds', {{ ts }}, timestamptz '1970-01-01 00:00:00+00')
{%- endmacro %}

{% macro duckdb__time_bucket_start(width_s, ts) -%}
    time_bucket(interval '{{ width_s }} seconds', {{ ts }}, timestamptz '1970-01-01 00:00:00+00')
{%- endmacro %}

{% macro bigquery__time_bucket_start(width_s, ts) -%}
    timestamp_micros(
        unix_micros({{ ts }})
        - mod(mod(unix_micros({{ ts }}), {{ width_s }} * 1000000) + {{ width_s }} * 1000000, {{ width_s }} * 1000000)
    )
{%- endmacro %}
