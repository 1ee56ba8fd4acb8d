"""The agent hub: node agents dial in; tunnels run as HTTP/2 streams over their connections.

    protocol.py  the wire contract (hello line, CONNECT head, answers); pure
    stream.py    one h2 stream as an asyncio transport (what `splice` relays over)
    mux.py       one h2 connection carrying streams, flow control, limits; both roles
    keepalive.py when to PING a peer and when it is dead (one timer per connection); pure
    server.py    `Hub`: the listener, registration, liveness, `dial` (the AgentDialer)
    nodes.py     `AgentBook`: agent nodes in the store follow the live connections

Nothing is re-exported here so that the agent (which needs protocol, stream and mux) does not
import the gateway's store and services: import from the modules.
"""
