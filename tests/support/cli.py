"""The admin CLI as a user types it, against one admin API: `AdminCli(url, token)`.

Every call adds `--admin URL --token TOKEN` after the words given and runs the real
`exitgate` app (typer's CliRunner) with the EXITGATE_* variables cleared, so only what the
test passes counts. `fails` checks the CLI's error contract: exit 1, nothing on stdout,
one `error: ...` line on stderr, no traceback.
"""

from __future__ import annotations

import json
from types import EllipsisType
from typing import Any

from typer.testing import CliRunner, Result

from exitgate.cli import app

CLEAN_ENV: dict[str, str | None] = {
    "EXITGATE_ADMIN_TOKEN": None,
    "EXITGATE_ADMIN_URL": None,
    "EXITGATE_DATA_DIR": None,
}


class AdminCli:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.runner = CliRunner()

    def run(
        self,
        *args: str,
        token: str | EllipsisType | None = ...,
        stdin: str | None = None,
        env: dict[str, str | None] | None = None,
        admin: str | None = None,
    ) -> Result:
        """`exitgate ARGS --admin URL --token T`: this CLI's token unless `token` says
        another, or None for no --token at all."""
        argv = [*args, "--admin", admin or self.url]
        if token is ...:
            token = self.token
        if token is not None:
            argv += ["--token", token]
        return self.runner.invoke(app, argv, input=stdin, env={**CLEAN_ENV, **(env or {})})

    def ok(self, *args: str, **kw: Any) -> str:
        result = self.run(*args, **kw)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return result.stdout

    def json(self, *args: str, **kw: Any) -> Any:
        return json.loads(self.ok(*args, "--json", **kw))

    def fails(self, *args: str, **kw: Any) -> str:
        result = self.run(*args, **kw)
        assert result.exit_code == 1, (result.stdout, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert "Traceback" not in result.stderr
        return lines[0]
