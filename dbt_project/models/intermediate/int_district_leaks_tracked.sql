{{
    config(
        materialized='table',
        indexes=[
            {'columns': ['district', 'night_date'], 'unique': true},
        ] if target.type == 'postgres' else [],
    )
}}
{#- Leak state of each district night after night (docs/anomalies.md "Leaks from the balance"):
    a one-sided CUSUM on the night loss, walked night by night (a recursive CTE: the state of a
    night depends on the previous night's).

    While no leak is open: z = (night loss - trailing baseline of the night's day type) / sigma
    (int_district_night_losses), S = max(0, S + z - k). The nights since S last left 0 are a run;
    its first night is the onset estimate ("since when"), and the baselines of that night (both
    day types, from nights before it only) are the run's reference. A leak opens when S >= h or
    one night alone has z >= var('leak_single_night_z').

    While a leak is open its reference stays frozen, so the leak never becomes normal: excess =
    night loss - reference of the night's day type; estimated leak flow = that excess. The leak
    closes (repair) after var('leak_close_nights') complete nights in a row whose excess is below
    var('leak_close_ratio') of the open nights' mean excess or below var('leak_close_sigmas')
    sigma; then S restarts from 0. No z (and no alarm) before var('leak_min_baseline_nights')
    baseline nights of the night's day type.
    Incomplete nights (null loss) keep the state. At most the last var('leak_tracking_days')
    nights are walked (BigQuery caps recursion at 500 steps). -#}
{%- set double = 'float64' if target.type == 'bigquery' else 'double precision' -%}
{%- set k = var('leak_cusum_k') -%}
{%- set h = var('leak_cusum_h') -%}
{%- set min_nights = var('leak_min_baseline_nights') -%}
{%- set close_ratio = var('leak_close_ratio') -%}
{%- set close_nights = var('leak_close_nights') -%}
{#- Expressions of the recursive step: p = the previous night's state, c = this night. -#}
{%- set s_closed = "case when c.z_score is null then p.cusum"
    ~ " else greatest(0.0, p.cusum + c.z_score - " ~ k ~ ") end" -%}
{%- set in_run = "(p.is_open or " ~ s_closed ~ " > 0)" -%}
{%- set run_starts = "(not p.is_open and p.cusum = 0 and " ~ s_closed ~ " > 0)" -%}
{%- set alarm = "(" ~ s_closed ~ " >= " ~ h
    ~ " or coalesce(c.z_score, 0) >= " ~ var('leak_single_night_z') ~ ")" -%}
{%- set frozen = {} -%}
{%- for column in ['weekday_baseline_lps', 'weekend_baseline_lps'] -%}
    {%- do frozen.update({column: "case when not " ~ in_run ~ " then null when " ~ run_starts
        ~ " then c." ~ column ~ " else p.ref_" ~ column ~ " end"}) -%}
{%- endfor -%}
{%- set excess = "c.night_loss_lps - case when c.is_weekend then ("
    ~ frozen['weekend_baseline_lps'] ~ ") else (" ~ frozen['weekday_baseline_lps'] ~ ") end" -%}
{%- set mean_excess = "p.excess_sum_lps / nullif(p.excess_nights, 0)" -%}
{%- set below = "case when not p.is_open then 0 when (" ~ excess ~ ") is null then p.below_nights"
    ~ " when (" ~ excess ~ ") < greatest(" ~ close_ratio ~ " * " ~ mean_excess ~ ", "
    ~ var('leak_close_sigmas') ~ " * c.sigma_lps) then p.below_nights + 1 else 0 end" -%}
{%- set is_open = "case when p.is_open then (" ~ below ~ ") < " ~ close_nights
    ~ " else " ~ alarm ~ " end" -%}

with recursive

losses as (

    select * from {{ ref('int_district_night_losses') }}

),

scoped as (

    select
        losses.*,
        case when losses.is_weekend then weekend_baseline_lps else weekday_baseline_lps end as baseline_lps,
        case when losses.is_weekend then weekend_sigma_lps else weekday_sigma_lps end as sigma_lps,
        case when losses.is_weekend then weekend_baseline_nights else weekday_baseline_nights end
            as baseline_nights
    from losses
    where losses.night_date > (
        select {{ add_days('max(night_date)', -var('leak_tracking_days')) }}
        from losses
    )

),

ordered as (

    select
        scoped.*,
        cast(
            case
                when scoped.baseline_nights >= {{ min_nights }}
                    then (scoped.night_loss_lps - scoped.baseline_lps) / scoped.sigma_lps
            end as {{ double }}
        ) as z_score,
        row_number() over (partition by scoped.district order by scoped.night_date) as night_seq
    from scoped

),

walk as (

    select
        district,
        cast(0 as bigint) as night_seq,
        false as is_open,
        cast(0 as {{ double }}) as cusum,
        cast(null as date) as onset_date,
        cast(null as date) as alarm_date,
        cast(null as {{ double }}) as ref_weekday_baseline_lps,
        cast(null as {{ double }}) as ref_weekend_baseline_lps,
        cast(null as {{ double }}) as excess_lps,
        cast(0 as {{ double }}) as excess_sum_lps,
        cast(0 as bigint) as excess_nights,
        cast(0 as bigint) as below_nights,
        cast(0 as bigint) as leak_number
    from (select distinct district from ordered) as districts

    union all

    select
        c.district,
        cast(c.night_seq as bigint) as night_seq,
        {{ is_open }} as is_open,
        cast(
            case
                when p.is_open and not ({{ is_open }}) then 0
                when p.is_open then p.cusum
                else {{ s_closed }}
            end as {{ double }}
        ) as cusum,
        case
            when not {{ in_run }} then null
            when {{ run_starts }} then c.night_date
            else p.onset_date
        end as onset_date,
        case
            when p.is_open then p.alarm_date
            when {{ alarm }} then c.night_date
        end as alarm_date,
        cast({{ frozen['weekday_baseline_lps'] }} as {{ double }}) as ref_weekday_baseline_lps,
        cast({{ frozen['weekend_baseline_lps'] }} as {{ double }}) as ref_weekend_baseline_lps,
        cast({{ excess }} as {{ double }}) as excess_lps,
        cast(
            case
                when not {{ in_run }} then 0
                when {{ run_starts }} then coalesce({{ excess }}, 0)
                else p.excess_sum_lps + coalesce({{ excess }}, 0)
            end as {{ double }}
        ) as excess_sum_lps,
        cast(
            case
                when not {{ in_run }} then 0
                when {{ run_starts }} then case when ({{ excess }}) is null then 0 else 1 end
                else p.excess_nights + case when ({{ excess }}) is null then 0 else 1 end
            end as bigint
        ) as excess_nights,
        cast({{ below }} as bigint) as below_nights,
        cast(p.leak_number + case when not p.is_open and {{ alarm }} then 1 else 0 end as bigint) as leak_number
    from walk as p
    inner join ordered as c
        on p.district = c.district
        and c.night_seq = p.night_seq + 1

),

final as (

    select
        ordered.district,
        ordered.night_date,
        ordered.is_weekend,
        ordered.night_start_at,
        ordered.night_end_at,
        ordered.night_loss_lps,
        ordered.baseline_lps,
        ordered.sigma_lps,
        ordered.z_score,
        walk.cusum,
        walk.is_open,
        {#- the night the leak was raised on and the night it opened with (a leak that is open
            on this night belongs to leak number leak_number of the district) -#}
        walk.alarm_date,
        walk.onset_date,
        walk.leak_number,
        walk.ref_weekday_baseline_lps,
        walk.ref_weekend_baseline_lps,
        walk.excess_lps,
        walk.excess_sum_lps / nullif(walk.excess_nights, 0) as mean_excess_lps,
        {#- the leak flow now: mean excess of its last nights (a growing leak is followed,
            one noisy night is damped) -#}
        case
            when walk.is_open then avg(walk.excess_lps) over (
                partition by ordered.district, walk.leak_number, walk.is_open
                order by ordered.night_date
                rows between {{ var('leak_estimate_nights') - 1 }} preceding and current row
            )
        end as estimated_leak_flow_lps,
        walk.below_nights
    from walk
    inner join ordered
        on walk.district = ordered.district
        and walk.night_seq = ordered.night_seq

)

select * from final
