"""The queue of turns that lets several frontends share one model: order, stopping, limits, bugs."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

import pytest

from engine.chat.assistant import Turn
from engine.chat.requests import TurnQueue, TurnTicket
from engine.errors import Busy, InternalError
from engine.events import Done, Event, Failed, Token

_clock = itertools.count()


def clock() -> float:
    return float(next(_clock))  # every reading is a second later: one event per step


def words(name: str, count: int = 2) -> Callable[[threading.Event], Turn]:
    def start(stop: threading.Event) -> Turn:
        for i in range(count):
            if stop.is_set():
                yield Done(name, "stopped")
                return
            yield Token(f"{name}.{i}")
        yield Done(name, "stop")
    return start


def run_all(turns: TurnQueue) -> list[tuple[TurnTicket, Event]]:
    events: list[tuple[TurnTicket, Event]] = []
    while turns.busy():
        events += turns.step(0.0, clock).events
    return events


def test_turns_are_written_one_at_a_time_taking_turns_between_frontends() -> None:
    turns = TurnQueue()
    for i in range(3):
        turns.submit("api", f"a{i}", words(f"api{i}"))
    turns.submit("window", "w", words("window"))
    done = [e.message_id for _, e in run_all(turns) if isinstance(e, Done)]
    # the window sent after three API requests but waits for one only; then the API's go in order
    assert done == ["api0", "window", "api1", "api2"]


def test_each_turn_runs_to_its_end_before_the_next_starts() -> None:
    turns = TurnQueue()
    turns.submit("api", "a", words("api", count=3))
    turns.submit("window", "w", words("window", count=3))
    texts = [e.text for _, e in run_all(turns) if isinstance(e, Token)]
    assert texts == ["api.0", "api.1", "api.2", "window.0", "window.1", "window.2"]


def test_a_frontend_on_another_thread_reads_its_own_events_as_they_happen() -> None:
    turns = TurnQueue()
    ticket = turns.submit("api", "a", words("api", count=3))
    window = turns.submit("window", "w", words("window"))
    received: list[Event] = []
    reader = threading.Thread(target=lambda: received.extend(ticket.events(timeout=10)))
    reader.start()
    run_all(turns)
    reader.join(10)
    assert [e.text for e in received if isinstance(e, Token)] == ["api.0", "api.1", "api.2"]
    assert isinstance(received[-1], Done) and window.ended.is_set()


def test_a_stopped_turn_that_was_waiting_never_starts_and_the_running_one_goes_on() -> None:
    turns = TurnQueue()
    running = turns.submit("api", "a", words("api", count=3))
    waiting = turns.submit("window", "w", words("window"))
    turns.step(0.0, clock)
    waiting.stop()
    events = run_all(turns)
    assert all(ticket is running for ticket, _ in events)
    assert waiting.ended.is_set() and list(waiting.events(timeout=1)) == []


def test_stopping_the_running_turn_ends_it_at_the_next_token() -> None:
    turns = TurnQueue()
    ticket = turns.submit("window", "w", words("window", count=100))
    turns.step(0.0, clock)
    ticket.stop()
    last = run_all(turns)[-1][1]
    assert last == Done("window", "stopped")


def test_too_many_waiting_turns_are_refused_with_a_clear_error() -> None:
    turns = TurnQueue(limit=2)
    turns.submit("api", "a", words("a"))
    turns.submit("api", "b", words("b"))
    with pytest.raises(Busy, match="2 replies are already waiting"):
        turns.submit("api", "c", words("c"))


def test_a_bug_in_one_turn_ends_it_reported_and_the_next_turn_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    def broken(stop: threading.Event) -> Turn:
        yield Token("half")
        raise RuntimeError("a bug")

    turns = TurnQueue()
    bad = turns.submit("api", "a", broken)
    good = turns.submit("window", "w", words("window"))
    events = run_all(turns)
    bad_events = [e for ticket, e in events if ticket is bad]
    assert bad_events[0] == Token("half") and isinstance(bad_events[-1], Failed)
    assert isinstance(bad_events[-1].error, InternalError) and "log" in bad_events[-1].error.user_text()
    assert "a bug" in caplog.text  # the traceback is in the log
    assert bad.ended.is_set() and isinstance(events[-1][1], Done) and good.ended.is_set()


def test_the_model_thread_waits_for_work_and_wakes_when_a_turn_arrives() -> None:
    turns = TurnQueue()
    woken: list[bool] = []
    turns.on_submitted = lambda: woken.append(True)
    assert not turns.wait_for_work(0.01)
    threading.Timer(0.05, turns.submit, args=("api", "a", words("a"))).start()
    assert turns.wait_for_work(10) and woken == [True]


def test_stopping_a_frontend_stops_its_turns_and_no_one_elses() -> None:
    turns = TurnQueue()
    window = turns.submit("window", "w1", words("window", count=100))
    turns.step(0.0, clock)  # the window's reply has started
    api = turns.submit("api", "a", words("api"))
    queued = turns.submit("window", "w2", words("queued"))
    turns.stop("window")
    done = {e.message_id: e.finish_reason for _, e in run_all(turns) if isinstance(e, Done)}
    assert done == {"window": "stopped", "api": "stop"}  # the queued one never started
    assert queued.ended.is_set() and window.ended.is_set() and api.ended.is_set()


def test_turns_that_can_share_the_model_are_written_side_by_side() -> None:
    turns = TurnQueue()
    for name in ("a", "b", "c"):
        turns.submit("api", name, words(name, count=2), lambda running: True)
    texts = [e.text for _, e in run_all(turns) if isinstance(e, Token)]
    # a runs alone until it has started (it might load another model); then b and c join it
    assert texts == ["a.0", "a.1", "b.0", "c.0", "b.1", "c.1"]


def test_a_turn_joins_only_while_its_rule_allows_and_waits_for_room() -> None:
    turns = TurnQueue()
    for name in ("a", "b", "c"):
        turns.submit("api", name, words(name, count=2), lambda running: len(running) < 2)
    texts = [e.text for _, e in run_all(turns) if isinstance(e, Token)]
    # b joins a; c waits until a ends (a writes its Done beside b.1), then joins b
    assert texts == ["a.0", "a.1", "b.0", "b.1", "c.0", "c.1"]


def test_a_turn_that_must_run_alone_waits_for_the_others_and_holds_back_those_behind_it() -> None:
    turns = TurnQueue()
    turns.submit("api", "a", words("a", count=3), lambda running: True)
    turns.submit("api", "alone", words("alone", count=2))  # e.g. a request for another model
    turns.submit("api", "b", words("b", count=2), lambda running: True)
    texts = [e.text for _, e in run_all(turns) if isinstance(e, Token)]
    # b could join a, but it came after the one that runs alone: no one passes it by
    assert texts == ["a.0", "a.1", "a.2", "alone.0", "alone.1", "b.0", "b.1"]


def test_a_turn_running_alone_is_joined_by_no_one() -> None:
    turns = TurnQueue()
    turns.submit("window", "w", words("w", count=2))
    turns.submit("api", "a", words("a", count=2), lambda running: True)
    texts = [e.text for _, e in run_all(turns) if isinstance(e, Token)]
    assert texts == ["w.0", "w.1", "a.0", "a.1"]
