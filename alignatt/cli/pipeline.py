"""Run an iterator one item ahead of its consumer, in a thread: the cascade's ASR of the next step while the
translator works on this one.

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
_POLL_S = 0.1  # how often a waiting producer checks whether the consumer has gone


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def run_ahead(items: Iterable[T], name: str = "run-ahead") -> Iterator[T]:
    """Yield what `items` yields, in order, while a worker thread computes the next item.

    The worker starts item k+1 when the consumer takes item k, not earlier, so an item is never computed long
    before it is used: live, a step's ASR starts when the translator turns to the step before it, and hears all the
    audio that arrived until then. An exception raised by `items` is raised here, at the item where it happened. If
    the consumer stops early (an exception, or the generator is closed), the worker stops once its current item is
    done, and closes `items`."""
    handoff: queue.Queue = queue.Queue(maxsize=1)
    taken = threading.Semaphore(0)
    stop = threading.Event()

    def hand_over(item) -> bool:
        handoff.put(item)  # never waits: the item before was taken
        while not stop.is_set():
            if taken.acquire(timeout=_POLL_S):
                return True
        return False

    def work() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not hand_over(item):
                    return
            hand_over(_END)
        except BaseException as error:  # handed to the consumer, which raises it
            hand_over(_Failed(error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:  # a generator's own cleanup runs here, not later in whatever thread collects it
                close()

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    try:
        while True:
            item = handoff.get()
            taken.release()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        if threading.current_thread() is not worker:  # the garbage collector may close this generator anywhere
            worker.join()
