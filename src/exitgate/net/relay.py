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
    ctx: ProxyContext, admitted: Admitted, client: Conn, route: Route, answer: bytes
) -> None:
    upstream = route.conn
    client_ip = client.peername[0]

    def stop(err: GatewayError) -> None:
        err.package_id = admitted.package.id
        ctx.rejected(
            err, protocol=admitted.protocol, client=client_ip, target=admitted.target.authority
        )
        client.abort()
        upstream.abort()

    meter = ctx.meter(admitted, route.node, stop)

    def finished() -> None:
        try:
            ctx.connector.done(route)
            if meter is not None:
                meter.close()
        except Exception:
            log.exception("tunnel clean-up failed")
        finally:
            admitted.lease.release()
            ctx.on_tunnel_end(client)

    client.write(answer)
    if meter is not None:
        client.tap = meter.tick_up
        upstream.tap = meter.tick_down
    splice(client, upstream, finished)
