"""`python -m farm.cli`: the `farm` command."""

from farm.cli.main import main

main()
