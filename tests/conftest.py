"""Shared fixtures. Hypothesis profiles: HYPOTHESIS_PROFILE=ci (default) or dev or thorough."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support import compiled
from tests.support.gateway import GatewayThread
from tests.support.origin import EchoServer, Origin
from tests.support.receiver import Receiver

settings.register_profile("ci", max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("thorough", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: the session's first process starts it
        return
    args, where = list(config.args), config.invocation_params.dir
    if compiled.selected(args, where, config.option.markexpr, config.option.keyword):
        compiled.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        compiled.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The compiled-build tests go last, so the background job has the run's length to finish
    before they wait for it."""
    items.sort(key=lambda item: item.path == compiled.TEST_FILE)


XDG_DIRS = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME",
            "XDG_RUNTIME_DIR")


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the working folder, the home directory or the caller's EXITGATE_*
    settings: each runs in a fresh empty folder with a fresh HOME, and subprocesses inherit
    that. (A `serve --demo` run in the checkout leaves an `admin.token` there, which the CLI
    would otherwise pick up.)"""
    work = tmp_path_factory.mktemp("cwd")
    home = tmp_path_factory.mktemp("home")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    for name in XDG_DIRS:
        monkeypatch.setenv(name, str(home / name.lower()))
    for name in list(os.environ):
        if name.startswith("EXITGATE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.stop()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A loopback webhook receiver that checks every signature."""
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GatewayThread]:
    gateway = GatewayThread(tmp_path)
    yield gateway
    gateway.stop()
