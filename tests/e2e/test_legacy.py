"""SOAX legacy usernames on the proxy port (issue 13), with requests and curl.

Exits are direct nodes on distinct loopback addresses with different attributes, so the
origin's `/ip` shows which one served: 127.0.0.2 (us, new_york), 127.0.0.3 (de, munich),
127.0.0.4 (us, los_angeles).
"""

from __future__ import annotations

import subprocess
import time

import pytest
import requests

from exitgate.errors import Code
from exitgate.store.base import NodeUpdate
from tests.support.gateway import GatewayThread
from tests.support.origin import Origin

TIMEOUT = 10.0


class Lab:
    def __init__(self, gw: GatewayThread) -> None:
        self.gw = gw
        pkg, self.key = gw.package()
        self.package_id = pkg.id
        gw.direct_node(bind="127.0.0.2", country="us", city="new_york", isp="verizon")
        gw.direct_node(bind="127.0.0.3", country="de", city="munich", isp="t_mobile")
        gw.direct_node(bind="127.0.0.4", country="us", city="los_angeles", isp="verizon")

    def user(self, rest: str = "") -> str:
        return f"package-{self.package_id}{rest}"

    def get(self, origin: Origin, user: str, key: str | None = None) -> requests.Response:
        url = self.gw.proxy_url(user, key or self.key)
        return requests.get(f"{origin.url}/ip", proxies={"http": url}, timeout=TIMEOUT)

    def curl(self, origin: Origin, user: str) -> tuple[int, str]:
        """GET /ip through a CONNECT tunnel; (curl's exit status, body)."""
        done = subprocess.run(
            ["curl", "-sS", "-p", "--max-time", "10", "-x",
             f"http://{self.gw.proxy_host}:{self.gw.proxy_port}", "-U", f"{user}:{self.key}",
             f"{origin.url}/ip"],
            capture_output=True, check=False,
        )
        return done.returncode, done.stdout.decode()


@pytest.fixture
def lab(gw: GatewayThread) -> Lab:
    return Lab(gw)


def ip_of(r: requests.Response) -> str:
    assert r.status_code == 200, (r.status_code, r.headers, r.text)
    return str(r.json()["ip"])


def test_a_legacy_username_selects_the_right_exit(lab: Lab, origin: Origin) -> None:
    assert ip_of(lab.get(origin, lab.user("-country-de"))) == "127.0.0.3"
    assert ip_of(lab.get(origin, lab.user("-country-us-city-new+york"))) == "127.0.0.2"
    assert ip_of(lab.get(origin, lab.user("-country-US-city-Los+Angeles"))) == "127.0.0.4"
    assert {ip_of(lab.get(origin, lab.user("-country-us-isp-verizon"))) for _ in range(4)} == {
        "127.0.0.2", "127.0.0.4"
    }
    status, body = lab.curl(origin, lab.user("-country-de-city-munich"))
    assert status == 0 and '"127.0.0.3"' in body


def test_a_legacy_session_keeps_its_exit(lab: Lab, origin: Origin) -> None:
    user = lab.user("-country-us-sessionid-keep1-sessionlength-300")
    first = lab.get(origin, user)
    assert first.headers["X-Exitgate-Session"] == "new"
    for _ in range(4):
        again = lab.get(origin, user)
        assert ip_of(again) == ip_of(first) and again.headers["X-Exitgate-Session"] == "kept"
        status, body = lab.curl(origin, user)
        assert status == 0 and f'"{ip_of(first)}"' in body
    # the native spelling of the same rules is the same session
    assert ip_of(lab.get(origin, "country-us-session-keep1")) == ip_of(first)


def test_a_wrong_package_id_is_auth_failed(lab: Lab, origin: Origin) -> None:
    other, _ = lab.gw.package()
    for user in (f"package-{other.id}-country-us", "package-pkg_nope-country-us", "package-"):
        r = lab.get(origin, user)
        assert r.status_code == 407, (user, r.status_code)
        assert r.headers["X-Soax-Error"] == Code.AUTH_FAILED
        assert other.id not in r.text and lab.package_id not in r.text


@pytest.mark.parametrize(
    ("rest", "code", "detail"),
    [
        ("-country-xx", Code.ERR_INVALID_VALUE, "xx"),
        ("-country-us-asn-7922", Code.ERR_UNKNOWN_PARAM, "asn"),
        ("-country-us-city-new+jersey", Code.ERR_INVALID_VALUE, "new+jersey"),
        ("-country-us-sessionid-s1-sessionlength-0", Code.ERR_INVALID_VALUE, "0"),
        ("-country-us-sessionid-s1", Code.ERR_INVALID_COMBINATION,
         "sessionid requires sessionlength"),
    ],
)
def test_bad_legacy_tokens_are_400s_naming_the_token(
    lab: Lab, origin: Origin, rest: str, code: Code, detail: str
) -> None:
    r = lab.get(origin, lab.user(rest))
    assert r.status_code == 400
    assert r.headers["X-Soax-Error"] == code and r.headers["X-Soax-Detail"] == detail
    status, _ = lab.curl(origin, lab.user(rest))
    assert status != 0  # curl: the CONNECT was refused


def test_idlettl_expires_an_idle_legacy_session(lab: Lab, origin: Origin) -> None:
    user = lab.user("-country-us-sessionid-idle1-sessionlength-600-idlettl-1")
    assert lab.get(origin, user).headers["X-Exitgate-Session"] == "new"
    assert lab.get(origin, user).headers["X-Exitgate-Session"] == "kept"
    time.sleep(1.2)  # past idlettl, far inside the default [sessions] idle_timeout (60 s)
    assert lab.get(origin, user).headers["X-Exitgate-Session"] == "new"


def test_sessionlength_ends_a_busy_legacy_session(lab: Lab, origin: Origin) -> None:
    user = lab.user("-country-us-sessionid-life1-sessionlength-2")
    start = time.monotonic()
    assert lab.get(origin, user).headers["X-Exitgate-Session"] == "new"
    while time.monotonic() - start < 1.6:  # busy all along: idle expiry never comes into it
        assert lab.get(origin, user).headers["X-Exitgate-Session"] == "kept"
        time.sleep(0.3)
    time.sleep(max(0.0, 2.1 - (time.monotonic() - start)))
    assert lab.get(origin, user).headers["X-Exitgate-Session"] == "new"


def test_bindttl_keeps_a_failing_exit_then_lets_it_be_replaced(
    gw: GatewayThread, origin: Origin
) -> None:
    pkg, key = gw.package()
    nodes = {ip: gw.direct_node(bind=ip, country="fr") for ip in ("127.0.0.5", "127.0.0.6")}
    user = f"package-{pkg.id}-country-fr-sessionid-held1-sessionlength-600-bindttl-2"

    def get() -> requests.Response:
        proxy = gw.proxy_url(user, key)
        return requests.get(f"{origin.url}/ip", proxies={"http": proxy}, timeout=TIMEOUT)

    start = time.monotonic()
    first = ip_of(get())
    # the session's exit breaks: its source address is no longer one this host has
    broken = NodeUpdate(bind_address="192.0.2.1")
    gw.call(gw.service.update_node(nodes[first].id, broken))
    within = get()
    assert within.status_code == 503, within.text
    assert within.headers["X-Soax-Error"] == Code.BOUND_NODE_FAILED  # kept, not replaced
    time.sleep(max(0.0, 2.1 - (time.monotonic() - start)))
    after = get()  # past bindttl: the default onerror-replace moves the session
    assert ip_of(after) != first and after.headers["X-Exitgate-Session"] == "replaced"
