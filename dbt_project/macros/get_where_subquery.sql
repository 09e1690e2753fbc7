{#
    Data tests in a processing cycle check what the cycle built, not the whole history.

    dbt calls get_where_subquery(relation) for the model a data test is attached to; this
    override adds a scope to the test's own `where` when the model names it in
    `meta.test_scope: {column: C, after: watermark | build_start}` and the cycle gave the
    boundary: vars `test_scope_watermark` / `test_scope_build_start`, or the environment's
    WATER_TEST_SCOPE_WATERMARK / WATER_TEST_SCOPE_BUILD_START (what `water cycle` sets).
    `watermark`: rows loaded after the cycle's batch boundary (loaded_at); `build_start`:
    rows the cycle's dbt run (re)computed (computed_at, scored_at ...: stamped by the
    database clock). Without them (dbt build, the daily job, CI) every test runs on the
    full table, as dbt's own macro does.
#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where', '') -%}
    {%- set scope = test_scope_predicate() -%}
    {%- if scope -%}
        {%- set where = '(' ~ where ~ ') and ' ~ scope if where else scope -%}
    {%- endif -%}
    {%- if where -%}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ where }}) dbt_subquery
        {%- endset -%}
        {%- do return(filtered) -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}


{% macro test_scope_predicate() -%}
    {#- Read at run time only: an environment value read while parsing, or a changed --vars,
        would make dbt re-parse the whole project every cycle. -#}
    {%- if not execute -%}
        {%- do return('') -%}
    {%- endif -%}
    {%- set attached = graph.nodes.get(model.attached_node) if model.attached_node else none -%}
    {%- set scope = attached.config.meta.get('test_scope') if attached else none -%}
    {%- if not scope -%}
        {%- do return('') -%}
    {%- endif -%}
    {%- set column = scope['column'] -%}
    {%- set since = var('test_scope_' ~ scope['after'], none)
        or env_var('WATER_TEST_SCOPE_' ~ scope['after'] | upper, '') -%}
    {%- if not since -%}
        {%- do return('') -%}
    {%- endif -%}
    {#- The boundary is an ISO timestamp from the cycle; refuse anything else. -#}
    {%- if not modules.re.fullmatch('[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9:.]+(Z|[+-][0-9:]+)?', since | string) -%}
        {%- do exceptions.raise_compiler_error(
            "test scope boundary must be an ISO timestamp, got " ~ since) -%}
    {%- endif -%}
    {%- do return(column ~ ' > ' ~ utc_timestamp(since | string)) -%}
{%- endmacro %}
