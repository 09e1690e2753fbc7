{{ config(materialized='view') }}
{#- Leakage estimates whose local day is now complete, with the day's water-balance loss:
    the input of `water evaluate` for the leakage model. -#}
with

estimates as (

    select * from {{ ref('stg_ml__leakage_estimates') }}

),

balanced_days as (

    select * from {{ ref('ml_leakage_features') }}
    where hours_balanced >= 20

),

final as (

    select
        estimates.model_id,
        estimates.district,
        estimates.estimate_date,
        estimates.water_loss_ls_estimated,
        estimates.previous_day_loss_ls,
        estimates.night_loss_ls,
        balanced_days.water_loss_ls as water_loss_ls_actual,
        balanced_days.system_input_ls
    from estimates
    inner join balanced_days
        on estimates.district = balanced_days.district
        and estimates.estimate_date = balanced_days.local_date

)

select * from final
