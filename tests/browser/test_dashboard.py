"""The dashboard in a real browser: Playwright for Python driving Debian's Chromium
(`/usr/bin/chromium`; `.ci/run` installs it). One gateway and one browser for the module;
each test has its own browser context (own cookies).

What a user does in the UI must reach the data path: a package paused in the UI answers the
next proxy request with 407 PACKAGE_PAUSED; a node taken offline answers 502 NODE_NOT_FOUND
to a request only it matched. The pages run under the strict CSP: any CSP violation or
script error on any page fails `test_every_page_renders_under_the_csp`.

Screenshots: `EXITGATE_SCREENSHOTS=docs/screenshots .venv/bin/pytest tests/browser -q`
writes one PNG per page (the README shows `overview.png`); without the variable nothing is
written.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from exitgate.agent.identity import Flags
from exitgate.model import Network
from exitgate.store.history import MinuteRow, minute_of
from tests.support.agents import ThreadAgent, attach_hub, wait_until
from tests.support.gateway import TOKEN, GatewayThread
from tests.support.origin import Origin
from tests.support.receiver import Receiver

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} missing (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect
# Read when the module loads: the autouse `_isolated` fixture removes EXITGATE_* variables
# and moves into an empty folder before each test (so a relative path is resolved now).
_SHOTS = os.environ.get("EXITGATE_SCREENSHOTS", "")
SHOTS = str(Path(_SHOTS).resolve()) if _SHOTS else ""


HOOKS = {"allow_private": True, "retry_base": 0.2, "retry_max_delay": 0.4, "timeout": 2.0}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayThread, Origin]]:
    gw = GatewayThread(
        tmp_path_factory.mktemp("dash"),
        dashboard={"sample_interval": 0.5},
        webhooks=HOOKS,  # the receivers these tests run listen on loopback
    )
    origin = Origin()
    try:
        yield gw, origin
    finally:
        origin.stop()
        gw.stop()


@pytest.fixture(scope="module")
def browser(site: Any) -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any, site: tuple[GatewayThread, Origin]) -> Iterator[Any]:
    gw, _ = site
    viewport = {"width": 1280, "height": 860}
    context = browser.new_context(base_url=gw.bound.admin_url, viewport=viewport)
    context.set_default_timeout(10_000)
    p = context.new_page()
    p.problems = []  # console errors, CSP violations, uncaught exceptions
    p.on("console", lambda m: p.problems.append(m.text) if m.type == "error" else None)
    p.on("pageerror", lambda e: p.problems.append(str(e)))
    yield p
    context.close()


def login(page: Any, token: str = TOKEN) -> None:
    page.goto("/login")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")


def api(gw: GatewayThread) -> httpx.Client:
    return httpx.Client(
        base_url=gw.bound.admin_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )


def make_package(gw: GatewayThread, name: str) -> tuple[str, str]:
    with api(gw) as c:
        org = c.post("/v1/orgs", json={"name": f"org-{name}"}).json()["id"]
        made = c.post("/v1/packages", json={"org_id": org, "name": name})
        assert made.status_code == 201, made.text
        return made.json()["id"], made.json()["key"]


def through_proxy(gw: GatewayThread, user: str, key: str, url: str) -> requests.Response:
    proxy = gw.proxy_url(user, key)
    return requests.get(url, proxies={"http": proxy, "https": proxy}, timeout=10)


def test_a_wrong_token_cannot_log_in(page: Any) -> None:
    login(page, "not-the-token")
    assert page.url.endswith("/login")
    assert "Wrong admin token" in page.inner_text("main")
    assert not [c for c in page.context.cookies() if c["name"] == "eg_session"]
    page.goto("/packages")  # still outside
    assert page.url.endswith("/login")


def test_login_sets_a_strict_cookie_and_shows_a_package_made_through_the_api(
    page: Any, site: tuple[GatewayThread, Origin]
) -> None:
    gw, _ = site
    package_id, _key = make_package(gw, "seen-in-ui")
    login(page)
    assert page.url.endswith("/")
    cookie = next(c for c in page.context.cookies() if c["name"] == "eg_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.click("nav >> text=Packages")
    row = page.locator(f"tr[data-package='{package_id}']")
    assert "seen-in-ui" in row.inner_text() and "active" in row.inner_text()


def test_pausing_in_the_ui_answers_407_package_paused(
    page: Any, site: tuple[GatewayThread, Origin]
) -> None:
    gw, origin = site
    gw.direct_node(bind="127.0.0.2", country="us")
    package_id, key = make_package(gw, "to-pause")
    assert through_proxy(gw, "country-us", key, f"{origin.url}/ip").status_code == 200
    login(page)
    page.goto(f"/packages/{package_id}")
    page.click("button[value=paused]")
    assert page.inner_text("#status") == "paused"
    answer = through_proxy(gw, "country-us", key, f"{origin.url}/ip")
    assert answer.status_code == 407
    assert answer.headers["X-SOAX-Error"] == "PACKAGE_PAUSED"
    page.click("button[value=active]")  # and back
    assert through_proxy(gw, "country-us", key, f"{origin.url}/ip").status_code == 200


def test_taking_a_node_offline_in_the_ui_answers_502_node_not_found(
    page: Any, site: tuple[GatewayThread, Origin]
) -> None:
    gw, origin = site
    node = gw.direct_node(bind="127.0.0.3", country="fr", city="paris", network=Network.RES)
    _, key = make_package(gw, "node-off")
    assert through_proxy(gw, "country-fr", key, f"{origin.url}/ip").json()["ip"] == "127.0.0.3"
    login(page)
    page.goto("/nodes")
    page.select_option("select[name=country]", "fr")  # htmx swaps the table in place
    page.wait_for_url("**/nodes?*country=fr*")
    expect(page.locator("tr[data-node]")).to_have_count(1)
    row = page.locator(f"tr[data-node='{node.id}']")
    row.locator("button:text-is('Offline')").click()
    assert "offline" in page.locator(f"tr[data-node='{node.id}']").inner_text()
    answer = through_proxy(gw, "country-fr", key, f"{origin.url}/ip")
    assert answer.status_code == 502
    assert answer.headers["X-SOAX-Error"] == "NODE_NOT_FOUND"


def test_the_proxy_tester_shows_the_exit_address_the_origin_saw(
    page: Any, site: tuple[GatewayThread, Origin]
) -> None:
    gw, origin = site
    node = gw.direct_node(bind="127.0.0.4", country="jp", city="tokyo")
    _, key = make_package(gw, "tester")
    login(page)
    page.goto("/tester")
    page.fill("input[name=url]", f"{origin.url}/ip")
    page.fill("input[name=rules]", "country-jp")
    page.fill("input[name=key]", key)
    page.click("button[type=submit].primary")
    assert page.inner_text("#exit-ip") == "127.0.0.4"
    assert page.inner_text("#node") == node.id
    assert page.inner_text("#status") == "200"
    assert key not in page.content()  # the key is never echoed back
    page.fill("input[name=key]", key)  # a rule no node matches: the exact code
    page.fill("input[name=rules]", "country-br")
    page.click("button[type=submit].primary")
    assert "NODE_NOT_FOUND" in page.inner_text("#outcome")
    assert page.inner_text("#status") == "502"


def test_after_traffic_the_charts_draw_data(page: Any, site: tuple[GatewayThread, Origin]) -> None:
    gw, origin = site
    gw.direct_node(bind="127.0.0.5", country="ca")
    _, key = make_package(gw, "traffic")
    for _ in range(5):
        assert through_proxy(gw, "country-ca", key, f"{origin.url}/ip").status_code == 200
    time.sleep(1.2)  # two samples of the 0.5 s history writer
    login(page)
    expect(page.locator(".chart[data-ready='1']")).to_have_count(3)
    assert page.locator("#chart-traffic canvas").count() >= 1
    assert int(page.locator("#chart-traffic .chart").get_attribute("data-points")) >= 1
    data = page.request.get("/data/history?span=hour").json()
    assert sum(data["bytes_down"]) > 0 and sum(data["requests"]) > 0
    page.click("#chart-traffic button[data-range=week]")  # the other ranges draw too
    expect(page.locator("#chart-traffic .chart")).to_have_attribute("data-ready", "1")
    assert page.locator("#chart-traffic canvas").count() >= 1


def test_a_form_posted_without_its_csrf_token_is_refused(
    page: Any, site: tuple[GatewayThread, Origin]
) -> None:
    gw, _ = site
    package_id, _key = make_package(gw, "csrf")
    login(page)
    # the browser's own session cookie goes along; only the token is missing or wrong
    for form in ({"status": "paused"}, {"status": "paused", "csrf": "forged"}):
        answer = page.request.post(f"/packages/{package_id}/status", form=form)
        assert answer.status == 403
    assert gw.call(gw.service.get_package(package_id)).status.value == "active"
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    ok = page.request.post(
        f"/packages/{package_id}/status",
        form={"status": "paused", "csrf": csrf},
        max_redirects=0,
    )
    assert ok.status == 303  # the same post with the token goes through
    assert gw.call(gw.service.get_package(package_id)).status.value == "paused"


PAGES = {
    "overview": "/",
    "packages": "/packages",
    "package": None,  # filled with a package id
    "organizations": "/orgs",
    "nodes": "/nodes",
    "agents": "/agents",
    "sessions": "/sessions",
    "coverage": "/coverage",
    "webhooks": "/webhooks",
    "tester": "/tester",
}


def seed_history(gw: GatewayThread) -> None:
    """For the screenshots only: a day of made-up per-minute history before this test's own
    live minute, so the overview's charts have a shape (documented in the README)."""
    assert gw.gateway.history is not None
    store = gw.gateway.history.store
    now = minute_of(time.time())
    for i in range(1, 24 * 60):
        wave = 1 + math.sin(i / 40) * 0.6 + math.sin(i / 7) * 0.15
        requests = int(900 * wave)
        store.add(
            MinuteRow(
                now - 60 * i,
                bytes_up=int(2.4e6 * wave),
                bytes_down=int(3.1e7 * wave),
                requests=requests,
                errors=requests // 40,
                tunnels=int(30 * wave),
                connections=int(45 * wave),
            )
        )


