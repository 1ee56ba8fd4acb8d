"""Body framing (exitgate.wire.body.BodyFramer), compared with a reference decoder.

Input: byte 0 picks the kind (LENGTH or CHUNKED) and `max_line`; bytes 1-2 a length (for
LENGTH) and a seed for the split points; the rest is the byte stream after the head.

Contract:
- `feed` returns 0 <= n <= len(chunk); n < len(chunk) only when the body is done; after done
  it returns 0; it raises only HttpError(400);
- fed whole, the end of the body (or "incomplete", or an error) is what an independent
  whole-buffer decoder of RFC 9112 section 7.1 says (with a large `max_line`);
- fed in pieces (any split, bytes/bytearray/memoryview), the outcome is the same as fed whole:
  a chunk-size line split across reads is not misread, and the bytes after the body are left
  for the next message.
"""

from __future__ import annotations

import re

from exitgate.wire.body import BodyFramer, BodyKind
from exitgate.wire.http_error import HttpError

_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\x00\r\n]*)?\r\n")
_TRAILER = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00\r\n]*\r\n")
_MAX_LINES = (4096, 8, 32, 1 << 20)

ERROR = "error"
INCOMPLETE = "incomplete"


def reference(data: bytes) -> tuple[str, int]:
    """(DONE-ish "done", end) | (INCOMPLETE, len) | (ERROR, 0) for a chunked body."""
    pos, size = 0, len(data)
    while True:  # chunks
        lf = data.find(b"\n", pos)
        if lf < 0:
            return INCOMPLETE, size
        m = _LINE.fullmatch(data, pos, lf + 1)
        if m is None:
            return ERROR, 0
        n = int(m.group(1), 16)
        pos = lf + 1
        if n == 0:
            break
        if size - pos < n:
            return INCOMPLETE, size
        pos += n
        for expected in b"\r\n":
            if pos == size:
                return INCOMPLETE, size
            if data[pos] != expected:
                return ERROR, 0
            pos += 1
    while True:  # trailer section
        lf = data.find(b"\n", pos)
        if lf < 0:
            return INCOMPLETE, size
        line = data[pos : lf + 1]
        pos = lf + 1
        if line == b"\r\n":
            return "done", pos
        if _TRAILER.fullmatch(line) is None:
            return ERROR, 0


def _run(framer: BodyFramer, pieces: list[bytes | bytearray | memoryview]) -> tuple[str, int]:
    total = 0
    if framer.done:
        return "done", 0
    try:
        for piece in pieces:
            n = framer.feed(piece)
            assert isinstance(n, int) and 0 <= n <= len(piece), (n, len(piece))
            total += n
            if n < len(piece):
                assert framer.done, "stopped short of a chunk without being done"
            if framer.done:
                assert framer.feed(b"more") == 0
                return "done", total
    except HttpError as exc:
        assert exc.status == 400, exc.status
        return ERROR, 0
    return INCOMPLETE, total


def _pieces(data: bytes, seed: int) -> list[bytes | bytearray | memoryview]:
    out: list[bytes | bytearray | memoryview] = []
    pos, step = 0, (seed % 7) + 1
    wrap = (bytes, bytearray, memoryview)
    i = 0
    while pos < len(data):
        # Irregular steps (1..37 bytes) so boundaries land inside lines and CRLFs.
        step = (step * 5 + seed) % 37 + 1
        out.append(wrap[i % 3](data[pos : pos + step]))
        pos += step
        i += 1
    return out


def test_one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    chunked = data[0] & 1
    max_line = _MAX_LINES[(data[0] >> 1) % len(_MAX_LINES)]
    seed = data[2]
    stream = data[3:]
    if not chunked:
        length = data[1] * 7
        framer = BodyFramer(BodyKind.LENGTH, length)
        outcome = _run(framer, [stream])
        if length == 0:
            assert outcome == ("done", 0)
        elif len(stream) >= length:
            assert outcome == ("done", length), (outcome, length)
        else:
            assert outcome == (INCOMPLETE, len(stream))
        assert _run(BodyFramer(BodyKind.LENGTH, length), _pieces(stream, seed)) == outcome
        return
    whole = _run(BodyFramer(BodyKind.CHUNKED, max_line=max_line), [stream])
    if max_line == 1 << 20:
        assert whole == reference(stream), (whole, reference(stream))
    elif whole != (ERROR, 0):
        # A smaller line bound may only refuse what the reference accepts, never disagree.
        assert whole == reference(stream), (whole, reference(stream))
    split = _run(BodyFramer(BodyKind.CHUNKED, max_line=max_line), _pieces(stream, seed))
    assert split == whole, (split, whole)
    one_by_one = _run(
        BodyFramer(BodyKind.CHUNKED, max_line=max_line),
        [stream[i : i + 1] for i in range(min(len(stream), 48))],
    )
    if len(stream) <= 48:
        assert one_by_one == whole, (one_by_one, whole)
