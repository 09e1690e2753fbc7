{#- One row per reporting node: `closed_until`, the instant up to which its windows are closed.
    A window is closed once the node has reported at or after its end, or the network's clock
    (its newest reading) is var('window_close_grace_s') past it, so a node that fell silent
    does not hold its last hour and day open forever. Used by computed_metrics (which hours
    and days to publish) and network_efficiency_latest (which periods are complete). -#}
{% macro node_closing_clocks(nodes_relation) -%}
    select
        node_id,
        greatest(
            last_reading_at,
            {{ add_seconds(
                '(select max(last_reading_at) from ' ~ nodes_relation ~ ')',
                -var('window_close_grace_s')
            ) }}
        ) as closed_until
    from {{ nodes_relation }}
    where last_reading_at is not null
{%- endmacro %}
