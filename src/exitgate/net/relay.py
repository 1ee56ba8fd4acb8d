"""The relay of a tunnel (CONNECT or SOCKS5): meter, answer the client, splice, clean up.

Metering is two `tap` callables on the transports, ticked per received chunk, so every
relayed byte is counted exactly once and the answer to the client (written before the taps
see anything from the client) is free. When the package goes over its cap or its
organization out of credits mid-tunnel, the meter's stop callback records the error and
aborts both sides.

`start_tunnel` returns as soon as the pair is spliced: the tunnel takes over the request's
concurrency lease, the node's health lease and the meter, and gives them back from the
transports' last callback. The handler's task and frames are gone meanwhile, which is what
keeps an idle tunnel small.
"""

from __future__ import annotations

import logging

from exitgate.admission import Admitted
from exitgate.errors import GatewayError
from exitgate.net.conn import Conn, splice
from exitgate.net.connect import Route
from exitgate.net.context import ProxyContext

log = logging.getLogger("exitgate.relay")


def start_tunnel(
    ctx: ProxyContext,
    admitted: Admitted,
    client: Conn,
    route: Route,
    answer: bytes,
    *,
    started: float = 0.0,
    status: int = 200,
) -> None:
    """`started`: time.monotonic() when the request arrived; `status`: what the client was
    answered (200, or SOCKS5 reply 0), both for the tunnel's access-log line."""
    upstream = route.conn
    client_ip = client.peername[0]
    outcome = "OK"

    def stop(err: GatewayError) -> None:
        nonlocal outcome
        outcome = err.code
        err.package_id = admitted.package.id
        ctx.rejected(
            err,
            protocol=admitted.protocol,
            client=client_ip,
            target=admitted.target.authority,
            final=False,  # counted and logged once, when the tunnel ends
        )
        client.abort()
        upstream.abort()

    meter = ctx.meter(admitted, route.node, stop)
    stats = ctx.stats
    stats.tunnels_active += 1

    def finished() -> None:
        stats.tunnels_active -= 1
        try:
            ctx.connector.done(route)
            meter.close()
            ctx.served(
                admitted, client_ip, route, meter, started=started, code=outcome, status=status
            )
        except Exception:
            log.exception("tunnel clean-up failed")
        finally:
            admitted.lease.release()
            ctx.on_tunnel_end(client)

    client.write(answer)
    client.tap = meter.tick_up
    upstream.tap = meter.tick_down
    splice(client, upstream, finished)
