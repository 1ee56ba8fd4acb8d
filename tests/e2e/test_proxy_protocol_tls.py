"""The PROXY protocol in front of TLS (issue 9): a balancer prepends its header to the raw TCP
stream, before the client's TLS ClientHello. The TLS-capable listener takes the header off the
socket first, then tells TLS from plain by the next byte; the named client is the one used
for IP allowlists and errors, and a header from anyone else is refused."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from exitgate.wire.proxy_protocol import encode_v1, encode_v2
from tests.support.gateway import GatewayThread, basic, parse_response
from tests.support.origin import Origin

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

CLIENT = "203.0.113.9"


@pytest.fixture
def tls_lb_gw(tmp_path: Path) -> Iterator[GatewayThread]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    gateway = GatewayThread(
        tmp_path,
        proxy={"tls_cert": str(cert), "tls_key": str(key),
               "proxy_protocol_from": ["127.0.0.1/32"]},
    )  # fmt: skip
    gateway.cert = cert  # type: ignore[attr-defined]
    yield gateway
    gateway.stop()


def _tls_exchange(
    gw: GatewayThread, header: bytes, request: bytes, source: str = "127.0.0.1"
) -> bytes:
    """Send `header` in the clear, then `request` inside TLS; everything answered.

    TLS runs over memory buffers, not `wrap_socket`: the plain socket keeps its descriptor,
    so a handshake the gateway refuses still closes it (an `SSLSocket` that fails while it
    is being made is left to the garbage collector, unclosed)."""
    context = ssl.create_default_context(cafile=str(gw.cert))  # type: ignore[attr-defined]
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with socket.create_connection(
        (gw.proxy_host, gw.proxy_port), timeout=5, source_address=(source, 0)
    ) as raw:
        raw.sendall(header)

        def receive() -> bool:
            data = raw.recv(65536)
            if data:
                incoming.write(data)
            else:
                incoming.write_eof()
            return bool(data)

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                if not receive():
                    raise ssl.SSLEOFError("closed during the TLS handshake") from None
        tls.write(request)
        raw.sendall(outgoing.read())
        chunks = []
        while True:
            try:
                chunk = tls.read(65536)
            except ssl.SSLWantReadError:
                if not receive():
                    break
                continue
            except ssl.SSLZeroReturnError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_header_before_tls_names_the_client(tls_lb_gw: GatewayThread, origin: Origin) -> None:
    gw = tls_lb_gw
    gw.direct_node(bind="127.0.0.2", country="us")
    pkg, key = gw.package(ip_allowlist=[f"{CLIENT}/32"])
    get = f"GET {origin.url}/ip HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n".encode()
    for header in (encode_v1((CLIENT, 40000), ("127.0.0.1", gw.proxy_port)),
                   encode_v2((CLIENT, 40001), ("127.0.0.1", gw.proxy_port))):  # fmt: skip
        status, _, body = parse_response(_tls_exchange(gw, header, get))
        assert status == 200 and json.loads(body)["ip"] == "127.0.0.2"  # allowlisted
    # another client named: not allowlisted, so credentials are asked for
    other = encode_v1(("198.51.100.7", 1), ("127.0.0.1", 2))
    status, headers, _ = parse_response(_tls_exchange(gw, other, get))
    assert status == 407 and headers["x-soax-error"] == "ERR_AUTH_REQUIRED"
    # errors carry the named client
    bad = (f"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: x\r\n"
           f"Proxy-Authorization: {basic('country-zz', key)}\r\n\r\n").encode()  # fmt: skip
    _tls_exchange(gw, encode_v1((CLIENT, 5), ("127.0.0.1", 6)), bad)
    log = gw.gateway.recorder.recent_errors(pkg.id)
    assert log and log[0]["code"] == "ERR_INVALID_VALUE" and log[0]["client"] == CLIENT


def test_headers_from_others_and_malformed_ones_are_refused(tls_lb_gw: GatewayThread) -> None:
    gw = tls_lb_gw
    spoof = encode_v1((CLIENT, 1), ("127.0.0.1", 2))
    for header, source in ((spoof, "127.0.0.3"), (b"PROXY TCP4 1.2.3.4 nonsense\r\n", "127.0.0.1")):
        # closed before TLS: the handshake ends in an SSL error, a reset or a bare EOF
        # (OSError errno 0, as the ssl module words an EOF at some handshake stages); a
        # timeout would mean the gateway kept the connection open
        with pytest.raises(OSError) as refused:
            _tls_exchange(gw, header, b"GET / HTTP/1.1\r\n\r\n", source=source)
        assert not isinstance(refused.value, TimeoutError)

