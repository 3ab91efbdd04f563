"""A thread-safe LRU of computed values, shared by the audit session (states by edit set) and the
Review prefetcher (evidence and previews)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future


class FutureCache:
    """get(key, compute): the cached value, else compute() once. A caller asking for a key that
    another thread is computing waits for that result instead of computing it again; a failed
    computation is forgotten (and its error raised to every waiter). At most `size` entries."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, Future] = OrderedDict()

    def get(self, key: Hashable, compute: Callable[[], object]) -> object:
        with self._lock:
            pending, owner = self._entries.get(key), False
            if pending is None:
                pending, owner = Future(), True
                self._entries[key] = pending
            self._entries.move_to_end(key)
        if owner:
            try:
                pending.set_result(compute())
            except BaseException as exc:
                with self._lock:
                    self._entries.pop(key, None)
                pending.set_exception(exc)
                raise
            with self._lock:
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return pending.result()
