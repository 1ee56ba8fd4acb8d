"""`exitgate agent`: run a node agent (mounted by the main CLI as `app.command("agent")`).

Exit codes: 0 after a clean drain (SIGTERM/SIGINT), 1 when the hub refused the token or the
attributes for good, 2 for bad flags.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer

from exitgate.agent.client import Agent, AgentConfig
from exitgate.agent.identity import Flags, check_flags, claim_agent_id, default_state_file
from exitgate.hub.protocol import check_ip
from exitgate.settings import split_hostport


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"exitgate agent: {message}", err=True)
    raise typer.Exit(code)


def _tls(tls: bool, insecure: bool, ca: Path | None) -> ssl.SSLContext | None:
    if not (tls or insecure or ca):
        return None
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def agent_command(  # noqa: PLR0917 - one parameter per flag is typer's way
    hub: Annotated[
        str, typer.Option(envvar="EXITGATE_AGENT_HUB", help="host:port of the gateway's hub")
    ],
    token: Annotated[
        str, typer.Option(envvar="EXITGATE_AGENT_TOKEN", help="the hub token (hub.token)")
    ],
    country: Annotated[str, typer.Option(help="ISO 3166-1 alpha-2, lowercase (us)")] = "",
    region: Annotated[str, typer.Option(help="lowercase, _ for spaces (new_york)")] = "",
    city: Annotated[str, typer.Option(help="lowercase, _ for spaces (new_york)")] = "",
    isp: Annotated[str, typer.Option(help="lowercase, _ for spaces (comcast)")] = "",
    asn: Annotated[int | None, typer.Option(help="AS number")] = None,
    network: Annotated[str, typer.Option(help="res, mob or dc (default res)")] = "",
    bind: Annotated[str, typer.Option(help="local address to reach targets from")] = "",
    id_: Annotated[
        str, typer.Option("--id", help="stable node id (default: kept in --state-file)")
    ] = "",
    state_file: Annotated[
        Path | None, typer.Option(help="where the generated id is kept")
    ] = None,
    checker: Annotated[
        str, typer.Option(help="URL of an `exitgate checker` to learn address and geo")
    ] = "",
    tls: Annotated[bool, typer.Option("--tls", help="TLS to the hub")] = False,
    insecure: Annotated[bool, typer.Option("--insecure", help="TLS without verification")] = False,
    ca: Annotated[Path | None, typer.Option("--ca", help="CA file to verify the hub")] = None,
    allow_private: Annotated[
        bool, typer.Option(help="let names resolve to loopback/private addresses (labs)")
    ] = False,
    max_streams: Annotated[int, typer.Option(min=1, help="concurrent tunnels accepted")] = 1024,
    drain_timeout: Annotated[
        float, typer.Option(min=0, help="seconds open tunnels get after SIGTERM")
    ] = 30.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
) -> None:
    """Run a node agent: dial the hub and carry tunnels from this machine's address."""
    try:
        split_hostport(hub)
    except ValueError as exc:
        _fail(f"--hub: {exc}")
    flags = Flags(country, region, city, isp, asn, network)
    try:
        check_flags(flags)
        if bind:
            check_ip(bind)
        identity = claim_agent_id(id_, state_file or default_state_file(), bind)
    except ValueError as exc:
        _fail(str(exc))
        return
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        _fail("--log-level: one of debug, info, warning, error")
    try:
        context = _tls(tls, insecure, ca)
    except (OSError, ssl.SSLError) as exc:
        _fail(f"--ca: {exc}")
        return
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    config = AgentConfig(
        hub=hub,
        token=token,
        agent_id=identity,
        flags=flags,
        bind=bind,
        checker=checker,
        tls=context,
        allow_private=allow_private,
        max_streams=max_streams,
        drain_timeout=drain_timeout,
    )
    code = _run(_main(config))
    if code:
        raise typer.Exit(code)


async def _main(config: AgentConfig) -> int:
    agent = Agent(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, agent.drain)
    return await agent.run()


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)


def main() -> None:
    """`python -m exitgate.agent`: the same command without the main CLI."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(agent_command)
    app(prog_name="exitgate agent")
