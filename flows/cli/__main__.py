"""`python -m flows.cli ...` is the `water` command."""

from flows.cli.main import main

main()
