{#- The tables dbt reads as sources on BigQuery, created empty if missing, so that
    `dbt build --target bigquery` works on a fresh dataset (on-run-start; metadata-only
    statements, no bytes billed). Elsewhere the loaders and ml.registry create them.

    The landing table is the BigQuery raw store: `land_sensor_readings` copies each new row
    of the production table `sensor_readings_ml` into it once, with a real ingestion time
    (`loaded_at`), so incremental models are driven by arrival, not by event time. Day
    partitions on the reading time and clustering on `loaded_at` let both the landing step's
    late window and the models' "loaded since the watermark" filter prune (docs/bigquery.md). -#}
{% macro create_bigquery_sources() -%}
    {{ return(adapter.dispatch('create_bigquery_sources')()) }}
{%- endmacro %}

{% macro default__create_bigquery_sources() -%}
    {#- Not BigQuery: nothing to do. -#}
{%- endmacro %}

{% macro bigquery__create_bigquery_sources() -%}
    {%- set raw = bigquery_raw_relation() -%}
    {%- set ml = api.Relation.create(database=target.project, schema=target.schema ~ '_ml') -%}
    {%- set registry = api.Relation.create(database=target.project, schema=target.schema) -%}
    {%- for relation in [raw, ml, registry] -%}
        {%- do adapter.create_schema(relation) -%}
    {%- endfor -%}
    {%- set landing = bigquery_raw_relation('sensor_readings_landed') -%}
    {#- processing_jobs, pipeline_state and quality_checks live in the PostgreSQL serving tier
        of the hybrid deployment (docs/bigquery.md); their empty twins here keep the
        `operations` source and its tests resolvable on a BigQuery build. -#}
    {%- set statements = [
        "create table if not exists " ~ landing ~ " (
            `timestamp` timestamp, node_id string, node_name string, flow_rate float64,
            pressure float64, temperature float64, volume float64, quality_score float64,
            loaded_at timestamp not null, batch_id string not null, batch_row int64 not null)
        " ~ bigquery_table_layout('timestamp_trunc(`timestamp`, day)', ['loaded_at', 'node_id']),
        "create table if not exists " ~ bigquery_raw_relation('sensor_readings_landing_log') ~ " (
            batch_id string not null, landed_at timestamp not null, scope_start timestamp not null)",
        "create table if not exists " ~ raw.incorporate(path={'identifier': 'node_metadata'}) ~ " (
            node_id string not null, node_name string, node_type string, district string,
            latitude float64, longitude float64, balance_role string, expected_cadence_s int64,
            pressure_min_bar float64, pressure_max_bar float64, is_bidirectional bool,
            updated_at timestamp not null)",
        "create table if not exists " ~ registry.incorporate(path={'identifier': 'ml_models'}) ~ " (
            model_id string not null, model_type string not null, version int64 not null,
            status string not null, active_model_type string, algorithm string not null,
            metrics string, champion_metrics string, primary_metric string,
            training_start timestamp, training_end timestamp, holdout_start timestamp,
            holdout_end timestamp, training_rows int64, artifact_path string not null,
            artifact_sha256 string not null, created_at timestamp not null,
            validated_at timestamp, activated_at timestamp, retired_at timestamp, reason string)",
        "create table if not exists " ~ registry.incorporate(path={'identifier': 'model_performance'}) ~ " (
            model_id string not null, model_type string not null, evaluation_date date not null,
            n_predictions int64 not null, rmse float64, mae float64, mape float64, mase float64,
            interval_coverage float64, drift_score float64, mean_horizon_hours float64,
            details string, evaluated_at timestamp not null)",
        "create table if not exists " ~ registry.incorporate(path={'identifier': 'processing_jobs'}) ~ " (
            job_id string not null, job_type string not null, job_name string, status string not null,
            triggered_by string, flow_run_id string, runner string, created_at timestamp not null,
            started_at timestamp, completed_at timestamp, duration_seconds float64,
            data_start timestamp, data_end timestamp, rows_in int64, rows_rejected int64,
            result_summary string, error_message string)",
        "create table if not exists " ~ registry.incorporate(path={'identifier': 'pipeline_state'}) ~ " (
            state_key string not null, watermark timestamp, job_id string, updated_at timestamp not null)",
        "create table if not exists " ~ registry.incorporate(path={'identifier': 'quality_checks'}) ~ " (
            run_id string not null, stage string not null, suite string not null,
            expectation string not null, expectation_type string, column_name string,
            severity string not null, status string not null, success bool,
            observed_value string, unexpected_count int64, checked_rows int64,
            checked_at timestamp not null)",
        "create table if not exists " ~ ml.incorporate(path={'identifier': 'anomaly_detections'}) ~ " (
            anomaly_id string not null, node_id string not null, district string,
            window_start timestamp not null, detected_at timestamp not null,
            anomaly_type string not null, severity string not null, measurement_type string,
            actual_value float64, expected_value float64, deviation_percentage float64,
            detection_method string not null, details string)",
        "create table if not exists " ~ ml.incorporate(path={'identifier': 'leakage_estimates'}) ~ " (
            model_id string not null, district string not null, estimate_date date not null,
            water_loss_ls_estimated float64 not null, water_loss_m3_estimated float64 not null,
            water_loss_percent_estimated float64, system_input_ls_baseline float64,
            minimum_night_flow_ls float64, night_loss_ls float64, previous_day_loss_ls float64,
            created_at timestamp not null)",
        "create table if not exists " ~ ml.incorporate(path={'identifier': 'flow_forecasts'}) ~ " (
            prediction_id string not null, model_id string not null, node_id string not null,
            prediction_timestamp timestamp not null, target_timestamp timestamp not null,
            horizon_hours int64 not null, predicted_flow_rate float64 not null,
            flow_rate_lower float64 not null, flow_rate_upper float64 not null,
            confidence_score float64 not null, created_at timestamp not null)",
    ] -%}
    {%- for statement in statements -%}
        {%- do run_query(statement) -%}
    {%- endfor -%}
{%- endmacro %}