def test_every_page_renders_under_the_csp(
    page: Any, site: tuple[GatewayThread, Origin], request: pytest.FixtureRequest
) -> None:
    gw, origin = site
    gw.direct_node(bind="127.0.0.6", country="de", city="berlin", isp="dtag", asn=3320)
    package_id, key = make_package(gw, "tour")
    for i in range(3):  # a live session and some usage to show
        through_proxy(gw, f"country-de-session-tour{i}", key, f"{origin.url}/ip")
    assert through_proxy(gw, "country-br", key, f"{origin.url}/ip").status_code == 502
    hub = attach_hub(gw)
    agent = ThreadAgent(hub, "agent-tour-1", token="test-hub-token", flags=Flags(country="nl"))
    request.addfinalizer(agent.stop)  # a live agent thread must not outlive a failed test
    wait_until(lambda: "agent-tour-1" in hub.live)
    receiver = Receiver()  # an endpoint with a delivered test event, for the Webhooks page
    request.addfinalizer(receiver.stop)
    with api(gw) as c:
        org = c.get("/v1/packages/" + package_id).json()["org_id"]
        body = {"url": receiver.url, "org_id": org, "description": "billing"}
        made = c.post("/v1/webhooks", json=body | {"events": ["package.usage.threshold"]})
        assert made.status_code == 201, made.text
        assert c.post(f"/v1/webhooks/{made.json()['id']}/test").status_code == 202
    receiver.wait_for("webhook.test")
    shots = SHOTS
    if shots:
        seed_history(gw)
    login(page)
    page.goto("/login")  # the login page itself, as a logged-out user sees it
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(shots) / "login.png"))
    for name, path in PAGES.items():
        response = page.goto(path or f"/packages/{package_id}")
        assert response is not None and response.status == 200, name
        headers = response.headers
        assert "default-src 'self'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        if page.locator(".chart").count():
            expect(page.locator(".chart:not([data-ready='1'])")).to_have_count(0)
        if name == "tester":  # show a result, as an operator would see it
            page.fill("input[name=url]", f"{origin.url}/ip")
            page.fill("input[name=rules]", "country-de-city-berlin")
            page.fill("input[name=key]", key)
            page.click("button[type=submit].primary")
            assert page.inner_text("#exit-ip") == "127.0.0.6"
        if shots:
            page.screenshot(path=str(Path(shots) / f"{name}.png"), full_page=True)
    assert "tour" in page.context.request.get("/sessions").text()
    assert "agent-tour-1" in page.context.request.get("/agents").text()
    assert "NODE_NOT_FOUND" in page.context.request.get(f"/packages/{package_id}").text()
    page.goto("/sessions")  # end a live session from the UI
    page.locator("tr[data-session='tour0'] button:text-is('End')").click()
    assert "session tour0 ended" in page.inner_text(".flash")
    assert page.locator("tr[data-session='tour0']").count() == 0
    assert page.locator("tr[data-session='tour1']").count() == 1
    assert page.problems == []


