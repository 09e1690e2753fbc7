"""The base library every other package builds on: settings, warehouse, dbt runner, raw DDL,
Redis connection, progress. Imports nothing else from the repository (enforced in `make lint`)."""
