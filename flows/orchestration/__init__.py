"""Prefect: the flows, the deployments `water serve` runs, run reports. The only package
that imports prefect."""