def hook_id(gw: GatewayThread, org: str) -> str:
    with api(gw) as c:
        (found,) = c.get("/v1/webhooks", params={"org_id": org}).json()
        return str(found["id"])


def test_webhooks_are_managed_in_the_ui(
    page: Any, site: tuple[GatewayThread, Origin], receiver: Receiver
) -> None:
    gw, _ = site
    org = gw.org("hooks-ui")
    login(page)
    page.click("nav >> text=Webhooks")
    page.select_option("select[name=org_id]", org)
    page.fill("input[name=url]", receiver.url)
    page.select_option("select[name=events]", ["package.status.changed", "org.credits.low"])
    page.click("#add-endpoint button[type=submit]")
    secret = page.inner_text("#new-secret")  # shown once, in the answer to the form
    assert secret.startswith("whsec_")
    endpoint = hook_id(gw, org)
    row = page.locator(f"tr[data-endpoint='{endpoint}']")
    assert "org.credits.low, package.status.changed" in row.inner_text()
    assert "enabled" in row.inner_text()
    page.goto("/webhooks")  # never again
    assert secret not in page.content() and page.locator("#new-secret").count() == 0
    receiver.secret = secret

    # a test event, signed with that secret, shows up delivered in the log (htmx re-reads it)
    row.locator("button:text-is('Send test')").click()
    assert "test event queued" in page.inner_text(".flash")
    (first,) = receiver.wait_for("webhook.test")
    assert first.verified and first.data == {"endpoint_id": endpoint}
    log = page.locator("#deliveries tr[data-delivery]")
    expect(log).to_have_count(1)
    expect(log.first.locator(".badge")).to_have_text("delivered")
    text = log.first.inner_text()
    assert "webhook.test" in text and "200" in text and " ms" in text
    delivery = log.first.get_attribute("data-delivery")

    # replay: the same message (same webhook-id) again, as a new delivery
    log.first.locator("button:text-is('Replay')").click()
    assert f"delivery {delivery} replayed" in page.inner_text(".flash")
    again = receiver.wait_for("webhook.test", 2)
    assert again[1].verified and again[1].headers["webhook-id"] == first.headers["webhook-id"]
    expect(log).to_have_count(2)
    expect(page.locator(f"#deliveries tr:has-text('replay of {delivery}') .badge")).to_have_text(
        "delivered"
    )

    # rotate: a new secret, shown once, signs from now on
    page.once("dialog", lambda d: d.accept())
    page.locator(f"tr[data-endpoint='{endpoint}'] button:text-is('Rotate secret')").click()
    rotated = page.inner_text("#new-secret")
    assert rotated.startswith("whsec_") and rotated != secret
    receiver.secret = rotated
    page.locator(f"tr[data-endpoint='{endpoint}'] button:text-is('Send test')").click()
    assert receiver.wait_for("webhook.test", 3)[2].verified
    assert rotated not in page.content()  # the redirect after the test: no secret any more

    # disable: the row says so, with the reason, and the API agrees
    page.locator(f"tr[data-endpoint='{endpoint}'] button:text-is('Disable')").click()
    assert f"endpoint {endpoint} disabled" in page.inner_text(".flash")
    row = page.locator(f"tr[data-endpoint='{endpoint}']")
    assert "disabled by an operator" in row.inner_text()
    with api(gw) as c:
        assert c.get(f"/v1/webhooks/{endpoint}").json()["enabled"] is False

    # a form posted without its CSRF token (or a forged one) is refused and changes nothing
    for form in ({"enabled": "true"}, {"enabled": "true", "csrf": "forged"}):
        assert page.request.post(f"/webhooks/{endpoint}/enabled", form=form).status == 403
    refused = page.request.post("/webhooks", form={"url": receiver.url, "org_id": org})
    assert refused.status == 403
    with api(gw) as c:
        assert c.get(f"/v1/webhooks/{endpoint}").json()["enabled"] is False
        assert len(c.get("/v1/webhooks", params={"org_id": org}).json()) == 1
    assert page.problems == []


def test_logout_ends_the_session(page: Any) -> None:
    login(page)
    page.click("header button:text-is('Log out')")
    assert page.url.endswith("/login")
    page.goto("/")
    assert page.url.endswith("/login")
    assert re.search(r"Log in", page.inner_text("main"))
