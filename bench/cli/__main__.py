"""`python -m rbench.cli`: the same as the `rbench` command."""

from rbench.cli import main

main()
