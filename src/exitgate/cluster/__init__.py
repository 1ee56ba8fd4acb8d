"""Several gateway instances as one network: the agent directory and the interlink."""
