"""What the HTTP edge reads from heads and adds to its answers.

The next request head off a client connection (with its finish deadline), the proxy
credentials (and what a kept-alive connection keeps of them), the `X-Exitgate-Ban` request
header, and what exitgate adds to answers: the session and exit headers, `Respond-With`'s
node fields, and plain-text errors for requests too malformed to be a package's.
"""

from __future__ import annotations

from exitgate.admission import Admission, Admitted, Identity
from exitgate.errors import Code, GatewayError
from exitgate.model import Node
from exitgate.net.conn import Conn
from exitgate.net.connect import Route
from exitgate.net.context import ProxyContext
from exitgate.routing.domains import BAN_HEADER
from exitgate.store.keys import hash_key
from exitgate.wire.http1 import (
    MALFORMED,
    Malformed,
    RequestHead,
    basic_credentials,
    parse_request_head,
    proxy_credentials,
)

RESPOND_WITH = ("ip", "country", "region", "city", "isp", "asn", "uid")


def plain_response(status: int, reason: str, text: str) -> bytes:
    body = f"{text}\n".encode("ascii", "replace")
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("ascii") + body


async def read_request_head(
    conn: Conn, max_size: int, finish_within: float | None = None
) -> RequestHead:
    """The next request head. With `finish_within`, the head must be complete that many
    seconds after its first byte (the deadline until then is the caller's: the idle timeout
    of a kept-alive connection); a head that is there at once costs no timer change."""
    buffer = conn.buffer
    while True:
        parsed = parse_request_head(buffer, max_size)
        if parsed is not None:
            head, used = parsed
            conn.consume(used)
            return head
        # Parse again only when a line may have ended: a head trickling in byte by byte
        # must not cost a full re-parse per byte.
        while True:
            if finish_within is not None and buffer:
                conn.set_deadline(finish_within)
                finish_within = None
            seen = len(buffer)
            await conn.read_more()
            if buffer.find(b"\n", max(seen - 1, 0)) != -1 or len(buffer) > max_size:
                break


def credentials(head: RequestHead) -> tuple[str, str] | None:
    return _usable(proxy_credentials(head))


def _usable(found: tuple[str, str] | Malformed | None) -> tuple[str, str] | None:
    """Parsed credentials, or AUTH_FAILED when the field was there but unusable."""
    if found is MALFORMED:
        raise GatewayError(Code.AUTH_FAILED, "Malformed Proxy-Authorization header")
    return found


class KeptCredentials:
    """Gates 1-2 for the requests of one kept-alive client connection.

    A kept-alive client repeats its Proxy-Authorization field on every request. When the
    field is the one this connection accepted last, its decoded credentials and key hash are
    reused; when only the username differs (a session per request), the key hash is. Every
    check after them runs again, so a rotated key, a narrowed allowlist or a paused package
    decide the very next request (docs/decisions.md). Lives as long as the connection, whose
    buffers carry the field anyway.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        # the last accepted field, its (username, key) and the key's hash
        self._last: tuple[bytes, tuple[str, str], str] | None = None

    def authenticate(self, admission: Admission, head: RequestHead, client: str) -> Identity:
        values = head.get_all(b"proxy-authorization")
        last = self._last
        if last is not None and len(values) == 1 and values[0] == last[0]:
            return admission.authenticate(last[1], client, last[2])
        found = _usable(basic_credentials(values))
        key_hash = None
        if found is not None and found[1]:
            if last is not None and last[1][1] == found[1]:
                key_hash = last[2]  # another username (a new session, say), the same key
            else:
                key_hash = hash_key(found[1])
        identity = admission.authenticate(found, client, key_hash)
        if found is not None and key_hash is not None:
            self._last = (values[0], found, key_hash)
        return identity


def session_header(route: Route) -> bytes:
    """`X-Exitgate-Session: new|kept|rotated|replaced` for requests with a session."""
    if route.session is None:
        return b""
    return b"X-Exitgate-Session: " + route.session.value.encode() + b"\r\n"


def exit_header(route: Route) -> bytes:
    """`X-Exitgate-Node: <uid>`: the exit that served, for `X-Exitgate-Ban` (issue 13)."""
    return b"X-Exitgate-Node: " + route.node.id.encode("latin-1") + b"\r\n"


async def apply_ban(ctx: ProxyContext, head: RequestHead, admitted: Admitted) -> None:
    """An `X-Exitgate-Ban` request header bans before the request is routed (issue 13)."""
    raw = head.get(BAN_HEADER)
    if raw:
        await ctx.connector.ban_requested(admitted, raw.decode("latin-1"))


def node_headers(head: RequestHead, node: Node, exit_conn: Conn) -> str:
    raw = head.get(b"respond-with")
    if not raw:
        return ""
    wanted = {part.strip().lower() for part in raw.decode("latin-1").split(",")}
    values = {
        "ip": node.ip or exit_conn.sockname[0],
        "country": node.attrs.country,
        "region": node.attrs.region,
        "city": node.attrs.city,
        "isp": node.attrs.isp,
        "asn": str(node.attrs.asn) if node.attrs.asn else "",
        "uid": node.id,
    }
    return "".join(
        f"Node-{name.upper() if name in ('ip', 'asn') else name.capitalize()}: {values[name]}\r\n"
        for name in RESPOND_WITH
        if name in wanted
    )
