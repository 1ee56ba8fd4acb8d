"""Sans-IO protocol cores: bytes in, typed events and reply bytes out (no sockets, no asyncio).

- `http1`: HTTP/1.1 proxy-side head parsing, body framing and forwarding (RFC 9112).
- `socks5`: the SOCKS5 server handshake (RFC 1928, RFC 1929) and UDP headers.
- `upstream`: client handshakes towards upstream HTTP and SOCKS5 proxies.
"""

from exitgate.wire import http1, socks5, upstream

__all__ = ["http1", "socks5", "upstream"]
