"""exitgate benchmark harness: `.venv/bin/python -m bench` (see bench/README.md)."""
