"""The node agent: dials a gateway's hub and carries tunnels from this machine's address."""

from exitgate.agent.client import Agent, AgentConfig

__all__ = ["Agent", "AgentConfig"]
