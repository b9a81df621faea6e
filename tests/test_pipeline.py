"""alignatt.cli.pipeline.run_ahead: the ASR of the next step computed in a thread while this one is translated."""
import threading

import pytest

from alignatt.cli.pipeline import run_ahead


def test_items_come_in_order_and_all_of_them():
    assert list(run_ahead(iter(range(50)))) == list(range(50))
    assert list(run_ahead(iter([]))) == []


def test_the_next_item_is_computed_while_the_consumer_works_on_this_one():
    consumer_busy = threading.Event()
    started = {index: threading.Event() for index in range(3)}
    overlapped = []

    def produce():
        for index in range(3):
            if index:  # the consumer holds item index-1 until this one has begun
                overlapped.append(consumer_busy.wait(timeout=5))
            started[index].set()
            yield index

    for item in run_ahead(produce()):
        consumer_busy.set()
        if item < 2:  # the consumer's work lasts until the next item has begun (or the wait gives up)
            started[item + 1].wait(timeout=5)
        consumer_busy.clear()
    assert overlapped == [True, True]


def test_an_error_in_the_producer_is_raised_at_its_item():
    def produce():
        yield 1
        yield 2
        raise RuntimeError("ASR failed on the third chunk")

    got = []
    with pytest.raises(RuntimeError, match="third chunk"):
        for item in run_ahead(produce()):
            got.append(item)
    assert got == [1, 2]


def test_the_next_item_is_started_only_once_this_one_is_asked_for():
    """Live, a step's ASR must hear all the audio that arrived until the translator turned to the step before it:
    it starts when the translator asks for the step before, not as soon as that one is ready."""
    events = []

    def produce():
        for index in range(4):
            events.append(("start", index))
            yield index

    items = run_ahead(produce())
    for index in range(4):
        threading.Event().wait(0.02)  # the consumer's work on the item before
        events.append(("asking", index))
        assert next(items) == index
    assert list(items) == []
    for index in range(1, 4):
        assert events.index(("asking", index - 1)) < events.index(("start", index))


def test_a_consumer_that_stops_early_stops_the_producer_and_closes_its_items():
    produced, closed = [], threading.Event()

    def produce():
        try:
            for index in range(1000):
                produced.append(index)
                yield index
        finally:
            closed.set()

    items = run_ahead(produce(), name="stops-early")
    assert next(items) == 0
    closer = threading.Thread(target=items.close)  # joins the worker: a worker that never stops must not hang here
    closer.start()
    closer.join(timeout=10)
    assert not closer.is_alive()
    assert len(produced) <= 2  # the one taken and the one begun meanwhile
    assert closed.is_set()
    assert not any(thread.name == "stops-early" for thread in threading.enumerate())
