"""Connection caps and the descriptor limit.

Every open client connection holds a descriptor (two, once it has a target), so a client
that opens connections without end exhausts the process's descriptors and, with them, the
service for everyone. Two caps bound that (`[proxy] max_connections` for the process,
`[proxy] max_connections_per_ip` per client address): a connection over a cap is answered
(HTTP `503 TOO_MANY_CONNECTIONS`; SOCKS5 method selection 0xFF) and closed.

The check is on the connection hot path, so it is a dict of counts keyed by address: one
lookup and two integer updates at accept, the reverse when the connection ends. No timer,
no task, nothing per connection but the count.

At start the process raises its soft RLIMIT_NOFILE to the hard limit (`raise_nofile_limit`);
with `max_connections = 0` the global cap is derived from that limit, leaving room for the
targets' descriptors and the rest of the process (see `derived_cap`).
"""

from __future__ import annotations

import logging
import os
import resource
from typing import Final

log = logging.getLogger("exitgate.server")

RESERVED_FDS: Final = 64  # listeners, store, admin, hub, agents, logs: never given to clients
UNLIMITED_FDS: Final = 1 << 20  # what RLIM_INFINITY counts as (Linux caps nr_open there)


class ConnectionCaps:
    """Counts of open client connections: in all, and per client address."""

    __slots__ = ("by_address", "limit", "per_address", "total")

    def __init__(self, limit: int, per_address: int) -> None:
        self.limit = limit  # 0: no cap
        self.per_address = per_address  # 0: no cap
        self.total = 0
        self.by_address: dict[str, int] = {}

    def admit(self, address: str) -> str | None:
        """Count a new connection from `address`; None when admitted, else which cap refused
        it ("global" or "address"), and nothing is counted."""
        if self.limit and self.total >= self.limit:
            return "global"
        n = self.by_address.get(address, 0)
        if self.per_address and n >= self.per_address:
            return "address"
        self.by_address[address] = n + 1
        self.total += 1
        return None

    def release(self, address: str) -> None:
        """A connection counted by `admit` ended (call once per admitted connection)."""
        n = self.by_address.get(address, 0) - 1
        if n > 0:
            self.by_address[address] = n
        else:
            self.by_address.pop(address, None)  # an empty entry would keep the dict growing
        self.total -= 1


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft descriptor limit to the hard one; (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft and (hard == resource.RLIM_INFINITY or hard > soft):
        target = hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            # RLIM_INFINITY hard limits are refused above /proc/sys/fs/nr_open: keep what works
            target = max(soft, UNLIMITED_FDS) if hard == resource.RLIM_INFINITY else soft
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (ValueError, OSError):
                target = soft
        return _count(soft), _count(target)
    return _count(soft), _count(soft)


def _count(limit: int) -> int:
    return UNLIMITED_FDS if limit == resource.RLIM_INFINITY else int(limit)


def derived_cap(nofile: int) -> int:
    """The global cap `max_connections = 0` stands for: half the descriptors left after the
    reserve (a proxied connection holds a client and a target descriptor), at least 16."""
    return max(16, (nofile - RESERVED_FDS) // 2)


def open_descriptors() -> int | None:
    """How many descriptors the process holds now (Linux /proc; None elsewhere)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def start_caps(max_connections: int, max_per_address: int) -> ConnectionCaps:
    """Raise the descriptor limit, build the caps, and say so in one INFO line."""
    before, after = raise_nofile_limit()
    limit = max_connections or derived_cap(after)
    used = open_descriptors()
    log.info(
        "descriptors: limit %d%s, %s in use, headroom %s; connection caps: %d in all%s, "
        "%s per address",
        after,
        f" (raised from {before})" if after != before else "",
        "?" if used is None else used,
        "?" if used is None else after - used,
        limit,
        "" if max_connections else " (derived from the limit)",
        max_per_address or "no cap",
    )
    if limit * 2 + RESERVED_FDS > after:
        log.warning(
            "max_connections %d may need %d descriptors, the limit is %d",
            limit, limit * 2 + RESERVED_FDS, after,
        )
    return ConnectionCaps(limit, max_per_address)
