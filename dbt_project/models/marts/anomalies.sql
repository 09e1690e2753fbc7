{{
    config(
        materialized='incremental',
        unique_key='anomaly_id',
        incremental_strategy='merge' if target.type == 'bigquery' else 'replace_by_key',
        on_schema_change='ignore',
        pre_hook=["{{ refresh_statistics(ref('int_metrics_scored')) }}"],
        post_hook=["{{ refresh_statistics(this) }}"],
        indexes=[
            {'columns': ['anomaly_id'], 'unique': true},
            {'columns': ['node_id', 'window_start']},
            {'columns': ['detected_at']},
            {'columns': ['evaluated_at']},
        ] if target.type == 'postgres' else [],
    )
}}
{#- The published anomalies (DESIGN.md contract): one row per anomaly event, with a
    deterministic anomaly_id. Node-level events are reported per 5-minute window in which
    the condition holds (a gap or silence once, at the window of its last reading); a
    district-level event (night flow) once per night, with node_id 'district:<name>'.

    Incremental: detections are re-derived for every window / night re-scored upstream since
    the last run. A previously published anomaly that its re-evaluation no longer finds (late
    data filled a gap, a baseline moved) is sent as a tombstone (`is_retracted`) and removed by
    the `replace_by_key` strategy; detected_at keeps the time an anomaly was first detected.

    More detection sources (the ML detector): add the relation to `extra_sources` below; it
    must have the contract columns. Its rows are synced by anomaly_id and detected_at. -#}
{%- set extra_sources = [ref('stg_ml__anomaly_detections')] -%}
{%- set double = 'float64' if target.type == 'bigquery' else 'double precision' -%}
{%- set timestamp_tz = 'timestamp' if target.type == 'bigquery' else 'timestamp with time zone' -%}
{%- set z_critical = var('anomaly_zscore_critical') -%}
{%- set gap_critical = var('anomaly_gap_critical_s') -%}
{%- set node_methods = [
    'robust_zscore', 'pressure_band', 'step_change', 'no_variation', 'cadence_gap', 'totaliser_check',
    'flow_direction',
] -%}
{%- set all_methods = node_methods + ['night_flow_baseline'] -%}
{%- set contract_columns = [
    'anomaly_id', 'node_id', 'district', 'window_start', 'detected_at', 'anomaly_type', 'severity',
    'measurement_type', 'actual_value', 'expected_value', 'deviation_percentage', 'detection_method', 'details',
] -%}
{#- Node types for which a detector's premise does not hold (docs/anomalies.md "Node types"):
    pumps and valves switch between off and duty points, so neither an hour-of-week baseline
    nor a step means anything on them; tank and reservoir levels fill and drain by design. -#}
{%- set switching = var('anomaly_switching_node_types') -%}
{%- set levels = var('anomaly_level_node_types') -%}
{%- set detectors = [
    {
        'name': 'flow_outlier',
        'skip_node_types': switching,
        'where': 'is_flow_outlier',
        'anomaly_type': "case when flow_robust_z > 0 then 'flow_high' else 'flow_low' end",
        'severity': "case when abs(flow_robust_z) >= " ~ z_critical ~ " then 'critical' else 'warning' end",
        'measurement_type': "'flow_rate'",
        'actual': 'avg_flow_rate',
        'expected': 'flow_baseline_median',
        'method': 'robust_zscore',
        'details': [
            ['robust_z', 'number', 'flow_robust_z'],
            ['baseline_mad', 'number', 'flow_baseline_mad'],
            ['baseline_samples', 'integer', 'flow_baseline_samples'],
            ['local_hour_of_week', 'integer', 'hour_of_week'],
        ],
    },
    {
        'name': 'pressure_outlier',
        'skip_node_types': switching + levels,
        'where': 'is_pressure_outlier',
        'anomaly_type': "case when pressure_robust_z > 0 then 'pressure_high' else 'pressure_low' end",
        'severity': "case when abs(pressure_robust_z) >= " ~ z_critical ~ " then 'critical' else 'warning' end",
        'measurement_type': "'pressure'",
        'actual': 'avg_pressure',
        'expected': 'pressure_baseline_median',
        'method': 'robust_zscore',
        'details': [
            ['robust_z', 'number', 'pressure_robust_z'],
            ['baseline_mad', 'number', 'pressure_baseline_mad'],
            ['baseline_samples', 'integer', 'pressure_baseline_samples'],
            ['local_hour_of_week', 'integer', 'hour_of_week'],
        ],
    },
    {
        'name': 'pressure_band',
        'where': 'is_pressure_out_of_band',
        'anomaly_type': "'pressure_out_of_band'",
        'severity': "case when pressure_band_excess_bar >= " ~ var('anomaly_band_critical_margin_bar') ~ " then 'critical' else 'warning' end",
        'measurement_type': "'pressure'",
        'actual': 'avg_pressure',
        'expected': 'case when avg_pressure < pressure_min_bar then pressure_min_bar else pressure_max_bar end',
        'method': 'pressure_band',
        'details': [
            ['pressure_min_bar', 'number', 'pressure_min_bar'],
            ['pressure_max_bar', 'number', 'pressure_max_bar'],
            ['outside_band_bar', 'number', 'pressure_band_excess_bar'],
            ['window_min_pressure', 'number', 'min_pressure'],
            ['window_max_pressure', 'number', 'max_pressure'],
        ],
    },
    {
        'name': 'flow_step',
        'skip_node_types': switching,
        'where': 'is_flow_step',
        'anomaly_type': "'step_change'",
        'severity': "'warning'",
        'measurement_type': "'flow_rate'",
        'actual': 'avg_flow_rate',
        'expected': 'step_reference_flow_rate',
        'method': 'step_change',
        'details': [
            ['step', 'number', 'flow_step_lps'],
            ['threshold', 'number', 'flow_step_threshold_lps'],
            ['direction', 'text', "case when flow_step_lps > 0 then 'up' else 'down' end"],
        ],
    },
    {
        'name': 'pressure_step',
        'skip_node_types': switching + levels,
        'where': 'is_pressure_step',
        'anomaly_type': "'step_change'",
        'severity': "'warning'",
        'measurement_type': "'pressure'",
        'actual': 'avg_pressure',
        'expected': 'step_reference_pressure',
        'method': 'step_change',
        'details': [
            ['step', 'number', 'pressure_step_bar'],
            ['threshold', 'number', var('anomaly_step_pressure_bar')],
            ['direction', 'text', "case when pressure_step_bar > 0 then 'up' else 'down' end"],
        ],
    },
    {
        'name': 'flow_stuck',
        'where': 'is_flow_stuck',
        'anomaly_type': "'stuck_sensor'",
        'severity': "'warning'",
        'measurement_type': "'flow_rate'",
        'actual': 'stuck_flow_value',
        'expected': 'null',
        'method': 'no_variation',
        'details': [
            ['unchanged_readings', 'integer', 'flow_unchanged_readings'],
            ['min_readings', 'integer', var('anomaly_stuck_min_readings')],
        ],
    },
    {
        'name': 'pressure_stuck',
        'where': 'is_pressure_stuck',
        'anomaly_type': "'stuck_sensor'",
        'severity': "'warning'",
        'measurement_type': "'pressure'",
        'actual': 'stuck_pressure_value',
        'expected': 'null',
        'method': 'no_variation',
        'details': [
            ['unchanged_readings', 'integer', 'pressure_unchanged_readings'],
            ['min_readings', 'integer', var('anomaly_stuck_min_readings')],
        ],
    },
    {
        'name': 'data_gap',
        'where': 'is_gap_after',
        'anomaly_type': "'data_gap'",
        'severity': "case when gap_seconds >= " ~ gap_critical ~ " then 'critical' else 'warning' end",
        'measurement_type': 'cast(null as ' ~ dbt.type_string() ~ ')',
        'actual': 'gap_seconds',
        'expected': 'gap_threshold_s',
        'method': 'cadence_gap',
        'details': [
            ['last_reading_at', 'timestamp', 'last_reading_at'],
            ['next_reading_at', 'timestamp', 'next_reading_at'],
            ['gap_seconds', 'number', 'gap_seconds'],
            ['expected_cadence_s', 'integer', 'expected_cadence_s'],
        ],
    },
    {
        'name': 'totaliser_reset',
        'where': 'totaliser_reset_count > 0',
        'anomaly_type': "'totaliser_reset'",
        'severity': "'info'",
        'measurement_type': "'volume'",
        'actual': 'volume_after_reset',
        'expected': 'volume_before_reset',
        'method': 'totaliser_check',
        'details': [
            ['reset_at', 'timestamp', 'first_totaliser_reset_at'],
            ['resets', 'integer', 'totaliser_reset_count'],
        ],
    },
    {
        'name': 'totaliser_backwards',
        'where': 'totaliser_backwards_count > 0',
        'anomaly_type': "'totaliser_backwards'",
        'severity': "'warning'",
        'measurement_type': "'volume'",
        'actual': '-totaliser_backwards_m3',
        'expected': '0.0',
        'method': 'totaliser_check',
        'details': [
            ['first_backward_step_at', 'timestamp', 'first_totaliser_backwards_at'],
            ['backward_steps', 'integer', 'totaliser_backwards_count'],
            ['backward_volume_m3', 'number', 'totaliser_backwards_m3'],
        ],
    },
    {
        'name': 'reverse_flow',
        'where': 'is_reverse_flow',
        'anomaly_type': "'reverse_flow'",
        'severity': "'warning'",
        'measurement_type': "'flow_rate'",
        'actual': 'avg_flow_rate',
        'expected': '0.0',
        'method': 'flow_direction',
        'details': [
            ['min_flow_rate', 'number', 'min_flow_rate'],
            ['is_bidirectional', 'boolean', 'is_bidirectional'],
        ],
    },
] -%}

with

{% if is_incremental() %}

existing as (

    select * from {{ this }}

),

watermark as (

    select max(evaluated_at) as evaluated_at
    from existing
    where detection_method in ('{{ all_methods | join("', '") }}')  -- noqa: LT05

),

{% endif %}

scored_windows as (

    select
        scored.*,
        coalesce(node_types.node_type, '') as node_type
    from {{ ref('int_metrics_scored') }} as scored
    left join {{ ref('stg_raw__node_metadata') }} as node_types
        on scored.node_id = node_types.node_id
    {% if is_incremental() %}
    where scored.scored_at > coalesce(
        (select watermark.evaluated_at from watermark), {{ utc_timestamp('1900-01-01 00:00:00+00') }}
    )
    {% endif %}

),

scored_nights as (

    select * from {{ ref('int_district_night_flows_scored') }}
    {% if is_incremental() %}
    where scored_at > coalesce(
        (select watermark.evaluated_at from watermark), {{ utc_timestamp('1900-01-01 00:00:00+00') }}
    )
    {% endif %}

),

{# Silence now: no reading for longer than the gap threshold before the data horizon (the
    newest reading of the whole network), so the answer depends on the data, not the clock. -#}
last_readings as (

    select node_id, max(last_reading_at) as last_reading_at
    from {{ ref('int_metrics_windowed') }}
    where time_window = '1day'
    group by node_id

),

silent_nodes as (

    select
        last_readings.node_id,
        coalesce(node_metadata.district, 'unknown') as district,
        last_readings.last_reading_at,
        horizon.horizon_at,
        {{ seconds_between('last_readings.last_reading_at', 'horizon.horizon_at') }} as silent_seconds,
        greatest(
            {{ var('anomaly_gap_cadence_multiple') }}
            * coalesce(node_metadata.expected_cadence_s, {{ var('default_expected_cadence_s') }}),
            300
        ) as gap_threshold_s,
        coalesce(node_metadata.expected_cadence_s, {{ var('default_expected_cadence_s') }}) as expected_cadence_s
    from last_readings
    cross join (select max(last_reading_at) as horizon_at from last_readings) as horizon
    left join {{ ref('stg_raw__node_metadata') }} as node_metadata
        on last_readings.node_id = node_metadata.node_id

),

detections as (

    {% for d in detectors %}
    select
        {{ anomaly_id(
            'node_id', d.anomaly_type, d.measurement_type, 'window_start', "'" ~ d.method ~ "'"
        ) }} as anomaly_id,
        node_id,
        district,
        window_start,
        {{ d.anomaly_type }} as anomaly_type,
        {{ d.severity }} as severity,
        {{ d.measurement_type }} as measurement_type,
        cast({{ d.actual }} as {{ double }}) as actual_value,
        cast({{ d.expected }} as {{ double }}) as expected_value,
        100.0 * ({{ d.actual }} - {{ d.expected }}) / nullif(abs({{ d.expected }}), 0) as deviation_percentage,
        '{{ d.method }}' as detection_method,
        {{ json_details(d.details) }} as details,
        scored_at as evaluated_at,
        cast(null as {{ timestamp_tz }}) as source_detected_at
    from scored_windows
    where {{ d.where }}
    {%- if d.skip_node_types %}
        and node_type not in ('{{ d.skip_node_types | join("', '") }}')  -- noqa: LT05
    {%- endif %}

    union all

    {% endfor %}

    select
        {{ anomaly_id(
            "concat('district:', district)", "'night_flow_high'", "'flow_rate'", 'night_start_at',
            "'night_flow_baseline'"
        ) }}
            as anomaly_id,
        concat('district:', district) as node_id,
        district,
        night_start_at as window_start,
        'night_flow_high' as anomaly_type,
        case
            when change_percent >= {{ 100 * var('night_flow_critical_rise_ratio') }} then 'critical' else 'warning'
        end as severity,
        'flow_rate' as measurement_type,
        cast(min_night_flow_lps as {{ double }}) as actual_value,
        cast(baseline_median_lps as {{ double }}) as expected_value,
        cast(change_percent as {{ double }}) as deviation_percentage,
        'night_flow_baseline' as detection_method,
        {{ json_details([
            ['night_date', 'text', 'night_date'],
            ['threshold_lps', 'number', 'threshold_lps'],
            ['baseline_mad_lps', 'number', 'baseline_mad_lps'],
            ['baseline_nights', 'integer', 'baseline_nights'],
            ['complete_windows', 'integer', 'complete_window_count'],
        ]) }} as details,
        scored_at as evaluated_at,
        cast(null as {{ timestamp_tz }}) as source_detected_at
    from scored_nights
    where is_elevated

    union all

    select
        {{ anomaly_id(
            'node_id', "'sensor_silent'", 'cast(null as ' ~ dbt.type_string() ~ ')',
            time_bucket_start(300, 'last_reading_at'), "'cadence_gap'"
        ) }}
            as anomaly_id,
        node_id,
        district,
        {{ time_bucket_start(300, 'last_reading_at') }} as window_start,
        'sensor_silent' as anomaly_type,
        case when silent_seconds >= {{ gap_critical }} then 'critical' else 'warning' end as severity,
        cast(null as {{ dbt.type_string() }}) as measurement_type,
        cast(silent_seconds as {{ double }}) as actual_value,
        cast(gap_threshold_s as {{ double }}) as expected_value,
        100.0 * (silent_seconds - gap_threshold_s) / gap_threshold_s as deviation_percentage,
        'cadence_gap' as detection_method,
        {{ json_details([
            ['last_reading_at', 'timestamp', 'last_reading_at'],
            ['data_horizon_at', 'timestamp', 'horizon_at'],
            ['expected_cadence_s', 'integer', 'expected_cadence_s'],
        ]) }} as details,
        (select max(rescored.scored_at) from {{ ref('int_metrics_scored') }} as rescored) as evaluated_at,
        cast(null as {{ timestamp_tz }}) as source_detected_at
    from silent_nodes
    where silent_seconds > gap_threshold_s

),

{% for relation in extra_sources %}
extra_source_{{ loop.index }} as (

    select
        {{ contract_columns | reject('equalto', 'detected_at') | join(', ') }},
        detected_at as evaluated_at,
        detected_at as source_detected_at
    from {{ relation }}

),
{% endfor %}

all_detections as (

    select * from detections
    {% for relation in extra_sources %}
    union all
    select * from extra_source_{{ loop.index }}
    {% if is_incremental() %}
    where not exists (
        select 1 from existing
        where existing.anomaly_id = extra_source_{{ loop.index }}.anomaly_id
            and existing.evaluated_at = extra_source_{{ loop.index }}.evaluated_at
    )
    {% endif %}
    {% endfor %}

),

{% if is_incremental() %}

fresh as (

    select
        all_detections.*,
        coalesce(existing.detected_at, all_detections.source_detected_at, {{ dbt.current_timestamp() }})
            as detected_at
    from all_detections
    left join existing
        on all_detections.anomaly_id = existing.anomaly_id

),

{# Published anomalies whose window / night was re-evaluated and that were not found again. -#}
retracted_ids as (

    select existing.anomaly_id
    from existing
    inner join scored_windows
        on existing.node_id = scored_windows.node_id
        and existing.window_start = scored_windows.window_start
    where existing.detection_method in ('{{ node_methods | join("', '") }}')  -- noqa: LT05

    union distinct

    select existing.anomaly_id
    from existing
    where existing.anomaly_type = 'sensor_silent'

    union distinct

    select existing.anomaly_id
    from existing
    inner join scored_nights
        on existing.node_id = concat('district:', scored_nights.district)
        and existing.window_start = scored_nights.night_start_at
    where existing.detection_method = 'night_flow_baseline'

),

tombstones as (

    select existing.*, true as is_retracted
    from existing
    inner join retracted_ids
        on existing.anomaly_id = retracted_ids.anomaly_id
    left join fresh
        on existing.anomaly_id = fresh.anomaly_id
    where fresh.anomaly_id is null

),

final as (

    select {{ contract_columns | join(', ') }}, evaluated_at, false as is_retracted
    from fresh

    union all

    select {{ contract_columns | join(', ') }}, evaluated_at, is_retracted
    from tombstones

)

{% else %}

final as (

    select
        {% for column in contract_columns -%}
        {{ 'coalesce(source_detected_at, ' ~ dbt.current_timestamp() ~ ')' if column == 'detected_at' else column }}
            as {{ column }},
        {% endfor -%}
        evaluated_at
    from all_detections

)

{% endif %}

select * from final
