"""The relay of a tunnel (CONNECT or SOCKS5): meter, answer the client, splice, clean up.

Metering is two `tap` callables on the transports, ticked per received chunk, so every
relayed byte is counted exactly once and the answer to the client (written before the taps
see anything from the client) is free. When the package goes over its cap or its
organization out of credits mid-tunnel, the meter's stop callback records the error and
aborts both sides.
"""

from __future__ import annotations

from exitgate.admission import Admitted
from exitgate.errors import GatewayError
from exitgate.net.conn import Conn, splice
from exitgate.net.connect import Route
from exitgate.net.context import ProxyContext


async def relay_tunnel(
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
    try:
        client.write(answer)
        if meter is not None:
            client.tap = meter.tick_up
            upstream.tap = meter.tick_down
        await splice(client, upstream)
    finally:
        upstream.close()
        ctx.connector.done(route)
        if meter is not None:
            meter.close()
