{#- BigQuery cost scoping, step 3 (a post-hook of every scoped model): record in
    pipeline_state what the model has folded in: landing batches landed before this run
    started, and no later than what its scoped parents had folded in when it read them.
    The next run's bigquery_scope_start reads the batches landed since. '' elsewhere. -#}
{% macro bigquery_record_scope() -%}
    {%- if target.type != 'bigquery' or not execute -%}
        {{ return('') }}
    {%- endif -%}
    {%- set parent_keys = [] -%}
    {%- for node_id in model.depends_on.nodes -%}
        {%- set parent = graph.nodes.get(node_id) -%}
        {%- if parent and parent.config.get('meta', {}).get('bigquery_scope') -%}
            {%- do parent_keys.append("'" ~ bigquery_scope_key(api.Relation.create(schema=parent.schema, identifier=parent.alias)) ~ "'") -%}
        {%- endif -%}
    {%- endfor -%}
    {%- set started = "timestamp '" ~ run_started_at.strftime('%Y-%m-%d %H:%M:%S.%f') ~ "+00'" -%}
    {%- set state = bigquery_state_relation() -%}
    merge into {{ state }} as state
    using (
        select
            '{{ bigquery_scope_key(this) }}' as state_key,
            {% if parent_keys -%}
            least({{ started }}, coalesce((
                select min(parents.watermark) from {{ state }} as parents
                where parents.state_key in ({{ parent_keys | join(', ') }})
            ), {{ started }}))
            {%- else -%}
            {{ started }}
            {%- endif %} as watermark
    ) as folded
    on state.state_key = folded.state_key
    when matched then update set watermark = folded.watermark, updated_at = current_timestamp()
    when not matched then insert (state_key, watermark, updated_at)
        values (folded.state_key, folded.watermark, current_timestamp())
{%- endmacro %}
