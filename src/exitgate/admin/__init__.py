"""The admin side: HTTP API, its client and the CLI groups over it."""
