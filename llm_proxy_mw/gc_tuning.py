"""``with tuned_gc():`` in the host's lifespan: the garbage collector set for a serving proxy.

A host-level choice, not something the proxy does on its own: the collector is the process's,
and the host decides. Measured on the example app (see the performance docs): at 256
connections CPython's default first-generation threshold (700 new objects) makes the collector
run every few requests and walk every request in flight again, 10-15% of the CPU.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["tuned_gc"]

#: New objects between two collections of the youngest generation while serving.
SERVING_THRESHOLD = 50_000


@contextlib.contextmanager
def tuned_gc(threshold: int = SERVING_THRESHOLD) -> Iterator[None]:
    """Freeze what start-up built and collect less often until the block ends.

    Enter it in the host's lifespan, inside ``proxy.lifespan``, once the proxy has started:

    - ``gc.freeze()`` moves everything alive so far (modules, config, pools, store) out of
      the collector's generations, so no later collection walks it again;
    - the youngest generation's threshold becomes ``threshold``. The proxy frees its
      per-request objects by reference counting (it makes no reference cycles per request),
      so collecting less often costs no memory.

    On the way out the previous thresholds come back; frozen objects stay frozen (a host that
    froze objects of its own before, e.g. before forking workers, keeps them frozen).
    """
    if threshold < 1:
        raise ValueError("The threshold must be a positive number of objects.")
    gc.freeze()
    previous = gc.get_threshold()
    gc.set_threshold(threshold, *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
