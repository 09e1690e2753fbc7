{#- Anomalies found by the ML detector (ml.scoring), in the columns of the anomalies contract:
    the anomalies mart unions them with the SQL detections. -#}
with

source as (

    select * from {{ source('ml', 'anomaly_detections') }}

),

final as (

    select
        anomaly_id,
        node_id,
        district,
        window_start,
        detected_at,
        anomaly_type,
        severity,
        measurement_type,
        actual_value,
        expected_value,
        deviation_percentage,
        detection_method,
        details
    from source

)

select * from final
