"""The `org`, `package` and `node` CLI groups against a live admin API server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import exitgate.admin.cli as cli_mod
from tests.e2e.test_admin_api import TOKEN, AdminServer, serve_admin
from tests.support.cli import AdminCli


@pytest.fixture
def api(tmp_path: Path) -> Iterator[AdminServer]:
    yield from serve_admin(tmp_path / "cli.db")


@pytest.fixture
def cli(api: AdminServer) -> AdminCli:
    return AdminCli(api.url, TOKEN)


def test_org_commands(cli: AdminCli) -> None:
    org = cli.json("org", "create", "acme", "--credits", "12.5")
    assert org["name"] == "acme" and org["credits"] == 12.5
    assert cli.json("org", "show", org["id"]) == org
    table = cli.run("org", "list")
    assert table.exit_code == 0 and org["id"] in table.stdout and "acme" in table.stdout
    updated = cli.json("org", "update", org["id"], "--name", "acme2", "--unlimited")
    assert updated == {"id": org["id"], "name": "acme2", "credits": None}
    assert cli.json("org", "update", org["id"], "--credits", "3")["credits"] == 3.0
    assert [o["id"] for o in cli.json("org", "list")] == [org["id"]]
    assert cli.fails("org", "show", "org_nope") == "error: 404: org not found: org_nope"


def test_package_commands(cli: AdminCli, api: AdminServer) -> None:
    org = cli.json("org", "create", "acme")
    pkg = cli.json(
        "package",
        "create",
        "--org",
        org["id"],
        "--name",
        "scraper",
        "--rps",
        "5",
        "--concurrency",
        "none",
        "--traffic",
        "1000",
        "--allow-ip",
        "203.0.113.7",
        "--allow-ip",
        "10.0.0.0/8",
        "--protocol",
        "http",
        "--protocol",
        "socks5",
        "--network",
        "res",
        "--rule",
        "country",
        "--rule",
        "session",
    )
    key = pkg["key"]
    assert (pkg["rps_limit"], pkg["concurrency_limit"], pkg["traffic_limit_bytes"]) == (
        5,
        None,
        1000,
    )
    assert pkg["ip_allowlist"] == ["203.0.113.7/32", "10.0.0.0/8"]
    assert (pkg["protocols"], pkg["networks"], pkg["rules"]) == (
        ["http", "socks5"],
        ["res"],
        ["country", "session"],
    )
    human = cli.run("package", "create", "--org", org["id"])
    assert human.exit_code == 0 and "key" in human.stdout and "shown only now" in human.stderr

    shown = cli.run("package", "show", pkg["id"], "--json")
    assert key not in shown.stdout and not {"key", "key_hash"} & set(json.loads(shown.stdout))
    assert json.loads(shown.stdout)["usage"] == {"bytes_up": 0, "bytes_down": 0, "requests": 0}
    listed = cli.run("package", "list", "--org", org["id"])
    assert listed.exit_code == 0 and pkg["id"] in listed.stdout and key not in listed.stdout

    up = cli.json(
        "package",
        "update",
        pkg["id"],
        "--rps",
        "none",
        "--clear-allowlist",
        "--all-rules",
        "--network",
        "mob",
        "--network",
        "dc",
        "--name",
        "n2",
    )
    assert (up["rps_limit"], up["ip_allowlist"], up["rules"], up["networks"], up["name"]) == (
        None,
        [],
        None,
        ["dc", "mob"],
        "n2",
    )
    assert up["traffic_limit_bytes"] == 1000  # untouched
    for command, status in [("pause", "paused"), ("suspend", "suspended"), ("resume", "active")]:
        assert cli.json("package", command, pkg["id"])["status"] == status
        assert api.registry.package(pkg["id"]).status.value == status  # type: ignore[union-attr]
    assert cli.json("package", "update", pkg["id"], "--status", "paused")["status"] == "paused"

    rotated = cli.json("package", "rotate-key", pkg["id"])
    assert rotated["id"] == pkg["id"] and rotated["key"] != key
    assert api.registry.package_by_key(key) is None
    assert api.registry.package_by_key(rotated["key"]) is not None


def test_package_errors_are_one_line(cli: AdminCli) -> None:
    org = cli.json("org", "create", "acme")
    line = cli.fails("package", "create", "--org", org["id"], "--allow-ip", "10.0.0.0/99")
    assert line == "error: 422: ip_allowlist.0: Value error, must be an IP address or CIDR network"
    line = cli.fails("package", "create", "--org", org["id"], "--rps", "-1")
    assert line.startswith("error: 422: rps_limit: ")
    assert cli.fails("package", "create", "--org", org["id"], "--rps", "lots") == (
        "error: --rps: expected an integer or 'none'"
    )
    assert cli.fails("package", "create", "--org", "org_nope") == (
        "error: 422: org_id: unknown organization"
    )
    assert cli.fails("package", "pause", "pkg_nope") == "error: 404: package not found: pkg_nope"
    assert cli.fails("package", "rotate-key", "../orgs").startswith("error: 404")


def test_node_commands_keep_the_url_secret(cli: AdminCli, api: AdminServer) -> None:
    url = "socks5://alice:s3cret@127.0.0.1:1080"
    result = cli.run(
        "node",
        "add",
        "upstream",
        "--url",
        "-",
        "--country",
        "US",
        "--city",
        "New York",
        "--network",
        "res",
        "--asn",
        "7018",
        "--json",
        stdin=url + "\n",
    )
    assert result.exit_code == 0, result.stderr
    node = json.loads(result.stdout)
    assert node["url"] == "socks5://alice:***@127.0.0.1:1080" and "s3cret" not in result.stdout
    assert (node["country"], node["city"], node["asn"]) == ("us", "new_york", 7018)
    assert api.registry.node(node["id"]).url == url  # type: ignore[union-attr]

    direct = cli.json(
        "node", "add", "direct", "--bind", "127.0.0.2", "--country", "de", "--state", "offline"
    )
    assert (direct["bind_address"], direct["state"]) == ("127.0.0.2", "offline")

    assert [n["id"] for n in cli.json("node", "list", "--country", "us")] == [node["id"]]
    assert [n["id"] for n in cli.json("node", "list", "--state", "offline")] == [direct["id"]]
    table = cli.run("node", "list")
    assert table.exit_code == 0 and direct["id"] in table.stdout and "s3cret" not in table.stdout
    assert cli.json("node", "show", node["id"])["url"] == node["url"]

    drained = cli.json("node", "update", node["id"], "--state", "draining", "--isp", "AT&T")
    assert (drained["state"], drained["isp"]) == ("draining", "at_t")
    gone = cli.json("node", "remove", direct["id"])
    assert gone == {"id": direct["id"], "removed": True}
    assert api.registry.node(direct["id"]) is None
    assert cli.fails("node", "remove", direct["id"]) == (
        f"error: 404: node not found: {direct['id']}"
    )
    line = cli.fails("node", "add", "upstream", "--url", "ftp://bob:t0psecret@h:21")
    assert line == "error: 422: url: Value error, scheme must be http:// or socks5://"
    assert "t0psecret" not in line
    assert cli.fails("node", "add", "direct", "--country", "xx").startswith("error: 422: country")


def test_token_sources_and_failures(cli: AdminCli, tmp_path: Path) -> None:
    assert "invalid admin token" in cli.fails("org", "list", token="wrong")
    assert "no admin token" in cli.fails("org", "list", token=None)
    data = tmp_path / "data"
    data.mkdir()
    (data / "admin.token").write_text(TOKEN + "\n")
    ok = cli.run("org", "list", "--json", "--data-dir", str(data), token=None)
    assert ok.exit_code == 0 and json.loads(ok.stdout) == []
    ok = cli.run("org", "list", token=None, env={"EXITGATE_DATA_DIR": str(data)})
    assert ok.exit_code == 0, ok.stderr
    ok = cli.run("org", "list", token=None, env={"EXITGATE_ADMIN_TOKEN": TOKEN})
    assert ok.exit_code == 0, ok.stderr
    line = cli.fails("org", "list", admin="http://127.0.0.1:9")
    assert line.startswith("error: cannot reach the admin API at http://127.0.0.1:9")
    assert TOKEN not in line


def test_plain_table_without_rich(cli: AdminCli, monkeypatch: pytest.MonkeyPatch) -> None:
    cli.json("org", "create", "acme", "--credits", "1")
    monkeypatch.setitem(sys.modules, "rich.console", None)
    result = cli.run("org", "list")
    assert result.exit_code == 0
    header, row = result.stdout.splitlines()
    assert header.split() == ["id", "name", "credits"]
    assert row.split()[1:] == ["acme", "1.0"]


def test_real_process_exit_status(api: AdminServer) -> None:
    src = Path(cli_mod.__file__).resolve().parents[2]
    script = (
        "import typer; from exitgate.admin.cli import org_app; "
        "app = typer.Typer(); app.add_typer(org_app, name='org'); app()"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXITGATE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    env["EXITGATE_ADMIN_URL"] = api.url
    env["EXITGATE_ADMIN_TOKEN"] = TOKEN
    done = subprocess.run(
        [sys.executable, "-c", script, "org", "show", "org_nope"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "error: 404: org not found: org_nope"
    done = subprocess.run(
        [sys.executable, "-c", script, "org", "create", "acme", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == "acme"
