"""HTTP proxying inside TLS on the same port as plain HTTP and SOCKS5 (first byte 0x16)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.gateway import GatewayThread
from tests.support.origin import Origin
from tests.support.socks import socks5_connect

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture
def tls_gw(tmp_path: Path) -> Iterator[GatewayThread]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    gateway = GatewayThread(tmp_path, proxy={"tls_cert": str(cert), "tls_key": str(key)})
    gateway.cert = cert  # type: ignore[attr-defined]
    yield gateway
    gateway.stop()


def test_https_proxy_with_curl_then_plain_and_socks_on_the_same_port(tls_gw, origin: Origin):
    _, key = tls_gw.package()
    tls_gw.direct_node(bind="127.0.0.2", country="us")
    proxy = f"https://country-us:{key}@127.0.0.1:{tls_gw.proxy_port}"
    for extra in ([], ["-p"]):  # forwarded, then a CONNECT tunnel, both inside TLS
        out = subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--proxy-cacert", str(tls_gw.cert), *extra,
             "-x", proxy, f"{origin.url}/ip"],
            capture_output=True, text=True, check=False,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["ip"] == "127.0.0.2"
    # the same port still speaks plain HTTP and SOCKS5
    r = requests.get(f"{origin.url}/ip", proxies={"http": tls_gw.proxy_url("country-us", key)},
                     timeout=10)
    assert r.json()["ip"] == "127.0.0.2"
    result = socks5_connect((tls_gw.proxy_host, tls_gw.proxy_port), "127.0.0.1", origin.port,
                            "country-us", key)
    assert result.status == 0 and result.sock is not None
    result.sock.close()
