"""A small pure-Python mutation loop over the kept corpus: the short budget the test suite
runs (no atheris needed, deterministic per seed). Not coverage-guided: the 10^6-input runs
are atheris's job; this catches a regression that a corpus neighbour would hit.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

_TOKENS = (
    b"\r\n", b"\n", b"\r\n\r\n", b":", b" ", b"-", b"\x00", b"\xff", b"0", b"chunked",
    b"Content-Length: ", b"Transfer-Encoding: ", b"HTTP/1.1", b"\x05", b"[", b"{",
)  # fmt: skip


def seeds(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()]


def mutate(rng: random.Random, data: bytes, pool: list[bytes], max_len: int) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        at = rng.randint(0, len(buf))
        if op == 0 and buf:  # flip a bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # insert random bytes
            buf[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 2 and buf:  # delete a run
            del buf[at : at + rng.randint(1, 16)]
        elif op == 3:  # insert a protocol token
            buf[at:at] = rng.choice(_TOKENS)
        elif op == 4 and pool:  # splice another seed
            other = rng.choice(pool)
            cut = rng.randint(0, len(other))
            buf[at:] = other[cut:]
        elif op == 5 and buf:  # duplicate a slice (repeated fields, long lines)
            j = rng.randint(at, min(len(buf), at + 64))
            buf[at:at] = buf[at:j] * rng.randint(1, 8)
    return bytes(buf[:max_len])


def run(
    target: Callable[[bytes], None], pool: list[bytes], budget: float, seed: int = 0,
    max_len: int = 4096,
) -> int:  # fmt: skip
    """Feed mutants of `pool` to `target` for `budget` seconds; the number of inputs run.
    A broken contract raises (with the input attached as a note)."""
    rng = random.Random(seed)
    deadline = time.monotonic() + budget
    n = 0
    corpus = list(pool) or [b""]
    while time.monotonic() < deadline:
        data = mutate(rng, rng.choice(corpus), corpus, max_len)
        try:
            target(data)
        except BaseException as exc:
            exc.add_note(f"fuzz input: {data!r}")
            raise
        n += 1
    return n
