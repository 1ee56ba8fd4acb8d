"""The admin command line: groups `org`, `package`, `node` and commands `usage`, `errors`,
all speaking to a running gateway's admin API (mounted on `exitgate` by `exitgate.cli`).

- `cli_common`: the shared options (`--admin`, `--token`, `--data-dir`, `--json`), the
  client context (every failure → one `error: ...` line on stderr, exit 1), tables;
- `cli_accounts`: `org` and `package`;
- `cli_nodes`: `node`;
- `cli_usage`: `usage` and `errors`.

Mount with `app.add_typer(org_app, name="org")` and so on, and
`app.command("usage")(usage_command)`, `app.command("errors")(errors_command)`.
"""

from exitgate.admin.cli_accounts import org_app, package_app
from exitgate.admin.cli_nodes import node_app
from exitgate.admin.cli_usage import errors_command, usage_command

__all__ = ["errors_command", "node_app", "org_app", "package_app", "usage_command"]
