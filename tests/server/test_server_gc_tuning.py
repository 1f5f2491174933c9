"""The collector settings the server process applies once its model is loaded.

Run in a fresh interpreter: freezing the test process's own heap would outlive the test.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tti_server.gc_tuning import YOUNG_THRESHOLD

PROBE = """
import gc, json, weakref
from tti_server.gc_tuning import settle_after_load
class Node: pass
node = Node()
node.self = node  # a cycle left over from loading: collected, not frozen for good
cycle = weakref.ref(node)
del node
gc.disable()  # only settle_after_load may collect it
before = gc.get_threshold()
settle_after_load()
print(json.dumps({"frozen": gc.get_freeze_count(), "cycle_collected": cycle() is None,
                  "before": before, "after": gc.get_threshold()}))
"""


def test_settling_freezes_the_loaded_heap_and_raises_only_the_young_threshold() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    )
    probe = json.loads(result.stdout)
    assert probe["frozen"] > 1000  # every module the server imported
    assert probe["cycle_collected"]
    assert probe["after"] == [YOUNG_THRESHOLD, *probe["before"][1:]]
    assert probe["before"][0] < YOUNG_THRESHOLD
