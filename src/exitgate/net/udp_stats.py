"""Live UDP figures of one gateway process: plain ints, bumped on the datagram path.

Drops are counted by reason (a closed set of labels), never by package, client or target:

    spoofed     from an address other than the association's client
    fragment    FRAG != 0 (not reassembled)
    malformed   not a SOCKS5 UDP datagram (or a garbled frame from an exit)
    oversized   larger than `[udp] max_datagram`
    denied      destination refused by the destination policy
    resolve     destination name did not resolve (direct exits)
    queue_full  more than `[udp] max_queued` datagrams in flight, or a full socket buffer
    no_client   an answer arrived before the client sent anything (its port is unknown)
    icmp        an ICMP error reported on a socket (port unreachable...): counted, ignored
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

DROP_REASONS = (
    "spoofed",
    "fragment",
    "malformed",
    "oversized",
    "denied",
    "resolve",
    "queue_full",
    "no_client",
    "icmp",
)


@dataclass(slots=True)
class UdpStats:
    associations_total: int = 0
    associations_active: int = 0
    datagrams_up: int = 0  # client → exit, sent
    datagrams_down: int = 0  # exit → client, sent
    bytes_up: int = 0  # payload bytes only (what metering counts)
    bytes_down: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())
