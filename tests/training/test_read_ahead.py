"""Reading ahead keeps the order, the errors and the caller's early exit of the items."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from training.read_ahead import read_ahead


def test_items_come_in_order_and_all_of_them() -> None:
    assert list(read_ahead(iter(range(1000)), depth=3)) == list(range(1000))
    assert list(read_ahead(iter([]))) == []


def test_an_error_comes_after_the_items_read_before_it() -> None:
    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("line 3: not a number")

    seen: list[int] = []

    def consume() -> None:
        seen.extend(read_ahead(failing()))

    with pytest.raises(ValueError, match="line 3: not a number"):
        consume()
    assert seen == [1, 2]


def test_a_caller_that_stops_early_stops_the_reader() -> None:
    produced = []

    def endless() -> Iterator[int]:
        n = 0
        while True:
            produced.append(n)
            yield n
            n += 1

    items = read_ahead(endless(), depth=2)
    assert [next(items) for _ in range(5)] == [0, 1, 2, 3, 4]
    items.close()  # returns once the reader has stopped
    assert len(produced) <= 5 + 2 + 1  # what was read ahead, and the one in hand
