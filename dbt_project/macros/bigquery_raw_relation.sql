{#- A table of the BigQuery raw dataset ($BIGQUERY_PROJECT_ID.$BIGQUERY_DATASET), the dataset
    the `raw` source points to there (same variables as _staging__sources.yml): for hooks and
    operations, where the graph's sources are not available. -#}
{% macro bigquery_raw_relation(identifier=none) -%}
    {{ return(api.Relation.create(
        database=env_var('BIGQUERY_PROJECT_ID', 'unset-project'),
        schema=env_var('BIGQUERY_DATASET', 'water_infrastructure'),
        identifier=identifier,
    )) }}
{%- endmacro %}
