"""The HTTP/2 frame-size guard of the agent link (exitgate.hub.limits.FrameGuard).

Input: byte 0 picks the limit and whether the 24-byte client preface is skipped first, byte
1 a seed for how the rest is cut into reads; the rest is the byte stream.

Contract: `check` raises Hostile exactly when the stream, walked frame by frame (9-byte
header, 24-bit length, body skipped), holds a header announcing more than the limit, and
only once that header is complete; the same for any way the stream is cut into reads;
nothing else escapes.
"""

from __future__ import annotations

from exitgate.hub.limits import PREFACE, FrameGuard, Hostile

_LIMITS = (16_384, 0, 9, 65_536)


def reference(stream: bytes, limit: int, skip: int) -> int | None:
    """Offset just past the first oversized frame header, or None."""
    pos = skip
    while pos + 9 <= len(stream):
        length = int.from_bytes(stream[pos : pos + 3], "big")
        if length > limit:
            return pos + 9
        pos += 9 + length
    return None


def _run(stream: bytes, limit: int, skip: int, cuts: list[int]) -> int | None:
    guard = FrameGuard(limit, skip)
    prev = 0
    for cut in [*cuts, len(stream)]:
        try:
            guard.check(stream[prev:cut])
        except Hostile:
            return cut
        prev = cut
    return None


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    limit = _LIMITS[data[0] % len(_LIMITS)]
    skip = len(PREFACE) if data[0] & 4 else 0
    seed, stream = data[1], data[2:]
    expected = reference(stream, limit, skip)
    whole = _run(stream, limit, skip, [])
    assert (whole is None) == (expected is None), (whole, expected)
    step = seed % 61 + 3  # reads of 3..63 bytes: boundaries land inside headers
    cuts = list(range(step, len(stream), step))
    split = _run(stream, limit, skip, cuts)
    if expected is None:
        assert split is None
    else:
        # Refused in the read that completed the oversized header, not before, not later.
        assert split is not None
        before = max(c for c in [0, *cuts] if c < split)
        assert before < expected <= split, (before, split, expected)
