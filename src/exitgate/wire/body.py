"""Message body framing (RFC 9112 section 6), without copying or re-encoding.

`BodyFramer.feed` says how many leading bytes of each input chunk still belong to the body;
the caller relays exactly those bytes verbatim, so a chunked body leaves the gateway as it
arrived. Chunk-size lines split across reads are kept (bounded by `max_line`).
"""

from __future__ import annotations

import enum
import re
from typing import Final

from exitgate.wire.http_error import HttpError

_TOKEN: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_CHUNK_LINE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\x00\r\n]*)?\r\n")
_TRAILER_LINE: Final = re.compile(_TOKEN + rb":[^\x00\r\n]*\r\n")


class BodyKind(enum.Enum):
    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until_close"


class _Chunk(enum.Enum):
    SIZE = enum.auto()  # reading a chunk-size line
    DATA = enum.auto()  # inside chunk data
    DATA_END = enum.auto()  # the CRLF after chunk data
    TRAILER = enum.auto()  # trailer lines, until the empty one
    DONE = enum.auto()


class BodyFramer:
    """Finds where a body ends, without copying it.

    `feed(data)` returns how many leading bytes of `data` belong to the body. When it returns
    less than len(data), or `done` is True, the body is complete and the remaining bytes belong
    to the next message. UNTIL_CLOSE bodies are never done: they end when the peer closes.
    Only a partial chunk-size or trailer line is kept between feeds, at most `max_line` bytes.
    Malformed chunked framing raises HttpError(400) (the caller maps it for responses).
    """

    __slots__ = ("_kind", "_line", "_max_line", "_remaining", "_state")

    def __init__(self, kind: BodyKind, length: int = 0, max_line: int = 4096) -> None:
        if length < 0:
            raise ValueError("negative body length")
        self._kind = kind
        self._remaining = length
        self._max_line = max_line
        self._line = b""
        self._state = _Chunk.SIZE
        if kind is BodyKind.NONE or (kind is BodyKind.LENGTH and length == 0):
            self._state = _Chunk.DONE

    @property
    def done(self) -> bool:
        return self._state is _Chunk.DONE

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        if self._state is _Chunk.DONE:
            return 0
        kind = self._kind
        if kind is BodyKind.UNTIL_CLOSE:
            return len(data)
        if kind is BodyKind.LENGTH:
            n = min(len(data), self._remaining)
            self._remaining -= n
            if not self._remaining:
                self._state = _Chunk.DONE
            return n
        return self._feed_chunked(data)

    def _feed_chunked(self, data: bytes | bytearray | memoryview) -> int:
        pos = 0
        size = len(data)
        while pos < size:
            state = self._state
            if state is _Chunk.DATA:
                n = min(size - pos, self._remaining)
                pos += n
                self._remaining -= n
                if not self._remaining:
                    self._state = _Chunk.DATA_END
            elif state is _Chunk.DATA_END:
                # Two bytes, CR then LF, possibly split across feeds; _line holds what we saw.
                expected = b"\r\n"[len(self._line)]
                if data[pos] != expected:
                    raise HttpError(400, "missing CRLF after chunk data")
                pos += 1
                if self._line:
                    self._line = b""
                    self._state = _Chunk.SIZE
                else:
                    self._line = b"\r"
            elif state is _Chunk.DONE:
                break
            else:
                pos = self._feed_line(data, pos, size)
        return pos

    def _feed_line(self, data: bytes | bytearray | memoryview, pos: int, size: int) -> int:
        """Consume (part of) a chunk-size or trailer line; returns the new position."""
        room = self._max_line - len(self._line)
        stop = min(size, pos + room)
        if isinstance(data, memoryview):
            window = bytes(data[pos:stop])
            lf = window.find(b"\n")
            lf = lf + pos if lf >= 0 else -1
        else:
            lf = data.find(b"\n", pos, stop)
        if lf < 0:
            if stop - pos >= room:
                raise HttpError(400, "chunk-size or trailer line too long")
            self._line += bytes(data[pos:stop])
            return stop
        line = self._line + bytes(data[pos : lf + 1])
        self._line = b""
        if self._state is _Chunk.SIZE:
            m = _CHUNK_LINE.fullmatch(line)
            if m is None:
                raise HttpError(400, "malformed chunk-size line")
            n = int(m.group(1), 16)
            if n:
                self._remaining = n
                self._state = _Chunk.DATA
            else:
                self._state = _Chunk.TRAILER
        elif line == b"\r\n":
            self._state = _Chunk.DONE
        elif _TRAILER_LINE.fullmatch(line) is None:
            raise HttpError(400, "malformed trailer field")
        return lf + 1
