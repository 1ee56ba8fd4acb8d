"""`python -m exitgate`: the command line (what `--workers` starts each worker with)."""

from exitgate.cli import main

main()
