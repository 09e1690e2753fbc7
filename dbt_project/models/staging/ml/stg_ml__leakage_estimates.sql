{#- Daily leakage estimates per district written by ml.scoring (see docs/ml.md). -#}
with

source as (

    select * from {{ source('ml', 'leakage_estimates') }}

),

final as (

    select
        model_id,
        district,
        estimate_date,
        water_loss_ls_estimated,
        water_loss_m3_estimated,
        water_loss_percent_estimated,
        system_input_ls_baseline,
        minimum_night_flow_ls,
        night_loss_ls,
        previous_day_loss_ls,
        created_at
    from source

)

select * from final
