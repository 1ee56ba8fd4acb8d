"""`Value`: a class compared, hashed and shown by its fields, as a dataclass would be.

The values the connection path makes per request are written-out classes rather than frozen
dataclasses (docs/decisions.md, "Value classes on the hot path"). Those that are compared
(`Target`, `Framing`, the HTTP heads) take their equality, hash and repr from here, each
naming its fields once in `value()`.
"""

from __future__ import annotations


class Value:
    __slots__ = ()

    def value(self) -> tuple[tuple[str, object], ...]:
        """The fields that make the value, as (name, value), in order."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self) or not isinstance(other, Value):
            return NotImplemented
        return self.value() == other.value()

    def __hash__(self) -> int:
        return hash(self.value())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.value())
        return f"{type(self).__name__}({fields})"
