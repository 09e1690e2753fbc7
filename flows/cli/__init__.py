"""The `water` command (flows/cli/main.py) and the demo it runs."""
