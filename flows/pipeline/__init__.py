"""The processing pipeline in plain Python: the cycle, backfill and model jobs, their job
records, run lock and watermark. No Prefect here: the CLI, Prefect and the API trigger all call it."""
