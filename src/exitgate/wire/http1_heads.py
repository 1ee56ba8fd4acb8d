"""The parsed heads of HTTP/1.1 messages: values with case-insensitive field access.

A head is made once per request or response, on every connection's hot path, so the classes
are written out rather than frozen dataclasses: in the compiled build a dataclass's generated
`__init__` stays interpreted and sets each field through `object.__setattr__` (about 1.3 µs a
head, against 0.07 µs written out). They are values all the same: `Final` fields (the type
checker refuses a write), equality by content, a readable repr.
"""

from __future__ import annotations

from typing import Final

from exitgate.values import Value
from exitgate.wire.framing import Framing

Headers = tuple[tuple[bytes, bytes], ...]


def lower_names(headers: Headers) -> tuple[bytes, ...]:
    return tuple([name.lower() for name, _ in headers])


def _key(name: bytes | str) -> bytes:
    """A field name as `names` holds it: bytes, lowercased."""
    return (name.encode("latin-1") if isinstance(name, str) else name).lower()


def field_values(head: Fields, key: bytes) -> list[bytes]:
    """All values of the field whose lowercase name is `key` (fast for 0 or 1 occurrence)."""
    names = head.names
    n = names.count(key)
    if n == 0:
        return []
    if n == 1:
        return [head.headers[names.index(key)][1]]
    return [h[1] for name, h in zip(names, head.headers, strict=True) if name == key]


class Fields(Value):
    """Case-insensitive field access shared by both heads (lookups run in C on `names`)."""

    __slots__ = ("framing", "headers", "names")
    headers: Final[Headers]  # names as sent, values without surrounding whitespace
    names: Final[tuple[bytes, ...]]  # lowercased names, parallel to headers

    def __init__(self, headers: Headers) -> None:
        self.headers = headers
        self.names = lower_names(headers)
        # the checked framing, once known (`http1._framing`): the parser checks it, then
        # body framing and forwarding read it again
        self.framing: Framing | None = None

    def get(self, name: bytes | str) -> bytes | None:
        """The first value of a field, by case-insensitive name."""
        key = _key(name)
        names = self.names
        # `in` first: a missing field (the common case) raises nothing
        return self.headers[names.index(key)][1] if key in names else None

    def get_all(self, name: bytes | str) -> list[bytes]:
        """Every value of a field, in order, by case-insensitive name."""
        return field_values(self, _key(name))

    def value(self) -> tuple[tuple[str, object], ...]:
        # the kept framing is derived, not part of the value
        return (("headers", self.headers),)


class RequestHead(Fields):
    __slots__ = ("method", "target", "version")
    method: Final[str]
    target: Final[str]
    version: Final[str]  # "HTTP/1.1" or "HTTP/1.0"

    def __init__(self, method: str, target: str, version: str, headers: Headers) -> None:
        super().__init__(headers)
        self.method = method
        self.target = target
        self.version = version

    def value(self) -> tuple[tuple[str, object], ...]:
        return (
            ("method", self.method),
            ("target", self.target),
            ("version", self.version),
            ("headers", self.headers),
        )


class ResponseHead(Fields):
    __slots__ = ("reason", "status", "version")
    version: Final[str]
    status: Final[int]
    reason: Final[str]

    def __init__(self, version: str, status: int, reason: str, headers: Headers) -> None:
        super().__init__(headers)
        self.version = version
        self.status = status
        self.reason = reason

    def value(self) -> tuple[tuple[str, object], ...]:
        return (
            ("version", self.version),
            ("status", self.status),
            ("reason", self.reason),
            ("headers", self.headers),
        )
