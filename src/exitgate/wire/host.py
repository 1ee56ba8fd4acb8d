"""Host names as a `Target` holds them, shared by the HTTP and SOCKS5 cores.

A name whose last label is numeric must be a strict dotted-quad IPv4 address: other spellings
(`0x7f.1`, `127.1`, octal) are what resolvers reinterpret, and they are refused. IPv6 is
compressed and carries no zone identifier.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

_HOSTNAME: Final = re.compile(r"[\w-]+(?:\.[\w-]+)*\.?")
_HEX_LABEL: Final = re.compile(r"0x[0-9a-f]*")
_IPV4: Final = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
)


def normalize_host(host: str) -> str:
    """A host as a Target holds it: lowercased name, dotted-quad IPv4 or compressed IPv6
    (brackets optional on input, none on output). ValueError when it is none of these."""
    if _IPV4.fullmatch(host):
        return host
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" not in host:
        lowered = host.lower()
        if len(lowered) > 254 or not _HOSTNAME.fullmatch(lowered):
            raise ValueError("invalid host name")
        # WHATWG "ends in a number": such names are IPv4 in other spellings (0x7f.1, 127.1).
        last = lowered.rstrip(".").rpartition(".")[2]
        if (last.isascii() and last.isdigit()) or _HEX_LABEL.fullmatch(last):
            raise ValueError("numeric host that is not a dotted-quad IPv4 address")
        return lowered
    if "%" in host:
        raise ValueError("IPv6 zone identifiers are not allowed")
    return ipaddress.IPv6Address(host).compressed  # AddressValueError is a ValueError
