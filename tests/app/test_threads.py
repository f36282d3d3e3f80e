"""The scoring threads: calls run off the event loop and come back to it, errors included."""

import asyncio
import threading

import pytest

from app.scoring.threads import ScoringThreads, usable_cpus


def test_a_call_runs_in_a_scoring_thread_and_answers_on_the_loop() -> None:
    threads = ScoringThreads(1)

    async def scenario() -> tuple[str, str]:
        ran_in = await threads.run(lambda: threading.current_thread().name)
        return ran_in, threading.current_thread().name

    ran_in, answered_in = asyncio.run(scenario())
    assert ran_in.startswith("ctr-scoring-")
    assert answered_in == threading.main_thread().name
    threads.close()


def test_an_error_reaches_the_caller_and_the_thread_goes_on() -> None:
    threads = ScoringThreads(1)

    def fail() -> None:
        raise ValueError("onnxruntime said no")

    async def scenario() -> int:
        with pytest.raises(ValueError, match="said no"):
            await threads.run(fail)
        return await threads.run(lambda: 7)

    assert asyncio.run(scenario()) == 7
    threads.close()


def test_two_threads_run_two_calls_at_once() -> None:
    threads = ScoringThreads(2)
    both = threading.Barrier(2, timeout=5)  # neither call returns until the other runs

    async def scenario() -> list[int]:
        return await asyncio.gather(threads.run(both.wait), threads.run(both.wait))

    assert sorted(asyncio.run(scenario())) == [0, 1]
    threads.close()


def test_a_cancelled_caller_leaves_the_thread_serving() -> None:
    threads = ScoringThreads(1)
    release = threading.Event()

    async def scenario() -> str:
        slow = asyncio.ensure_future(threads.run(lambda: release.wait(5)))
        await asyncio.sleep(0.01)
        slow.cancel()  # a request past its deadline
        release.set()
        return await threads.run(lambda: "next")

    assert asyncio.run(scenario()) == "next"
    threads.close()


def test_close_stops_the_threads() -> None:
    before = threading.active_count()
    threads = ScoringThreads(3)
    assert threading.active_count() == before + 3
    threads.close()
    assert threading.active_count() == before


def test_bad_sizes() -> None:
    with pytest.raises(ValueError, match="threads"):
        ScoringThreads(0)
    assert usable_cpus() >= 1


def test_calls_go_to_the_first_free_thread_and_a_busy_one_counts_until_it_answers() -> None:
    threads = ScoringThreads(2)
    release = threading.Event()

    def name() -> str:
        return threading.current_thread().name

    def slow() -> str:
        release.wait(5)
        return name()

    async def scenario() -> list[str]:
        one_by_one = [await threads.run(name) for _ in range(5)]
        held = asyncio.ensure_future(threads.run(slow))
        await asyncio.sleep(0.01)
        held.cancel()  # its caller gives up; the call itself goes on in the first thread
        beside = await threads.run(name)
        release.set()
        await asyncio.sleep(0.05)  # the cancelled call's answer comes back to the loop
        after = await threads.run(name)
        return [*one_by_one, beside, after]

    ran_in = asyncio.run(scenario())
    assert ran_in == ["ctr-scoring-0"] * 5 + ["ctr-scoring-1", "ctr-scoring-0"]
    threads.close()
