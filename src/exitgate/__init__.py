"""exitgate: a self-hosted proxy gateway in front of a pool of exit nodes."""

__version__ = "0.1.0"
