{#- `dbt run-operation land_sensor_readings --args '{batch_id: <32 hex>}'` (run by
    `water load bigquery`): copy every row of the production table `sensor_readings_ml`
    that is not yet in the landing table into it, stamped with the landing time.

    One INSERT ... SELECT per cycle. New rows are found by comparing whole rows (NULL-safe)
    within a scope both tables are day-partitioned on, so the statement prunes:
    readings of the last `late_window_hours` (a row up to that late is landed exactly once),
    plus the tiny NULL / pre-`min_valid_timestamp` partitions, and everything dated in the
    future (a reading dated 2030 lands once and staging quarantines it).
    `since` ('YYYY-MM-DD', optional) widens the scope for a reconciliation run
    (`water load bigquery --start-date`), `until` ('YYYY-MM-DD', optional, exclusive) bounds it.
    Values are rendered as literals (emulators reject query parameters); every one is
    validated here first. -#}
{% macro land_sensor_readings(batch_id, late_window_hours=48, since=none, until=none) -%}
    {{ return(adapter.dispatch('land_sensor_readings')(batch_id, late_window_hours, since, until)) }}
{%- endmacro %}

{% macro default__land_sensor_readings(batch_id, late_window_hours, since, until) -%}
    {{ exceptions.raise_compiler_error("land_sensor_readings: only the bigquery target has a landing step; other targets load through `water load`") }}
{%- endmacro %}

{% macro bigquery__land_sensor_readings(batch_id, late_window_hours, since, until) -%}
    {%- set day = '^[0-9]{4}-[0-9]{2}-[0-9]{2}$' -%}
    {%- if not modules.re.match('^[0-9a-f]{32}$', batch_id | string) -%}
        {{ exceptions.raise_compiler_error("land_sensor_readings: batch_id must be 32 hex digits, got " ~ batch_id) }}
    {%- endif -%}
    {%- if not modules.re.match('^[0-9]{1,5}$', late_window_hours | string) or late_window_hours | int < 1 -%}
        {{ exceptions.raise_compiler_error("land_sensor_readings: late_window_hours must be a whole number of hours >= 1, got " ~ late_window_hours) }}
    {%- endif -%}
    {%- for name, value in [('since', since), ('until', until)] -%}
        {%- if value is not none and not modules.re.match(day, value | string) -%}
            {{ exceptions.raise_compiler_error("land_sensor_readings: " ~ name ~ " must be YYYY-MM-DD, got " ~ value) }}
        {%- endif -%}
    {%- endfor -%}

    {%- do create_bigquery_sources() -%}
    {%- set landing = bigquery_raw_relation('sensor_readings_landed') -%}
    {%- set production = landing.incorporate(path={'identifier': 'sensor_readings_ml'}) -%}
    {%- set columns = ['timestamp', 'node_id', 'node_name', 'flow_rate', 'pressure', 'temperature', 'volume', 'quality_score'] -%}
    {%- set ts = adapter.quote('timestamp') -%}
    {#- One landing time for the batch, recorded in the landing log before the rows land: the
        models' partition scope (bigquery_scope_start) then covers every landed row. -#}
    {%- set now = run_query('select current_timestamp() as now').rows[0]['now'] -%}
    {%- set landed_at = "timestamp '" ~ now.strftime('%Y-%m-%d %H:%M:%S.%f') ~ "+00'" -%}
    {%- set window_start = now - modules.datetime.timedelta(hours=late_window_hours | int) -%}
    {#- A literal, not timestamp_sub(...): the plainest constant for partition pruning. -#}
    {%- set start = utc_timestamp(since ~ ' 00:00:00+00') if since else "timestamp '" ~ window_start.strftime('%Y-%m-%d %H:%M:%S.%f') ~ "+00'" -%}
    {%- set scope -%}
        (
            ({{ ts }} >= {{ start }}{% if until %} and {{ ts }} < {{ utc_timestamp(until ~ ' 00:00:00+00') }}{% endif %})
            or {{ ts }} > {{ landed_at }}
            or {{ ts }} is null
            or {{ ts }} < {{ utc_timestamp(var('min_valid_timestamp') ~ ' 00:00:00+00') }}
        )
    {%- endset -%}
    {%- set column_list -%}
        {%- for c in columns %}{{ adapter.quote(c) }}{{ ", " if not loop.last }}{% endfor -%}
    {%- endset -%}

    {%- set sql -%}
        insert into {{ landing }} ({{ column_list }}, loaded_at, batch_id, batch_row)
        with

        arrivals as (

            select {{ column_list }} from {{ production }} where {{ scope }}

        ),

        landed as (

            select {{ column_list }} from {{ landing }} where {{ scope }}

        ),

        new_rows as (

            select *
            from arrivals
            where not exists (
                select 1
                from landed
                where
                {%- for c in columns %}
                    {{ "and " if not loop.first }}arrivals.{{ adapter.quote(c) }} is not distinct from landed.{{ adapter.quote(c) }}
                {%- endfor %}
            )

        )

        select
            {{ column_list }},
            {{ landed_at }} as loaded_at,
            '{{ batch_id }}' as batch_id,
            row_number() over (order by {{ ts }}, node_id, flow_rate, pressure) as batch_row
        from new_rows
    {%- endset -%}
    {%- do run_query(
        "insert into " ~ bigquery_raw_relation('sensor_readings_landing_log')
        ~ " (batch_id, landed_at, scope_start) values ('" ~ batch_id ~ "', " ~ landed_at
        ~ ", timestamp_trunc(" ~ start ~ ", day))"
    ) -%}
    {%- set response, table = adapter.execute(sql) -%}
    {#- The scope narrowed to the earliest day of the rows that did land (a normal cycle: today),
        read back within the same partitions; the pre-2000 and NULL partitions are always in
        the quarantine's scope. If this fails, the wider scope above stays: safe, dearer. -#}
    {%- set narrowed -%}
        merge into {{ bigquery_raw_relation('sensor_readings_landing_log') }} as log
        using (
            select timestamp_trunc(coalesce(min({{ ts }}), {{ landed_at }}), day) as scope_start
            from {{ landing }}
            where {{ scope }}
                and batch_id = '{{ batch_id }}'
                and {{ ts }} >= {{ utc_timestamp(var('min_valid_timestamp') ~ ' 00:00:00+00') }}
        ) as landed
        on log.batch_id = '{{ batch_id }}'
        when matched then update set scope_start = landed.scope_start
    {%- endset -%}
    {%- do run_query(narrowed) -%}
    {{ log("landed " ~ (response.rows_affected if response.rows_affected is not none else '?') ~ " new row(s) of " ~ production ~ " into " ~ landing ~ " (batch " ~ batch_id ~ ")", info=True) }}
{%- endmacro %}
