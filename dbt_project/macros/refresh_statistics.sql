{#- PostgreSQL only: ANALYZE `relation` when it has no column statistics yet or has grown
    by more than 20 % since its page count was last recorded. Without statistics (a table
    just built or bulk-loaded; autovacuum lags) the planner takes big CTEs for a handful of
    rows and picks nested loops that run for minutes. pg_relation_size is current at once,
    unlike the autovacuum counters. Used as a model hook; renders nothing on other engines. -#}
{% macro refresh_statistics(relation) -%}
    {{ return(adapter.dispatch('refresh_statistics', 'water_infrastructure')(relation)) }}
{%- endmacro %}

{% macro default__refresh_statistics(relation) -%}
{%- endmacro %}

{% macro postgres__refresh_statistics(relation) -%}
    {%- set name = relation.include(database=false) -%}
    do $$
    begin
        if (
            select
                not exists (select 1 from pg_statistic as s where s.starelid = c.oid)
                or pg_relation_size(c.oid) > 1.2 * greatest(c.relpages, 1) * current_setting('block_size')::bigint
            from pg_class as c
            where c.oid = to_regclass('{{ name }}')
        ) then
            execute 'analyze {{ name }}';
        end if;
    end
    $$
{%- endmacro %}
