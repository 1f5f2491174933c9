"""Garbage-collector settings for the long-running server process.

Measured under tests/benchmarks/bench_stub_server.py's load (docs/server.md): with
Python's defaults the collector took about 26 us of every stub request. Two things
made it expensive, and both are properties of any busy async server:

- Requests in flight keep objects alive (about 70 each: scope, task, frames,
  futures). With 16 requests waiting, that is more than the default young
  threshold of 700, so a young collection ran every few dozen requests, found the
  same live objects and promoted them; the promotions then triggered full
  collections, each walking every object of every imported module (~60 000 for
  the stub, far more once torch and diffusers are loaded).
- Nothing the server loads at start-up ever becomes garbage, yet every full
  collection walked it again.

So once the model is loaded: collect, freeze what is alive (it leaves the
collector's view for good), and raise the young threshold well above what
requests in flight hold. Cyclic garbage is still collected, only less often.
"""

from __future__ import annotations

import gc

#: Young-generation threshold: well above the objects of a full queue in flight
#: (the default --max-queue 64 plus a batch: about 5 000), so collections run
#: because garbage accumulated, not because requests are waiting.
YOUNG_THRESHOLD = 20_000


def settle_after_load() -> None:
    """Collect once, freeze everything alive, and raise the young threshold."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
