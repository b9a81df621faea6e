"""Run an iterator ahead of its consumer, in a thread: the cascade's ASR of the next step while the translator
works on this one.

On a CPU the two halves of a step are different kinds of work: the ASR's encoder is compute-bound and the
translator's decode steps are bound by memory traffic and Python overhead, so on two cores the two overlap well.
torch, CTranslate2 and numpy release the GIL inside their kernels.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_END = object()
_POLL_S = 0.1  # how often a blocked producer checks whether the consumer has gone


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def run_ahead(items: Iterable[T], depth: int = 1, name: str = "run-ahead") -> Iterator[T]:
    """Yield what `items` yields, in order, while a worker thread computes up to `depth` items ahead.

    An exception raised by `items` is raised here, at the item where it happened. If the consumer stops early
    (an exception, or the generator is closed), the worker stops at its next item."""
    if depth < 1:
        raise ValueError("depth must be >= 1")
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as error:  # handed to the consumer, which raises it
            put(_Failed(error))

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    try:
        while (item := ready.get()) is not _END:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join()
