{#
    Data tests in a processing cycle check what the cycle built, not the whole history.

    dbt calls get_where_subquery(relation) for the model a data test is attached to; this
    override adds a scope to the test's own `where` when the var `test_scope_since` (or the
    environment's WATER_TEST_SCOPE_SINCE, which the cycle sets to its batch boundary, the
    watermark) is set and the model names its scope
    column in `meta.test_scope_column` (loaded_at, computed_at, scored_at ...: stamped
    by the database clock when the row was loaded or (re)computed, so "after the watermark"
    is every row loaded or rebuilt since the previous batch). Without the var (dbt build,
    the daily job, CI) every test runs on the full table, as dbt's own macro does.
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
    {%- set since = var('test_scope_since', none) or env_var('WATER_TEST_SCOPE_SINCE', '') -%}
    {%- if not since -%}
        {%- do return('') -%}
    {%- endif -%}
    {%- set attached = graph.nodes.get(model.attached_node) if model.attached_node else none -%}
    {%- set column = attached.config.meta.get('test_scope_column') if attached else none -%}
    {%- if not column -%}
        {%- do return('') -%}
    {%- endif -%}
    {#- The boundary is an ISO timestamp from the cycle; refuse anything else. -#}
    {%- if not modules.re.fullmatch('[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9:.]+(Z|[+-][0-9:]+)?', since | string) -%}
        {%- do exceptions.raise_compiler_error(
            "var test_scope_since must be an ISO timestamp, got " ~ since) -%}
    {%- endif -%}
    {%- do return(column ~ ' > ' ~ utc_timestamp(since | string)) -%}
{%- endmacro %}
