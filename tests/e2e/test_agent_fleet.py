"""Agent fleets on one host (issue 9): distinct ids without --id, and no flapping when two live
agents claim one id."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exitgate.agent import identity
from exitgate.model import NodeKind, NodeState
from tests.support.agents import (
    HUB_TOKEN,
    SRC,
    AgentProcess,
    attach_hub,
    detach_hub,
    hub_address,
    wait_online,
    wait_until,
)
from tests.support.gateway import GatewayThread


@pytest.fixture
def agw(tmp_path: Path) -> Iterator[GatewayThread]:
    gateway = GatewayThread(tmp_path, hub={"token": HUB_TOKEN})
    attach_hub(gateway)
    yield gateway
    detach_hub(gateway)
    gateway.stop()


def _online_agents(gw: GatewayThread) -> set[str]:
    return {
        n.id for n in gw.gateway.registry.nodes.values()
        if n.kind is NodeKind.AGENT and n.state is NodeState.ONLINE
    }


def test_state_file_slots_give_each_running_agent_its_own_id(tmp_path: Path) -> None:
    state = tmp_path / "state" / "agent-id"
    held_before = len(identity._HELD)
    ids = [identity.claim_agent_id("", state) for _ in range(3)]
    assert len(set(ids)) == 3
    assert (tmp_path / "state" / "agent-id.3").exists()
    per_bind = identity.claim_agent_id("", state, bind="127.0.0.2")
    assert per_bind not in ids and (tmp_path / "state" / "agent-id@127.0.0.2").exists()
    # the first agent exits: its slot (and id) is free for the next one to start
    os.close(identity._HELD.pop(held_before))
    assert identity.claim_agent_id("", state) == ids[0]
    for fd in identity._HELD[held_before:]:
        os.close(fd)
    del identity._HELD[held_before:]


def test_three_agents_on_one_host_without_id_are_three_nodes(
    agw: GatewayThread, tmp_path: Path
) -> None:
    hub = attach_hub(agw)
    env = dict(os.environ, PYTHONPATH=SRC, XDG_STATE_HOME=str(tmp_path / "xdg"))
    procs = []
    try:
        for i in range(3):
            log = open(tmp_path / f"agent{i}.log", "wb")  # noqa: SIM115 - closed below
            command = [sys.executable, "-m", "exitgate.agent", "--hub", hub_address(hub),
                       "--token", HUB_TOKEN, "--allow-private", "--country", "us"]
            procs.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                           env=env), log))
        wait_until(lambda: len(_online_agents(agw)) == 3, timeout=15)
        first = _online_agents(agw)
        time.sleep(1.5)  # no knocking each other off: the same three stay online
        assert _online_agents(agw) == first
    finally:
        for proc, log in procs:
            proc.kill()
            proc.wait(5)
            log.close()


def test_a_second_live_agent_with_the_same_id_is_refused_without_flapping(
    agw: GatewayThread, tmp_path: Path
) -> None:
    hub = attach_hub(agw)
    (tmp_path / "one").mkdir()
    first = AgentProcess(hub, "twin", "--country", "us", tmp=tmp_path / "one")
    second = None
    try:
        wait_online(agw, "twin")
        link = hub.live["twin"]
        (tmp_path / "two").mkdir()
        second = AgentProcess(hub, "twin", "--country", "us", tmp=tmp_path / "two")
        wait_until(lambda: "already connected" in second.output(), timeout=10)
        time.sleep(1.0)
        assert hub.live["twin"] is link  # the connected one kept its place throughout
        assert "replaced by a newer connection" not in first.output()
        first.stop()
        # once the first is gone the second gets in (it retried with backoff)
        wait_until(lambda: hub.live.get("twin") not in (None, link), timeout=20)
        wait_online(agw, "twin")
    finally:
        first.stop()
        if second is not None:
            second.stop()
