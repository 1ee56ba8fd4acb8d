"""The admin CLI's shared options: declared once (`admin_options`), present on every command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from exitgate.admin.cli_common import DEFAULT_ADMIN_URL, Conn, admin_options, utc_times
from exitgate.cli import app

SHARED = ["--admin", "--token", "--data-dir"]
# The commands that print only a sentence, and so never took --json.
NO_JSON = {
    ("ban", "add"),
    ("ban", "lift"),
    ("session", "end"),
    ("webhook", "enable"),
    ("webhook", "disable"),
    ("webhook", "delete"),
}
NOT_ADMIN = {"serve", "checker", "agent"}


def admin_commands() -> dict[tuple[str, ...], Any]:
    root = typer.main.get_command(app)
    found: dict[tuple[str, ...], Any] = {}
    for name, command in root.commands.items():  # type: ignore[attr-defined]
        if name in NOT_ADMIN:
            continue
        for sub, leaf in getattr(command, "commands", {name: command}).items():
            found[(name, sub) if sub != name else (name,)] = leaf
    return found


def test_every_admin_command_ends_with_the_shared_options() -> None:
    commands = admin_commands()
    assert len(commands) == 33 and set(commands) >= NO_JSON
    for path, command in commands.items():
        opts = [p.opts[0] for p in command.params if p.opts[0].startswith("--")]
        tail = SHARED if path in NO_JSON else [*SHARED, "--json"]
        assert opts[-len(tail):] == tail, path
        assert opts.count("--json") == (path not in NO_JSON), path
        by_name = {p.opts[0]: p for p in command.params}
        assert by_name["--admin"].envvar == "EXITGATE_ADMIN_URL"
        assert by_name["--admin"].default == DEFAULT_ADMIN_URL
        assert by_name["--token"].envvar == "EXITGATE_ADMIN_TOKEN"
        assert by_name["--data-dir"].envvar == "EXITGATE_DATA_DIR"


probe = typer.Typer()
seen: list[tuple[Conn, str, int]] = []


@probe.command("with-json")
@admin_options()
def _with_json(conn: Conn, name: str, *, count: int = 1) -> None:
    """Record what the command was given."""
    seen.append((conn, name, count))


@probe.command("quiet")
@admin_options(with_json=False)
def _quiet(conn: Conn, name: str) -> None:
    seen.append((conn, name, 0))


@pytest.fixture(autouse=True)
def _fresh() -> None:
    seen.clear()


def test_options_reach_the_command_as_one_conn(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"EXITGATE_ADMIN_TOKEN": None, "EXITGATE_DATA_DIR": None,
           "EXITGATE_ADMIN_URL": "http://127.0.0.1:1"}
    argv = ["with-json", "x", "--count", "3", "--token", "t", "--data-dir", str(tmp_path),
            "--json"]
    done = runner.invoke(probe, argv, env=env)
    assert done.exit_code == 0, done.output
    assert seen == [(Conn("http://127.0.0.1:1", "t", tmp_path, True), "x", 3)]
    done = runner.invoke(probe, ["quiet", "y", "--admin", "http://127.0.0.1:2"], env=env)
    assert done.exit_code == 0, done.output
    assert seen[-1] == (Conn("http://127.0.0.1:2", None, Path("."), False), "y", 0)
    refused = runner.invoke(probe, ["quiet", "y", "--json"], env=env)
    assert refused.exit_code == 2 and "No such option: --json" in refused.output


def test_command_keeps_its_name_and_help() -> None:
    assert _with_json.__name__ == "_with_json"
    assert _with_json.__doc__ == "Record what the command was given."


def test_utc_times() -> None:
    item = {"at": 1_767_225_600, "next_at": None, "created_at": 1_767_225_600.25, "n": 1}
    shown = utc_times(item, ("at", "next_at", "created_at", "missing"))
    assert shown == {"at": "2026-01-01T00:00:00Z", "next_at": None,
                     "created_at": "2026-01-01T00:00:00Z", "n": 1}
    assert item["at"] == 1_767_225_600  # a copy: the JSON form keeps the numbers
    assert utc_times({"time": 0.5}, ("time",), timespec="milliseconds") == {
        "time": "1970-01-01T00:00:00.500Z"
    }
