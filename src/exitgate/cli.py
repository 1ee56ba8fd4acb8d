"""The `exitgate` command line.

`serve` runs the gateway; `checker` runs the ipinfo service; the `org`, `package`, `node`
and `errors` groups speak to a running gateway's admin API (see `admin/cli.py`).
Errors end with one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

import exitgate
from exitgate.admin.cli import errors_command, node_app, org_app, package_app, usage_command
from exitgate.admin.cli_bans import ban_app
from exitgate.admin.cli_catalog import catalog_command
from exitgate.admin.cli_sessions import session_app
from exitgate.admin.cli_webhooks import webhook_app
from exitgate.settings import SettingsError, load_settings

app = typer.Typer(
    name="exitgate",
    help="A self-hosted proxy gateway in front of a pool of exit nodes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
)
app.add_typer(org_app, name="org")
app.add_typer(package_app, name="package")
app.add_typer(node_app, name="node")
app.add_typer(session_app, name="session")
app.add_typer(webhook_app, name="webhook")
app.add_typer(ban_app, name="ban")
app.command("usage")(usage_command)
app.command("errors")(errors_command)
app.command("catalog")(catalog_command)


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"exitgate: {message}", err=True)
    raise typer.Exit(code)


def _free_port(preferred: int) -> int:
    """`preferred` when it is free on loopback, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise OSError("no free loopback port")


def _run(coro: Any) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def settle_heap() -> int:
    """Once the gateway runs: collect the start-up garbage, then freeze what is left (imports,
    settings, the registry: ~160,000 objects that live as long as the process) out of the
    collector's reach. A full (generation 2) collection otherwise rescans them all and stops
    the event loop for 140-270 ms every few seconds under load; frozen, it scans only what
    came later (2-5 ms). Returns the number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def _serve(config: Path | None, demo: bool) -> None:
    from exitgate.app import Gateway
    from exitgate.checker import serve_checker

    overrides: dict[str, dict[str, Any]] = {}
    if demo:
        overrides["exit"] = {"allow_private": True}
    try:
        settings = load_settings(config, overrides=overrides)
    except SettingsError as exc:
        _fail(f"config: {exc}", 2)
        return
    logging.basicConfig(
        level=settings.log.level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    gateway = Gateway(settings)
    try:
        bound = await gateway.start()
    except OSError as exc:
        await gateway.stop(0)
        _fail(f"cannot start: {exc.strerror or exc}")
        return
    settle_heap()  # before anything is announced: a stall now, not under the first requests
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    checker_task = None
    if demo:
        from exitgate import demo as demo_mod
        from exitgate.tasks import spawn

        if gateway.service is None:
            raise RuntimeError("gateway started without its services")
        access = await demo_mod.seed(gateway.service)
        checker_port = _free_port(8091)
        checker_addr = f"127.0.0.1:{checker_port}"
        checker_task = spawn(serve_checker("127.0.0.1", checker_port, None), "demo-checker")
        token = gateway.token if gateway.token_generated else None
        typer.echo(demo_mod.banner(access, bound.proxy_url, bound.admin_url, checker_addr, token))
        if token is None and not settings.admin.token:
            typer.echo(f"  admin token in {settings.data_dir / 'admin.token'}\n")
    else:
        admin = bound.admin_url if bound.admin[0] else "worker 0"
        core = " (compiled core)" if exitgate.compiled() else ""
        typer.echo(f"exitgate: proxy on {bound.proxy_url}, admin API on {admin}{core}")
        if bound.hub is not None:
            where = "configured" if settings.hub.token else str(settings.data_dir / "hub.token")
            typer.echo(
                f"exitgate: agent hub on {bound.hub[0]}:{bound.hub[1]} (agent token: {where})"
            )
        token_file = settings.data_dir / "admin.token"
        if gateway.token_generated:
            typer.echo(f"exitgate: admin token {gateway.token} (shown once; kept in {token_file})")
        elif not settings.admin.token:
            typer.echo(f"exitgate: admin token in {token_file}")
    sys.stdout.flush()
    await stop.wait()
    typer.echo("exitgate: stopping", err=True)
    if checker_task is not None:
        checker_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await checker_task
    await gateway.stop()


@app.command()
def serve(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", envvar="EXITGATE_CONFIG", help="TOML configuration file"),
    ] = None,
    demo: Annotated[
        bool, typer.Option(help="Seed a demo package and loopback exits; print a curl line")
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            min=1, max=256,
            help="Gateway processes sharing the proxy port (SO_REUSEPORT); >1 needs redis_url",
        ),
    ] = 1,
) -> None:
    """Run the gateway: proxy port, admin API, agent hub."""
    if workers > 1:
        _supervise(config, demo, workers)
    _run(_serve(config, demo))


def _supervise(config: Path | None, demo: bool, workers: int) -> None:
    """`--workers N`: check the settings, then run N workers until SIGTERM (never returns)."""
    from exitgate.supervisor import Supervisor, WorkersError, check

    try:
        settings = load_settings(config)
        check(settings, workers, demo)
    except (SettingsError, WorkersError) as exc:
        _fail(str(exc), 2)
        return
    logging.basicConfig(
        level=settings.log.level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    raise typer.Exit(Supervisor(settings, config, workers).run())


@app.command()
def checker(
    listen: Annotated[str, typer.Option(help="host:port to listen on")] = "127.0.0.1:8091",
    mmdb: Annotated[Path | None, typer.Option(help="MaxMind-format geo database")] = None,
    trust_forwarded: Annotated[bool, typer.Option(help="Honour X-Forwarded-For")] = False,
) -> None:
    """Run the ipinfo checker: GET /api/ipinfo tells the caller its address and geo."""
    from exitgate.checker import serve_checker
    from exitgate.settings import split_hostport

    try:
        host, port = split_hostport(listen)
    except ValueError as exc:
        _fail(f"--listen: {exc}", 2)
        return
    _run(serve_checker(host, port, str(mmdb) if mmdb else None, trust_forwarded=trust_forwarded))


@app.command(
    "agent",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def agent(ctx: typer.Context) -> None:
    """Run a node agent: dial into a gateway's hub and serve as an exit (see `agent --help`)."""
    # Imported on use: the agent's dependencies are not needed by the other commands.
    from exitgate.agent.cli import agent_command

    sub = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
    sub.command()(agent_command)
    sub(args=ctx.args, prog_name="exitgate agent")


def main() -> None:
    app()
