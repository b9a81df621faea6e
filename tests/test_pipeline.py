"""alignatt.pipeline.run_ahead: the ASR of the next step computed in a thread while this one is translated."""
import threading

import pytest

from alignatt.pipeline import run_ahead


def test_items_come_in_order_and_all_of_them():
    assert list(run_ahead(iter(range(50)))) == list(range(50))
    assert list(run_ahead(iter([]))) == []


def test_the_next_item_is_computed_while_the_consumer_works_on_this_one():
    consumer_busy = threading.Event()
    overlapped = []

    def produce():
        for index in range(3):
            if index:  # the consumer holds item index-1 now: this one must be made meanwhile, not after
                overlapped.append(consumer_busy.wait(timeout=10))
            yield index

    for _ in run_ahead(produce()):
        consumer_busy.set()
        threading.Event().wait(0.05)  # the consumer's work
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


def test_the_next_item_is_started_only_once_this_one_is_taken():
    """Live, a step's ASR must hear all the audio that arrived while the step before was translated: it starts when
    the translator takes the step before, not as soon as the step before is ready."""
    events = []

    def produce():
        for index in range(4):
            events.append(("start", index))
            yield index

    for item in run_ahead(produce()):
        events.append(("took", item))
        threading.Event().wait(0.02)  # the consumer's work
    for index in range(1, 4):
        assert events.index(("took", index - 1)) < events.index(("start", index))


def test_a_consumer_that_stops_early_stops_the_producer():
    produced = []

    def produce():
        for index in range(1000):
            produced.append(index)
            yield index

    items = run_ahead(produce(), name="stops-early")
    assert next(items) == 0
    items.close()  # joins the worker
    assert len(produced) <= 2  # the one taken and the one begun meanwhile
    assert not any(thread.name == "stops-early" for thread in threading.enumerate())
