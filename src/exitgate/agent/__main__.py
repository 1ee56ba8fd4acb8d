"""`python -m exitgate.agent ...`: the agent without the main CLI."""

from exitgate.agent.cli import main

main()
