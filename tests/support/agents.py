"""Agents for end-to-end tests: a hub on the test gateway, agent processes, in-process agents.

`attach_hub(gw)` gives the `GatewayThread` a running hub wired into its dialer (or returns the
gateway's own hub once app.py builds one). `AgentProcess` runs `python -m exitgate.agent` as
a real process (so a test can SIGKILL or SIGSTOP it); `ThreadAgent` runs an `Agent` on its
own event loop in a thread (cheap, for the many-agent cases).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import uvloop

from exitgate.agent.client import Agent, AgentConfig
from exitgate.agent.identity import Flags
from exitgate.hub.mux import MuxLimits
from exitgate.hub.server import Hub, build_hub
from exitgate.model import Node, NodeState
from exitgate.settings import HubSettings
from tests.support.gateway import GatewayThread

HUB_TOKEN = "hub-test-token-0123456789"
SRC = str(Path(__file__).resolve().parents[2] / "src")


def attach_hub(gw: GatewayThread, limits: MuxLimits | None = None) -> Hub:
    """The gateway's hub: its own when app.py starts one, else one started and wired here."""
    own = getattr(gw.gateway, "hub", None)
    if isinstance(own, Hub):
        return own
    attached = getattr(gw, "hub", None)
    if isinstance(attached, Hub):
        return attached

    async def start() -> Hub:
        settings = HubSettings(listen="127.0.0.1:0", token=HUB_TOKEN)
        hub = build_hub(settings, gw.service, gw.gateway.registry, allow_private=True)
        if limits is not None:
            hub.limits = limits
        await hub.start()
        proxy = gw.gateway.proxy
        assert proxy is not None
        proxy.ctx.connector.dialer.agent_dialer = hub.dial
        return hub

    hub = gw.call(start())
    gw.hub = hub  # type: ignore[attr-defined]  # for the teardown below
    return hub


def detach_hub(gw: GatewayThread) -> None:
    hub = getattr(gw, "hub", None)
    if isinstance(hub, Hub):
        gw.call(hub.close(grace=5.0))


def hub_address(hub: Hub) -> str:
    return f"{hub.address[0]}:{hub.address[1]}"


def wait_until(check: Callable[[], Any], timeout: float = 10.0, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(step)


def node_state(gw: GatewayThread, node_id: str) -> NodeState | None:
    node: Node | None = gw.gateway.registry.node(node_id)
    return None if node is None else node.state


def wait_online(gw: GatewayThread, node_id: str, timeout: float = 10.0) -> Node:
    wait_until(lambda: node_state(gw, node_id) is NodeState.ONLINE, timeout)
    node = gw.gateway.registry.node(node_id)
    assert node is not None
    return node


class AgentProcess:
    """`python -m exitgate.agent` with the test hub and token; output kept in a file."""

    def __init__(self, hub: Hub, agent_id: str, *args: str, tmp: Path, token: str = HUB_TOKEN):
        self.agent_id = agent_id
        self.log_path = tmp / f"agent-{agent_id}.log"
        command = [
            sys.executable, "-m", "exitgate.agent",
            "--hub", hub_address(hub), "--token", token, "--id", agent_id,
            "--allow-private", "--state-file", str(tmp / f"{agent_id}.state"),
            *args,
        ]
        env = dict(os.environ, PYTHONPATH=SRC)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


class ThreadAgent:
    """An `Agent` on its own event loop in a daemon thread."""

    def __init__(self, hub: Hub, agent_id: str, **config: Any) -> None:
        flags = config.pop("flags", Flags(country="us"))
        self.config = AgentConfig(
            hub=hub_address(hub), token=config.pop("token", HUB_TOKEN), agent_id=agent_id,
            flags=flags, allow_private=True, **config,
        )
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.agent: Agent = self.call(self._make())
        self.result: Future[int] = asyncio.run_coroutine_threadsafe(self.agent.run(), self.loop)

    async def _make(self) -> Agent:
        return Agent(self.config)

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def drain(self) -> None:
        self.loop.call_soon_threadsafe(self.agent.drain)

    def stop(self) -> None:
        if not self.result.done():
            self.loop.call_soon_threadsafe(self.agent.stop_now)
            with contextlib.suppress(Exception):
                self.result.result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


class RawAgent(asyncio.Protocol):
    """An agent written by hand on the wire: hello, then a minimal h2 server.

    It answers PINGs and SETTINGS (so it stays alive) and, with `answer=True`, accepts every
    CONNECT with 200 without connecting anywhere. Hostile tests write bytes of their choice
    to `transport`; scale tests open a thousand of these on one loop.
    """

    def __init__(self, hello: bytes, *, answer: bool = False) -> None:
        self.hello = hello
        self.answer = answer
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        loop = asyncio.get_running_loop()
        self.reply: asyncio.Future[bytes] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.h2: Any = None
        self.streams: list[int] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.hello:
            self.transport.write(self.hello)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if not self.reply.done():
            self.buf += data
            line, sep, rest = bytes(self.buf).partition(b"\n")
            if not sep:
                return
            self.reply.set_result(line)
            if line.startswith(b"OK"):
                self._start_h2(rest)
            return
        if self.h2 is not None:
            self._feed(data)

    def _start_h2(self, rest: bytes) -> None:
        from h2.config import H2Configuration
        from h2.connection import H2Connection

        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.h2.initiate_connection()
        self._send()
        if rest:
            self._feed(rest)

    def _feed(self, data: bytes) -> None:
        from h2.events import RequestReceived
        from h2.exceptions import ProtocolError

        try:
            events = self.h2.receive_data(data)
        except ProtocolError:
            self._send()
            return
        for event in events:
            if isinstance(event, RequestReceived) and event.stream_id is not None:
                self.streams.append(event.stream_id)
                if self.answer:
                    self.h2.send_headers(event.stream_id, [(b":status", b"200")])
        self._send()

    def _send(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.h2.data_to_send())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_result(b"")
        if not self.closed.done():
            self.closed.set_result(None)


def hello_for(agent_id: str, token: str = HUB_TOKEN, **attrs: Any) -> bytes:
    """A hello line as the wire has it, unchecked (hostile tests send bad values)."""
    import json

    from exitgate.hub.protocol import MAGIC

    body = {"token": token, "id": agent_id, "ip": "", "attrs": attrs or {"country": "us"}}
    return MAGIC + json.dumps(body).encode() + b"\n"


async def raw_agent(hub: Hub, hello: bytes, *, answer: bool = False) -> RawAgent:
    loop = asyncio.get_running_loop()
    _, agent = await loop.create_connection(
        lambda: RawAgent(hello, answer=answer), hub.address[0], hub.address[1]
    )
    return agent
